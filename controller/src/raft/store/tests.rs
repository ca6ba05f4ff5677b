//! Conformance of the RocksDB store: openraft's storage suite, and corruption handling.

use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::raft::typ::{StorageError, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open db");
        // The suite's purge tests purge logs that no snapshot covers, which the snapshot
        // fence defers by design; the fence has its own tests (`snapshot_order`).
        db.fence().disabled = true;
        let (log, sm) = open_stores(&db, Default::default())
            .await
            .expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
#[allow(clippy::result_large_err)] // openraft's StorageError, as the suite returns it
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder)
}

#[tokio::test]
async fn garbage_vote_is_a_storage_error_not_absent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    db.raw()
        .put_cf(db.cf(CF_META), b"vote", b"\x01\xff\xff\xff garbage")
        .expect("write garbage");
    let (mut log, _sm) = open_stores(&db, Default::default())
        .await
        .expect("open stores");
    let err = log
        .read_vote()
        .await
        .expect_err("garbage vote must not read as Ok");
    assert!(
        err.to_string().contains("vote"),
        "error names the vote: {err}"
    );

    // A record from an unknown (future) format version is refused too.
    db.raw()
        .put_cf(db.cf(CF_META), b"vote", b"\x09\x00")
        .expect("write future version");
    let err = log
        .read_vote()
        .await
        .expect_err("future version must not read as Ok");
    assert!(format!("{err:?}").contains("version"), "{err:?}");
}

#[tokio::test]
async fn garbage_log_entry_is_a_storage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    db.raw()
        .put_cf(db.cf(CF_LOG), 5u64.to_be_bytes(), b"\x01not an entry")
        .expect("write garbage");
    let (mut log, _sm) = open_stores(&db, Default::default())
        .await
        .expect("open stores");
    assert!(log.get_log_state().await.is_err());
}

#[test]
fn data_dir_is_bound_to_its_controller_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    let (inc, created) = db.identity(dir.path(), 3).expect("identity");
    assert!(created && inc != 0);
    assert_eq!(db.identity(dir.path(), 3).expect("identity"), (inc, false));
    let err = db.identity(dir.path(), 4).expect_err("other id refused");
    assert!(err.to_string().contains("belongs to controller 3"), "{err}");
}

