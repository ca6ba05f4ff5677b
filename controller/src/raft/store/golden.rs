//! Writes the golden files of the current stored format: a RocksDB dump of a controller
//! that applied one of every command kind, with a stored snapshot and a purged log. Run by
//! hand when a format is released, with the code of that format, into a new directory (the
//! files of earlier formats were written by earlier versions of this file):
//!
//! ```sh
//! STEWARD_WRITE_GOLDEN=$PWD/tests/data/format-vN cargo test -p steward-controller write_golden -- --ignored
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use steward_core::jobs::{
    AllocReport, AllocState, GpuHealth, NewAllocation, StopAllocation, StopReason,
};
use steward_core::node::NodeHealth;
use steward_core::{ClusterState, Command};

use super::*;
use crate::raft::typ::{ControllerNode, Entry, Vote};

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn put(key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::KvPut {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expected_revision: cas,
    }
}

#[tokio::test]
#[ignore = "writes golden files; run by hand with STEWARD_WRITE_GOLDEN=DIR"]
async fn write_golden() {
    let out = std::path::PathBuf::from(
        std::env::var("STEWARD_WRITE_GOLDEN").expect("STEWARD_WRITE_GOLDEN=DIR"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    db.identity(dir.path(), 1).expect("identity");
    let (mut log, mut sm) = open_stores(&db, Default::default())
        .await
        .expect("open stores");
    log.save_vote(&Vote::new_committed(2, 1))
        .await
        .expect("vote");

    let inventory = std::fs::read(out.join("inventory.json")).expect("inventory.json");
    let members: BTreeMap<u64, ControllerNode> = (1..=3)
        .map(|id| {
            (
                id,
                ControllerNode {
                    raft_addr: format!("127.0.0.1:{}", 7710 + id - 1),
                    api_addr: String::new(),
                },
            )
        })
        .collect();
    let mut restored = ClusterState::default();
    restored.apply(put("restored/a", "from a snapshot file", None));
    restored.apply(put("restored/b", "second", None));
    let restored = restored.encode().expect("encode restored state");
    let (half_a, half_b) = restored.split_at(restored.len() / 2);

    let register = |c: u64| Command::RegisterController {
        controller: c,
        incarnation: 0x1000 + c,
        api_addr: format!("127.0.0.1:{}", 7700 + c - 1),
    };
    let inventory_typed = steward_core::inventory::Inventory::from_json_lenient(&inventory);
    let node = |id: &str, host: &str| Command::RegisterNodeTyped {
        node: id.into(),
        hostname: host.into(),
        labels: [("rack".to_string(), "r1".to_string())].into(),
        inventory: Box::new(inventory_typed.clone()),
        registration_digest: format!("digest-of-{id}"),
    };
    let node_v1 = |id: &str, host: &str| Command::RegisterNode {
        node: id.into(),
        hostname: host.into(),
        labels: Default::default(),
        inventory: inventory.clone(),
        inventory_digest: format!("digest-of-{id}"),
    };
    let health =
        |id: &str, from: NodeHealth, to: NodeHealth, why: &str| Command::TransitionNodeHealth {
            node: id.into(),
            from,
            to,
            reason: why.into(),
        };
    let stamped = |at: u64, commands: Vec<Command>| {
        EntryPayload::Normal(Command::Stamped {
            at_unix_ms: 1_800_000_000_000 + at,
            commands,
        })
    };
    let job = |name: &str, tasks: u32, gpus: u32| {
        let mut spec = steward_core::job::JobSpec::from_toml(&format!(
            "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\ntasks = {tasks}\n[resources]\ngpus = {gpus}\ncpu_millicores = 100\nmemory_mib = 64\n"
        ))
        .expect("job spec");
        spec.env.insert("MODEL".into(), "llama".into());
        spec
    };
    let gpu_uuid = |i: usize| inventory_typed.gpus[i].uuid.clone();
    let place = |job: &str, tasks: &[(u32, usize)]| Command::PlaceAllocations {
        job: job.into(),
        placements: tasks
            .iter()
            .map(|&(task, g)| NewAllocation {
                task,
                node: "node-00000000000000a5".into(),
                gpus: vec![gpu_uuid(g)],
                gpu_milli: 1000,
                cpu_millicores: 100,
                memory_mib: 64,
                rendezvous: None,
            })
            .collect(),
    };
    let report = |alloc: &str, generation: u64, state: AllocState, code: Option<i32>| {
        Command::ReportAllocations {
            node: "node-00000000000000a5".into(),
            reports: vec![AllocReport {
                alloc: alloc.into(),
                generation,
                state,
                exit_code: code,
                restarts: 0,
                reason: String::new(),
            }],
        }
    };
    let object_put = |name: &str, parts: &[&[u8]], tags: &[&str], keep: Option<u32>| {
        let mut content = steward_core::chunk::ObjectHash::content_hasher();
        for p in parts {
            content.update(p);
        }
        Command::PutObjectVersion {
            put: Box::new(steward_core::objects::apply::PutVersion {
                name: name.into(),
                manifest: steward_core::objects::Manifest {
                    chunks: parts
                        .iter()
                        .map(|p| steward_core::objects::ChunkRef {
                            id: steward_core::chunk::ChunkId::of(p),
                            size: p.len() as u32,
                        })
                        .collect(),
                    size: parts.iter().map(|p| p.len() as u64).sum(),
                    content_hash: steward_core::chunk::ObjectHash::from_hash(content.finalize()),
                },
                rf: 3,
                labels: [("step".to_string(), "1000".to_string())].into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                retention: keep.map(|k| steward_core::objects::Retention {
                    keep_last: Some(k),
                    keep_tagged: true,
                }),
            }),
        }
    };
    let request = |seq: u64, command: Command| Command::Request {
        id: steward_core::command::RequestId {
            client: 0xC11E,
            seq,
        },
        command: Box::new(command),
    };
    let payloads: Vec<(u64, EntryPayload<crate::raft::typ::TypeConfig>)> = vec![
        (
            0,
            EntryPayload::Membership(Membership::new(vec![(1..=3).collect()], members)),
        ),
        (1, EntryPayload::Blank),
        (1, EntryPayload::Normal(register(1))),
        (
            1,
            EntryPayload::Normal(Command::Batch(vec![register(2), register(3)])),
        ),
        (1, EntryPayload::Normal(put("jobs/a", "1", None))),
        (
            1,
            EntryPayload::Normal(node_v1("node-00000000000000a0", "gpu-0")),
        ),
        (
            1,
            EntryPayload::Normal(Command::SetClusterLevel { level: 2 }),
        ),
        (1, stamped(1, vec![request(1, put("jobs/a", "2", Some(4)))])),
        // The same request again: applied once.
        (1, stamped(2, vec![request(1, put("jobs/a", "2", Some(4)))])),
        (
            1,
            stamped(
                3,
                vec![
                    put("jobs/b", "created", Some(0)),
                    request(
                        2,
                        Command::KvDelete {
                            key: "jobs/b".into(),
                            expected_revision: None,
                        },
                    ),
                ],
            ),
        ),
        (1, stamped(4, vec![node("node-00000000000000a1", "gpu-1")])),
        (2, EntryPayload::Blank),
        (2, stamped(5, vec![node("node-00000000000000a2", "gpu-2")])),
        (
            2,
            stamped(
                6,
                vec![health(
                    "node-00000000000000a2",
                    NodeHealth::Ready,
                    NodeHealth::Suspect,
                    "no heartbeat for 2000 ms",
                )],
            ),
        ),
        // The snapshot is taken here (index 14).
        (
            2,
            stamped(
                7,
                vec![
                    health(
                        "node-00000000000000a2",
                        NodeHealth::Suspect,
                        NodeHealth::Down,
                        "no heartbeat for 5000 ms",
                    ),
                    health(
                        "node-00000000000000a2",
                        NodeHealth::Ready,
                        NodeHealth::Down,
                        "stale",
                    ),
                ],
            ),
        ),
        (
            2,
            stamped(
                8,
                vec![Command::RestoreChunk {
                    restore: 7,
                    offset: 0,
                    data: half_a.to_vec(),
                }],
            ),
        ),
        (
            2,
            stamped(
                9,
                vec![
                    Command::RestoreChunk {
                        restore: 7,
                        offset: half_a.len() as u64,
                        data: half_b.to_vec(),
                    },
                    Command::RestoreCommit {
                        restore: 7,
                        bytes: restored.len() as u64,
                        digest: blake3::hash(&restored).to_hex().to_string(),
                    },
                ],
            ),
        ),
        (
            2,
            stamped(
                10,
                vec![
                    node("node-00000000000000a3", "gpu-3"),
                    node("node-00000000000000a4", "gpu-4"),
                    health(
                        "node-00000000000000a4",
                        NodeHealth::Ready,
                        NodeHealth::Suspect,
                        "no heartbeat for 2000 ms",
                    ),
                    put("after/1", "x", None),
                ],
            ),
        ),
        (
            2,
            stamped(
                11,
                vec![
                    Command::RemoveNode {
                        node: "node-00000000000000a3".into(),
                    },
                    Command::ForgetController { controller: 3 },
                ],
            ),
        ),
        (
            2,
            stamped(12, vec![request(3, put("after/3", "last", None))]),
        ),
        // Format 3: jobs, allocations, node scheduling and GPU health.
        (
            2,
            stamped(
                13,
                vec![
                    Command::SetClusterLevel { level: 3 },
                    node("node-00000000000000a5", "gpu-5"),
                ],
            ),
        ),
        (
            2,
            stamped(
                14,
                vec![
                    request(
                        4,
                        Command::SubmitJob {
                            spec: Box::new(job("train", 2, 1)),
                        },
                    ),
                    Command::SubmitJob {
                        spec: Box::new(job("doomed", 1, 1)),
                    },
                    Command::SubmitJob {
                        spec: Box::new(job("waits", 1, 8)),
                    },
                ],
            ),
        ),
        (
            2,
            stamped(
                15,
                vec![
                    place("train-24", &[(0, 0), (1, 1)]),
                    // A stale plan for the same GPU: refused.
                    place("doomed-25", &[(0, 0)]),
                    place("doomed-25", &[(0, 2)]),
                    Command::SetJobPendingReason {
                        job: "waits-26".into(),
                        reason: "1 node: needs 8 whole GPUs, 5 free".into(),
                    },
                ],
            ),
        ),
        (
            2,
            stamped(
                16,
                vec![
                    report("train-24.0.1", 27, AllocState::Running, None),
                    report("train-24.1.1", 27, AllocState::Complete, Some(0)),
                    // An old generation: ignored.
                    report("doomed-25.0.1", 1, AllocState::Failed, Some(1)),
                    Command::TransitionGpuHealth {
                        node: "node-00000000000000a5".into(),
                        gpu: inventory_typed.gpus[2].uuid.clone(),
                        from: GpuHealth::Healthy,
                        to: GpuHealth::Failed,
                        reason: "XID 79: GPU fell off the bus".into(),
                    },
                    Command::StopAllocations {
                        stops: vec![StopAllocation {
                            alloc: "train-24.0.1".into(),
                            generation: 27,
                            reason: StopReason::Drained,
                        }],
                    },
                    Command::SetNodeScheduling {
                        node: "node-00000000000000a5".into(),
                        cordoned: true,
                        drain_deadline_ms: None,
                    },
                    Command::CancelJob {
                        job: "doomed-25".into(),
                    },
                    report("doomed-25.0.1", 28, AllocState::Stopped, None),
                    Command::CollectJobs {
                        finished_before_ms: u64::MAX,
                        keep_at_most: 0,
                    },
                ],
            ),
        ),
        // Format 4: objects (versions, tags, retention), node maintenance. The snapshot is
        // taken after the second of these entries, so it holds objects. (An entry is
        // checked against the level as a whole: the raise goes first, alone.)
        (2, stamped(17, vec![Command::SetClusterLevel { level: 4 }])),
        (
            2,
            stamped(
                17,
                vec![
                    object_put("models/llama", &[b"aaaa", b"bbbb"], &["prod"], Some(2)),
                    request(
                        5,
                        object_put("models/llama", &[b"aaaa", b"cccc"], &["candidate"], None),
                    ),
                    object_put("datasets/tiny", &[b"dddd"], &[], None),
                    Command::MoveObjectTag {
                        name: "models/llama".into(),
                        tag: "prod".into(),
                        to: Some(2),
                        expected: Some(1),
                    },
                    // A failed compare-and-set: nothing changes.
                    Command::MoveObjectTag {
                        name: "models/llama".into(),
                        tag: "prod".into(),
                        to: Some(1),
                        expected: Some(1),
                    },
                    Command::SetNodeMaintenance {
                        node: "node-00000000000000a5".into(),
                        on: true,
                        reason: "kernel upgrade".into(),
                    },
                ],
            ),
        ),
        (
            2,
            stamped(
                18,
                vec![
                    // Keep 2: version 1 (no longer tagged) is pruned.
                    object_put("models/llama", &[b"eeee", b"cccc"], &[], None),
                    Command::DeleteObject {
                        name: "datasets/tiny".into(),
                        version: None,
                        force: false,
                    },
                    Command::SetNodeMaintenance {
                        node: "node-00000000000000a4".into(),
                        on: true,
                        reason: "disk swap".into(),
                    },
                ],
            ),
        ),
    ];
    let entries: Vec<Entry> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, (term, payload))| Entry {
            log_id: log_id(term, i as u64),
            payload,
        })
        .collect();
    let last = entries.last().expect("entries").log_id;
    log.append_now(entries.clone()).expect("append");

    let snapshot_at = entries.len() - 2;
    sm.apply(entries[..=snapshot_at].to_vec())
        .await
        .expect("apply");
    let mut builder = sm.get_snapshot_builder().await;
    builder.build_snapshot().await.expect("snapshot");
    sm.apply(entries[snapshot_at + 1..].to_vec())
        .await
        .expect("apply");
    log.save_committed(Some(last)).await.expect("committed");
    // Keep a few entries behind the snapshot, as keep_entries_after_snapshot does.
    log.purge(entries[10].log_id).await.expect("purge");

    std::fs::create_dir_all(&out).expect("out dir");
    let mut dump = std::fs::File::create(out.join("raft-db.dump")).expect("dump file");
    for cf in [CF_META, CF_LOG, CF_SNAPSHOT] {
        for item in db
            .raw()
            .iterator_cf(db.cf(cf), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.expect("read");
            for field in [cf.as_bytes(), &k[..], &v[..]] {
                dump.write_all(&(field.len() as u32).to_be_bytes())
                    .expect("write");
                dump.write_all(field).expect("write");
            }
        }
    }
    let state = sm.view().read().state.clone();
    let summary = serde_json::json!({
        "applied_index": last.index,
        "snapshot_index": snapshot_at,
        "last_purged_index": 10,
        "revision": state.revision,
        "cluster_level": state.cluster_level,
        "clock_unix_ms": state.clock_unix_ms,
        "sessions": state.sessions.len(),
        "digest": state.digest().expect("digest"),
        "kv": state.kv.iter().map(|(k, e)| (k.clone(), serde_json::json!({
            "value": String::from_utf8_lossy(&e.value),
            "create_revision": e.create_revision,
            "mod_revision": e.mod_revision,
            "version": e.version,
        }))).collect::<BTreeMap<_, _>>(),
        "controllers": state.controllers.iter().map(|(id, r)| (id.to_string(), serde_json::json!({
            "incarnation": r.incarnation, "api_addr": r.api_addr, "recorded_at": r.recorded_at,
        }))).collect::<BTreeMap<_, _>>(),
        "nodes": state.nodes.iter().map(|(id, n)| (id.clone(), serde_json::json!({
            "hostname": n.hostname, "labels": n.labels, "health": n.health.name(),
            "health_since": n.health_since, "registered_at": n.registered_at,
            "registration_digest": n.registration_digest,
            "gpus": n.inventory.gpus.len(), "gpu_model": n.inventory.gpus.first().map(|g| g.name.clone()),
        }))).collect::<BTreeMap<_, _>>(),
        "node_events": state.node_events.iter().map(|e| serde_json::json!({
            "revision": e.revision, "node": e.node, "from": e.from.map(|h| h.name()),
            "to": e.to.map(|h| h.name()).unwrap_or("removed"), "reason": e.reason,
        })).collect::<Vec<_>>(),
        "jobs": state.jobs.iter().map(|(id, j)| (id.clone(), serde_json::json!({
            "status": j.status.name(), "pending_reason": j.pending_reason,
            "tasks": j.tasks.len(), "events": j.events.len(),
        }))).collect::<BTreeMap<_, _>>(),
        "allocs": state.allocs.iter().map(|(id, a)| (id.clone(), serde_json::json!({
            "node": a.node, "state": a.state.name(), "generation": a.generation,
            "stopping": a.desired == steward_core::jobs::DesiredState::Stop,
        }))).collect::<BTreeMap<_, _>>(),
        "node_scheduling": state.node_scheduling.iter().map(|(id, n)| (id.clone(), serde_json::json!({
            "cordoned": n.cordoned,
            "failed_gpus": n.gpu_health.keys().collect::<Vec<_>>(),
        }))).collect::<BTreeMap<_, _>>(),
        "objects": state.objects.iter().map(|(name, o)| (name.clone(), serde_json::json!({
            "versions": o.versions.keys().collect::<Vec<_>>(),
            "tags": o.tags,
            "tag_moves": o.tag_history.len(),
            "bytes": o.versions.values().map(|v| v.manifest.size).collect::<Vec<_>>(),
        }))).collect::<BTreeMap<_, _>>(),
        "chunk_refs": state.chunk_refs().len(),
        "maintenance": state.node_storage.keys().collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&summary).expect("json") + "\n",
    )
    .expect("write expected");

    // An operator snapshot file of the same state.
    let header = crate::snapshot_file::SnapshotHeader {
        cluster_name: "golden".into(),
        taken_by: 1,
        applied_index: last.index,
        applied_term: 2,
        voters: vec![1, 2, 3],
        learners: vec![],
        keys: state.kv.len() as u64,
        state_digest: state.digest().expect("digest"),
    };
    let file = crate::snapshot_file::encode(header, &state).expect("snapshot file");
    std::fs::write(out.join("operator.snap"), file).expect("write snapshot file");
}