/// The stored format of an earlier release: a RocksDB dump written by that release's code
/// (`golden.rs`), with the state it must produce. Every later build must open it.
mod previous_formats {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};

    use super::*;

    fn data_dir(format: &str) -> PathBuf {
        std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("../tests/data")
            .join(format)
    }

    /// Recreates the dumped database in `dir`.
    fn restore_dump(dump: &[u8], dir: &std::path::Path) -> Db {
        let db = Db::open(dir).expect("open db");
        let mut fields = Vec::new();
        let mut rest = dump;
        while rest.len() >= 4 {
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            let (field, tail) = tail.split_at(len);
            fields.push(field.to_vec());
            rest = tail;
        }
        assert!(rest.is_empty() && fields.len() % 3 == 0, "dump is damaged");
        let records: Vec<(String, Vec<u8>, Vec<u8>)> = fields
            .chunks(3)
            .map(|r| {
                (
                    String::from_utf8(r[0].clone()).expect("cf name"),
                    r[1].clone(),
                    r[2].clone(),
                )
            })
            .collect();
        for (cf, key, value) in records {
            db.raw()
                .put_cf(db.cf(&cf), key, value)
                .expect("restore record");
        }
        db
    }

    #[tokio::test]
    async fn format_v1_snapshot_and_log_load() {
        snapshot_and_log_load("format-v1").await;
    }

    #[tokio::test]
    async fn format_v2_snapshot_and_log_load() {
        snapshot_and_log_load("format-v2").await;
    }

    #[tokio::test]
    async fn format_v3_snapshot_and_log_load() {
        snapshot_and_log_load("format-v3").await;
    }

    #[tokio::test]
    async fn format_v4_snapshot_and_log_load() {
        snapshot_and_log_load("format-v4").await;
    }

    /// The digest of `s` encoded in the layout of the golden files' format: the same
    /// format encodes the same state to the same bytes, so a migrated state that lost or
    /// changed anything has another digest.
    fn digest_in_format(format: &str, s: &steward_core::ClusterState) -> String {
        let bytes = match format {
            "format-v2" => steward_core::codec::encode_as(
                "cluster state",
                2,
                &steward_core::state::v2::ClusterState {
                    revision: s.revision,
                    kv: s.kv.clone(),
                    controllers: s.controllers.clone(),
                    nodes: s.nodes.clone(),
                    node_events: s.node_events.clone(),
                    cluster_level: s.cluster_level,
                    clock_unix_ms: s.clock_unix_ms,
                    sessions: s.sessions.clone(),
                    pending_restore: s.pending_restore.clone(),
                },
            )
            .expect("encode as format 2"),
            "format-v3" => steward_core::codec::encode_as(
                "cluster state",
                3,
                &steward_core::state::v3::ClusterState {
                    revision: s.revision,
                    kv: s.kv.clone(),
                    controllers: s.controllers.clone(),
                    nodes: s.nodes.clone(),
                    node_events: s.node_events.clone(),
                    cluster_level: s.cluster_level,
                    clock_unix_ms: s.clock_unix_ms,
                    sessions: s.sessions.clone(),
                    pending_restore: s.pending_restore.clone(),
                    jobs: s.jobs.clone(),
                    allocs: s.allocs.clone(),
                    node_scheduling: s.node_scheduling.clone(),
                },
            )
            .expect("encode as format 3"),
            _ => s.encode().expect("encode"),
        };
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// Opens the dumped data dir of `format`, replays its log over its snapshot as openraft
    /// does at start, and compares the state with `expected.json`.
    async fn snapshot_and_log_load(format: &str) {
        let dir = data_dir(format);
        let dump = std::fs::read(dir.join("raft-db.dump")).expect("dump");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected"))
                .expect("expected json");
        let tmp = tempfile::tempdir().expect("temp dir");
        let db = restore_dump(&dump, tmp.path());
        assert!(
            !db.identity(tmp.path(), 1).expect("identity").1,
            "the dump carries its identity"
        );
        let (mut log, mut sm) = open_stores(&db, Default::default())
            .await
            .expect("open stores");
        assert!(log.read_vote().await.expect("vote").is_some());
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id.map(|l| l.index),
            expected["last_purged_index"].as_u64()
        );
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(
            applied.map(|l| l.index),
            expected["snapshot_index"].as_u64()
        );
        // Replay the committed log after the snapshot, as openraft does at start.
        let committed = log
            .read_committed()
            .await
            .expect("committed")
            .expect("some");
        let entries = log
            .try_get_log_entries(applied.map_or(0, |l| l.index + 1)..=committed.index)
            .await
            .expect("entries");
        assert!(!entries.is_empty());
        sm.apply(entries).await.expect("apply");
        let view = sm.view();
        let applied = view.read();
        let s = &applied.state;
        assert_eq!(Some(s.revision), expected["revision"].as_u64());
        let kv: BTreeMap<String, (String, u64, u64, u64)> =
            s.kv.iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        (
                            String::from_utf8_lossy(&e.value).into_owned(),
                            e.create_revision,
                            e.mod_revision,
                            e.version,
                        ),
                    )
                })
                .collect();
        let want_kv: BTreeMap<String, (String, u64, u64, u64)> = expected["kv"]
            .as_object()
            .expect("kv")
            .iter()
            .map(|(k, e)| {
                let n = |f: &str| e[f].as_u64().expect("number");
                (
                    k.clone(),
                    (
                        e["value"].as_str().expect("value").to_string(),
                        n("create_revision"),
                        n("mod_revision"),
                        n("version"),
                    ),
                )
            })
            .collect();
        assert_eq!(kv, want_kv);
        let controllers: BTreeMap<String, (u64, String)> = s
            .controllers
            .iter()
            .map(|(id, r)| (id.to_string(), (r.incarnation, r.api_addr.clone())))
            .collect();
        let want_controllers: BTreeMap<String, (u64, String)> = expected["controllers"]
            .as_object()
            .expect("controllers")
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    (
                        r["incarnation"].as_u64().expect("incarnation"),
                        r["api_addr"].as_str().expect("addr").to_string(),
                    ),
                )
            })
            .collect();
        assert_eq!(controllers, want_controllers);
        let nodes: BTreeMap<String, (String, String)> = s
            .nodes
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    (n.hostname.clone(), n.health.name().to_string()),
                )
            })
            .collect();
        let want_nodes: BTreeMap<String, (String, String)> = expected["nodes"]
            .as_object()
            .expect("nodes")
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    (
                        n["hostname"].as_str().expect("hostname").to_string(),
                        n["health"].as_str().expect("health").to_string(),
                    ),
                )
            })
            .collect();
        assert_eq!(nodes, want_nodes);
        let events: Vec<(u64, String, String)> = s
            .node_events
            .iter()
            .map(|e| {
                (
                    e.revision,
                    e.node.clone(),
                    e.to.map(|h| h.name()).unwrap_or("removed").to_string(),
                )
            })
            .collect();
        let want_events: Vec<(u64, String, String)> = expected["node_events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                (
                    e["revision"].as_u64().expect("revision"),
                    e["node"].as_str().expect("node").to_string(),
                    e["to"].as_str().expect("to").to_string(),
                )
            })
            .collect();
        assert_eq!(events, want_events);
        // Written by format 2 and later: the fields format 2 added, the typed inventory,
        // and the digest (the same format encodes the same state to the same bytes).
        if let Some(level) = expected.get("cluster_level").and_then(|v| v.as_u64()) {
            assert_eq!(u64::from(s.cluster_level), level);
            assert_eq!(Some(s.clock_unix_ms), expected["clock_unix_ms"].as_u64());
            assert_eq!(Some(s.sessions.len() as u64), expected["sessions"].as_u64());
            for (id, n) in expected["nodes"].as_object().expect("nodes") {
                let node = &s.nodes[id];
                assert_eq!(
                    Some(node.inventory.gpus.len() as u64),
                    n["gpus"].as_u64(),
                    "{id}"
                );
                assert_eq!(
                    node.inventory.gpus.first().map(|g| g.name.as_str()),
                    n["gpu_model"].as_str(),
                    "{id}"
                );
            }
            assert_eq!(
                Some(digest_in_format(format, s).as_str()),
                expected["digest"].as_str()
            );
        }
        // Written by format 3 and later: jobs, allocations and node scheduling.
        if let Some(jobs) = expected.get("jobs").and_then(|v| v.as_object()) {
            let got: BTreeMap<String, (String, usize)> = s
                .jobs
                .iter()
                .map(|(id, j)| (id.clone(), (j.status.name().to_string(), j.tasks.len())))
                .collect();
            let want: BTreeMap<String, (String, usize)> = jobs
                .iter()
                .map(|(id, j)| {
                    (
                        id.clone(),
                        (
                            j["status"].as_str().expect("status").to_string(),
                            j["tasks"].as_u64().expect("tasks") as usize,
                        ),
                    )
                })
                .collect();
            assert_eq!(got, want);
            let got: BTreeMap<String, (String, u64)> = s
                .allocs
                .iter()
                .map(|(id, a)| (id.clone(), (a.state.name().to_string(), a.generation)))
                .collect();
            let want: BTreeMap<String, (String, u64)> = expected["allocs"]
                .as_object()
                .expect("allocs")
                .iter()
                .map(|(id, a)| {
                    (
                        id.clone(),
                        (
                            a["state"].as_str().expect("state").to_string(),
                            a["generation"].as_u64().expect("generation"),
                        ),
                    )
                })
                .collect();
            assert_eq!(got, want);
            for (id, n) in expected["node_scheduling"].as_object().expect("scheduling") {
                assert_eq!(
                    Some(s.node_scheduling[id].cordoned),
                    n["cordoned"].as_bool(),
                    "{id}"
                );
            }
        }
        // Written by format 4 and later: objects, the chunk reference index, maintenance.
        if let Some(objects) = expected.get("objects").and_then(|v| v.as_object()) {
            let got: BTreeMap<String, (Vec<u64>, BTreeMap<String, u64>)> = s
                .objects
                .iter()
                .map(|(n, o)| {
                    (
                        n.clone(),
                        (o.versions.keys().copied().collect(), o.tags.clone()),
                    )
                })
                .collect();
            let want: BTreeMap<String, (Vec<u64>, BTreeMap<String, u64>)> =
                serde_json::from_value(serde_json::Value::Object(
                    objects
                        .iter()
                        .map(|(n, o)| (n.clone(), serde_json::json!([o["versions"], o["tags"]])))
                        .collect(),
                ))
                .expect("objects");
            assert_eq!(got, want);
            assert_eq!(
                Some(s.chunk_refs().len() as u64),
                expected["chunk_refs"].as_u64()
            );
            let maintenance: Vec<String> = s.node_storage.keys().cloned().collect();
            assert_eq!(
                serde_json::json!(maintenance),
                expected["maintenance"],
                "nodes in maintenance"
            );
        }
    }

    #[test]
    fn format_v1_operator_snapshot_file_loads() {
        operator_snapshot_file_loads("format-v1");
    }

    #[test]
    fn format_v2_operator_snapshot_file_loads() {
        operator_snapshot_file_loads("format-v2");
    }

    #[test]
    fn format_v3_operator_snapshot_file_loads() {
        operator_snapshot_file_loads("format-v3");
    }

    #[test]
    fn format_v4_operator_snapshot_file_loads() {
        operator_snapshot_file_loads("format-v4");
    }

    fn operator_snapshot_file_loads(format: &str) {
        let dir = data_dir(format);
        let bytes = std::fs::read(dir.join("operator.snap")).expect("operator.snap");
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected"))
                .expect("expected json");
        let (header, state) = crate::snapshot_file::decode(&bytes).expect("decode");
        assert_eq!(header.cluster_name, "golden");
        assert_eq!(Some(state.revision), expected["revision"].as_u64());
        assert_eq!(
            state.kv.len(),
            expected["kv"].as_object().expect("kv").len()
        );
    }
}

/// Snapshots never move backwards, and the log is never purged past the stored snapshot.
mod snapshot_order {
    use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use steward_core::Command;

    use super::*;
    use crate::raft::typ::Entry;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        range
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Command::KvPut {
                    key: format!("k{i}"),
                    value: b"v".to_vec(),
                    expected_revision: None,
                }),
            })
            .collect()
    }

    /// A snapshot built at 10 that finishes after a snapshot at 20 was installed must not
    /// replace it: after a restart the state is at 20.
    #[tokio::test]
    async fn a_late_build_does_not_overwrite_a_newer_install() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open db");
        let (_log, mut sm) = open_stores(&db, Default::default())
            .await
            .expect("open stores");
        sm.apply(entries(1..=10)).await.expect("apply");
        let mut builder = sm.get_snapshot_builder().await;

        // A leader's snapshot at 20, made by another state machine.
        let other_dir = tempfile::tempdir().expect("temp dir");
        let other_db = Db::open(other_dir.path()).expect("open db");
        let (_l, mut other) = open_stores(&other_db, Default::default())
            .await
            .expect("open stores");
        other.apply(entries(1..=20)).await.expect("apply");
        let snap20 = other
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build 20");
        sm.install_snapshot(&snap20.meta, snap20.snapshot)
            .await
            .expect("install 20");

        // The build started at 10 finishes now.
        builder.build_snapshot().await.expect("build 10");
        let current = sm
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("some");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(20));
        drop((_log, sm));

        let (_log, mut sm) = open_stores(&db, Default::default()).await.expect("reopen");
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(
            applied.map(|l| l.index),
            Some(20),
            "the snapshot moved backwards"
        );
    }

    /// openraft purges the log right after it hands a snapshot to the state machine, before
    /// the install is durable. A crash then must not leave a hole between the stored
    /// snapshot and the log.
    #[tokio::test]
    async fn purge_is_clamped_to_the_stored_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open db");
        let (mut log, mut sm) = open_stores(&db, Default::default())
            .await
            .expect("open stores");
        log.append_now(entries(1..=30)).expect("append");
        sm.apply(entries(1..=10)).await.expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot at 10");
        // openraft asks to purge to 25 (a snapshot at 25 is being installed, not yet stored).
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 25))
            .await
            .expect("purge");
        // Crash and restart: the stored snapshot is at 10, so 11.. must still be there.
        drop((log, sm));
        let (mut log, mut sm) = open_stores(&db, Default::default()).await.expect("reopen");
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(applied.map(|l| l.index), Some(10));
        let st = log.get_log_state().await.expect("log state");
        assert!(
            st.last_purged_log_id.map_or(0, |l| l.index) <= 10,
            "purged past the stored snapshot: {st:?}"
        );
        let tail = log.try_get_log_entries(11..=30).await.expect("read");
        assert_eq!(tail.len(), 20, "hole between the snapshot and the log");

        // Once a snapshot at 25 is stored, the deferred purge completes.
        let mut other = {
            let other_dir = tempfile::tempdir().expect("temp dir");
            let other_db = Db::open(other_dir.path()).expect("open db");
            let (_l, mut other) = open_stores(&other_db, Default::default())
                .await
                .expect("open stores");
            other.apply(entries(1..=25)).await.expect("apply");
            let snap = other
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build 25");
            (other_dir, snap)
        };
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 25))
            .await
            .expect("purge again");
        sm.install_snapshot(&other.1.meta, std::mem::take(&mut other.1.snapshot))
            .await
            .expect("install 25");
        let st = log.get_log_state().await.expect("log state");
        assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(25));
        assert_eq!(st.last_log_id.map(|l| l.index), Some(30));
        assert!(log
            .try_get_log_entries(20..=25)
            .await
            .expect("read")
            .is_empty());
    }

    /// The log state's last log id is the later of the last entry and the last purged id.
    #[tokio::test]
    async fn last_log_id_is_never_behind_the_purge_point() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open db");
        let (mut log, _sm) = open_stores(&db, Default::default())
            .await
            .expect("open stores");
        log.append_now(entries(1..=5)).expect("append");
        // A purge record ahead of the entries (a snapshot install replaced the whole log).
        db.put_meta(
            MetaKey::LastPurged,
            &LogId::new(CommittedLeaderId::new(2, 1), 40),
        )
        .expect("meta");
        let st = log.get_log_state().await.expect("log state");
        assert_eq!(st.last_log_id.map(|l| l.index), Some(40));
    }
}
