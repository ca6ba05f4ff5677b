//! Unit tests of `apply`: revisions, compare-and-set, batches, controllers, nodes and
//! health, restores, request sessions, feature levels and the size limit.

use super::*;

fn put(key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::KvPut {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        expected_revision: cas,
    }
}

fn del(key: &str, cas: Option<u64>) -> Command {
    Command::KvDelete {
        key: key.into(),
        expected_revision: cas,
    }
}

#[test]
fn revisions_and_compare_and_set() {
    let mut s = ClusterState::default();
    assert_eq!(
        s.apply(put("a", "1", Some(0))),
        CommandResult::KvPut { revision: 1 }
    );
    // Creating again with cas=0 fails: the key exists. Nothing changes, not even the revision.
    assert_eq!(
        s.apply(put("a", "2", Some(0))),
        CommandResult::RevisionMismatch {
            key: "a".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(s.revision, 1);
    assert_eq!(
        s.apply(put("b", "x", None)),
        CommandResult::KvPut { revision: 2 }
    );
    assert_eq!(
        s.apply(put("a", "3", Some(1))),
        CommandResult::KvPut { revision: 3 }
    );
    let e = &s.kv["a"];
    assert_eq!((e.create_revision, e.mod_revision, e.version), (1, 3, 2));
    assert_eq!(&*e.value, b"3");
    assert_eq!(
        s.apply(del("a", Some(1))),
        CommandResult::RevisionMismatch {
            key: "a".into(),
            expected: 1,
            actual: 3
        }
    );
    assert_eq!(
        s.apply(del("a", Some(3))),
        CommandResult::KvDeleted {
            existed: true,
            revision: 4
        }
    );
    assert!(!s.kv.contains_key("a"));
}

#[test]
fn batch_gives_each_command_its_own_revision() {
    let mut s = ClusterState::default();
    let r = s.apply(Command::Batch(vec![
        put("k", "1", None),
        put("k", "2", Some(1)),
        put("k", "3", Some(1)),
        del("nope", None),
    ]));
    assert_eq!(
        r,
        CommandResult::Batch(vec![
            CommandResult::KvPut { revision: 1 },
            CommandResult::KvPut { revision: 2 },
            CommandResult::RevisionMismatch {
                key: "k".into(),
                expected: 1,
                actual: 2
            },
            CommandResult::KvDeleted {
                existed: false,
                revision: 3
            },
        ])
    );
    assert_eq!(s.revision, 3);
    assert_eq!(&*s.kv["k"].value, b"2");
}

#[test]
fn incarnation_first_report_wins() {
    let mut s = ClusterState::default();
    let rec = |i| Command::RegisterController {
        controller: 2,
        incarnation: i,
        api_addr: format!("127.0.0.1:{i}"),
    };
    assert_eq!(s.apply(rec(11)), CommandResult::ControllerRegistered);
    assert_eq!(s.apply(rec(11)), CommandResult::ControllerRegistered);
    assert_eq!(
        s.apply(rec(12)),
        CommandResult::IncarnationConflict {
            controller: 2,
            recorded: 11,
            reported: 12
        }
    );
    s.apply(Command::ForgetController { controller: 2 });
    assert_eq!(s.apply(rec(12)), CommandResult::ControllerRegistered);
    assert_eq!(s.controllers[&2].incarnation, 12);
    assert_eq!(s.controllers[&2].api_addr, "127.0.0.1:12");
}

#[test]
fn list_by_prefix_pages() {
    let mut s = ClusterState::default();
    for k in ["a/1", "a/2", "a/3", "b/1"] {
        s.apply(put(k, "v", None));
    }
    let keys: Vec<_> = s.kv_list("a/", None, 10).map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a/1", "a/2", "a/3"]);
    let page: Vec<_> = s
        .kv_list("a/", Some("a/1"), 1)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(page, ["a/2"]);
}

#[test]
fn digest_is_deterministic_and_encoding_round_trips() {
    let mut a = ClusterState::default();
    let mut b = ClusterState::default();
    for s in [&mut a, &mut b] {
        s.apply(put("x", "1", None));
        s.apply(Command::RegisterController {
            controller: 1,
            incarnation: 9,
            api_addr: "a".into(),
        });
    }
    assert_eq!(a.digest().expect("digest"), b.digest().expect("digest"));
    b.apply(put("y", "2", None));
    assert_ne!(a.digest().expect("digest"), b.digest().expect("digest"));
    let back = ClusterState::decode(&b.encode().expect("encode")).expect("decode");
    assert_eq!(back, b);
}

#[test]
fn nodes_register_and_change_health_with_events() {
    let mut s = ClusterState::default();
    let reg = || Command::RegisterNode {
        node: "n1".into(),
        hostname: "gpu-1".into(),
        labels: Default::default(),
        inventory: br#"{"gpus":[{"index":0,"uuid":"GPU-x","name":"NVIDIA H100 80GB HBM3"}]}"#
            .to_vec(),
        inventory_digest: "d".into(),
    };
    assert_eq!(
        s.apply(reg()),
        CommandResult::NodeRegistered { revision: 1 }
    );
    let set = |h| Command::SetNodeHealth {
        node: "n1".into(),
        health: h,
        reason: "no heartbeat for 5000 ms".into(),
    };
    assert_eq!(
        s.apply(set(NodeHealth::Down)),
        CommandResult::NodeHealthSet {
            changed: true,
            revision: 2
        }
    );
    assert_eq!(
        s.apply(set(NodeHealth::Down)),
        CommandResult::NodeHealthSet {
            changed: false,
            revision: 2
        }
    );
    assert_eq!(s.revision, 2, "a no-op takes no revision");
    assert_eq!(
        s.apply(reg()),
        CommandResult::NodeRegistered { revision: 3 }
    );
    assert_eq!(
        s.nodes["n1"].health,
        NodeHealth::Down,
        "re-registration keeps health"
    );
    assert_eq!(
        s.nodes["n1"].inventory.gpus[0].uuid, "GPU-x",
        "stored typed"
    );
    let events: Vec<_> = s.node_events.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(
        events,
        [
            (None, Some(NodeHealth::Ready)),
            (Some(NodeHealth::Ready), Some(NodeHealth::Down))
        ]
    );
    assert_eq!(
        s.apply(Command::SetNodeHealth {
            node: "nope".into(),
            health: NodeHealth::Ready,
            reason: String::new()
        }),
        CommandResult::UnknownNode {
            node: "nope".into()
        }
    );
}

#[test]
fn restore_keeps_live_controllers_and_revisions_grow() {
    let mut old = ClusterState::default();
    old.apply(put("from-snapshot", "1", None));
    let mut live = level2();
    for i in 0..5 {
        live.apply(put(&format!("live{i}"), "v", None));
    }
    live.apply(Command::RegisterController {
        controller: 1,
        incarnation: 7,
        api_addr: "x".into(),
    });
    let before = live.revision;
    let record = old.encode().expect("encode");
    let digest = blake3::hash(&record).to_hex().to_string();
    let (first, second) = record.split_at(record.len() / 2);
    assert_eq!(
        live.apply(chunk(9, 0, first)),
        CommandResult::RestoreStaged {
            restore: 9,
            bytes: first.len() as u64
        }
    );
    assert!(matches!(
        live.apply(chunk(9, 3, second)),
        CommandResult::RestoreRejected { .. }
    ));
    live.apply(chunk(9, first.len() as u64, second));
    assert!(matches!(
        live.apply(Command::RestoreCommit {
            restore: 9,
            bytes: record.len() as u64,
            digest: "wrong".into()
        }),
        CommandResult::RestoreRejected { .. }
    ));
    let r = live.apply(Command::RestoreCommit {
        restore: 9,
        bytes: record.len() as u64,
        digest,
    });
    assert_eq!(
        r,
        CommandResult::Restored {
            keys: 1,
            revision: before + 1
        }
    );
    assert_eq!(live.revision, before + 1);
    assert!(live.kv.contains_key("from-snapshot") && !live.kv.contains_key("live0"));
    assert_eq!(live.controllers[&1].incarnation, 7);
    assert_eq!(live.cluster_level, 2, "the level never goes back");
    assert!(live.pending_restore.is_none());
    assert_eq!(
        live.apply(put("after", "1", None)),
        CommandResult::KvPut {
            revision: before + 2
        }
    );
}

fn chunk(restore: u64, offset: u64, data: &[u8]) -> Command {
    Command::RestoreChunk {
        restore,
        offset,
        data: data.to_vec(),
    }
}

/// A state at feature level 2.
fn level2() -> ClusterState {
    let mut s = ClusterState::default();
    assert_eq!(s.cluster_level, 1);
    assert_eq!(
        s.apply(Command::SetClusterLevel { level: 2 }),
        CommandResult::ClusterLevelSet {
            level: 2,
            changed: true,
            revision: 1
        }
    );
    s
}

#[test]
fn commands_above_the_cluster_level_change_nothing() {
    let mut s = ClusterState::default();
    let remove = Command::RemoveNode { node: "n".into() };
    assert_eq!(
        s.apply(remove.clone()),
        CommandResult::FeatureNotEnabled {
            kind: "remove_node".into(),
            needs: 2,
            cluster_level: 1
        }
    );
    assert_eq!(s.revision, 0);
    let mut s = level2();
    assert_eq!(
        s.apply(Command::SetClusterLevel { level: 1 }),
        CommandResult::ClusterLevelSet {
            level: 2,
            changed: false,
            revision: 1
        },
        "never lowered"
    );
    assert_eq!(
        s.apply(remove),
        CommandResult::UnknownNode { node: "n".into() }
    );
}

#[test]
fn a_request_applies_once_and_a_retry_gets_the_first_result() {
    let mut s = level2();
    let req = |seq, cmd| Command::Request {
        id: crate::command::RequestId { client: 42, seq },
        command: Box::new(cmd),
    };
    let created = s.apply(req(1, put("k", "mine", Some(0))));
    assert_eq!(created, CommandResult::KvPut { revision: 2 });
    // The answer was lost; the client retries the same request.
    assert_eq!(s.apply(req(1, put("k", "mine", Some(0)))), created);
    assert_eq!(s.revision, 2, "the retry changed nothing");
    // A new request with the same body is a new write (and its CAS fails).
    assert!(matches!(
        s.apply(req(2, put("k", "mine", Some(0)))),
        CommandResult::RevisionMismatch { .. }
    ));
    // Old results are forgotten past the per-client window.
    for seq in 3..3 + MAX_RESULTS_PER_CLIENT as u64 {
        s.apply(req(seq, put("k", "x", None)));
    }
    assert_eq!(
        s.apply(req(1, put("k", "mine", Some(0)))),
        CommandResult::RequestForgotten {
            id: crate::command::RequestId { client: 42, seq: 1 }
        }
    );
}

#[test]
fn sessions_expire_on_the_cluster_clock() {
    let mut s = level2();
    let stamped = |at, commands| Command::Stamped {
        at_unix_ms: at,
        commands,
    };
    let req = Command::Request {
        id: crate::command::RequestId { client: 7, seq: 1 },
        command: Box::new(put("a", "1", None)),
    };
    s.apply(stamped(1_000, vec![req.clone()]));
    assert!(s.sessions.contains_key(&7));
    s.apply(stamped(500, vec![]));
    assert_eq!(s.clock_unix_ms, 1_000, "the clock never goes back");
    s.apply(stamped(1_000 + SESSION_TTL_MS - 1, vec![]));
    assert!(s.sessions.contains_key(&7), "not idle long enough");
    s.apply(stamped(1_000 + SESSION_TTL_MS + 60_001, vec![]));
    assert!(!s.sessions.contains_key(&7), "idle past the TTL");
}

#[test]
fn a_full_session_table_forgets_only_clients_idle_long_enough() {
    let mut s = level2();
    let request = |client, at| Command::Stamped {
        at_unix_ms: at,
        commands: vec![Command::Request {
            id: crate::command::RequestId { client, seq: 1 },
            command: Box::new(put(&format!("k{client}"), "v", None)),
        }],
    };
    let single = |r: CommandResult| match r {
        CommandResult::Batch(mut v) if v.len() == 1 => v.remove(0),
        other => panic!("unexpected {other:?}"),
    };
    for client in 0..MAX_SESSIONS as u64 {
        // Client 0 first, at t = 1000; the others later.
        single(s.apply(request(client, 1_000 + client.min(1) * 60_000)));
    }
    assert_eq!(s.sessions.len(), MAX_SESSIONS);
    // Everyone was active within the minimum idle time: a new client is refused.
    let revision = s.revision;
    assert_eq!(
        single(s.apply(request(1_000_000, 61_000))),
        CommandResult::SessionsFull {
            limit: MAX_SESSIONS as u64
        }
    );
    assert_eq!(s.revision, revision, "nothing applied");
    // Once client 0 has been idle long enough, it is forgotten for the new one.
    let later = 1_000 + MIN_IDLE_TO_FORGET_MS;
    assert!(matches!(
        single(s.apply(request(1_000_000, later))),
        CommandResult::KvPut { .. }
    ));
    assert!(!s.sessions.contains_key(&0));
    assert!(s.sessions.contains_key(&1_000_000));
    assert_eq!(s.sessions.len(), MAX_SESSIONS);
}

#[test]
fn a_staged_restore_is_shared_by_copies_and_dropped_by_abandon() {
    let mut s = level2();
    let mut source = ClusterState::default();
    source.apply(put("restored", "yes", None));
    let bytes = source.encode().expect("encode");
    let (a, b) = bytes.split_at(bytes.len() / 2);
    s.apply(Command::RestoreChunk {
        restore: 1,
        offset: 0,
        data: a.to_vec(),
    });
    s.apply(Command::RestoreChunk {
        restore: 1,
        offset: a.len() as u64,
        data: b.to_vec(),
    });
    let copy = s.clone();
    let staged = &s.pending_restore.as_ref().expect("staged").data;
    assert_eq!(staged.to_vec(), bytes);
    assert_eq!(copy.pending_restore.as_ref().expect("copied").data, *staged);
    // Encoded exactly as format 2 stored a Vec<u8>.
    let as_vec: Vec<u8> = postcard::to_allocvec(&bytes).expect("vec");
    assert_eq!(postcard::to_allocvec(staged).expect("staged"), as_vec);
    let counted = s.counted_bytes();
    s.abandon_restore();
    assert!(s.pending_restore.is_none());
    assert_eq!(s.counted_bytes(), counted - bytes.len() as u64);
    let commit = s.apply(Command::RestoreCommit {
        restore: 1,
        bytes: bytes.len() as u64,
        digest: blake3::hash(&bytes).to_hex().to_string(),
    });
    assert!(matches!(commit, CommandResult::RestoreRejected { .. }));
}

#[test]
fn conditional_transitions_apply_only_from_the_expected_health() {
    let mut s = level2();
    s.apply(Command::RegisterNodeTyped {
        node: "n1".into(),
        hostname: "h".into(),
        labels: Default::default(),
        inventory: Box::default(),
        registration_digest: "d".into(),
    });
    let t = |from, to| Command::TransitionNodeHealth {
        node: "n1".into(),
        from,
        to,
        reason: "test".into(),
    };
    // Proposed ready -> down and, on a heartbeat, down -> ready; committed in the other order.
    assert_eq!(
        s.apply(t(NodeHealth::Down, NodeHealth::Ready)),
        CommandResult::NodeHealthConflict {
            node: "n1".into(),
            expected: NodeHealth::Down,
            actual: NodeHealth::Ready
        }
    );
    assert!(matches!(
        s.apply(t(NodeHealth::Ready, NodeHealth::Down)),
        CommandResult::NodeHealthSet { changed: true, .. }
    ));
    assert_eq!(s.nodes["n1"].health, NodeHealth::Down);
    assert_eq!(
        s.apply(Command::RemoveNode { node: "n1".into() }),
        CommandResult::NodeRemoved { revision: 4 }
    );
    assert!(s.nodes.is_empty());
    let last = s.node_events.back().expect("event");
    assert_eq!((last.from, last.to), (Some(NodeHealth::Down), None));
}

#[test]
fn the_state_size_is_bounded_and_counted() {
    let mut s = ClusterState::default();
    s.apply(put("k", "v", None));
    let one = s.counted_bytes();
    assert!(one >= 2);
    s.apply(put("k", "vv", None));
    assert_eq!(s.counted_bytes(), one + 1);
    s.apply(del("k", None));
    assert_eq!(s.counted_bytes(), 0);
    // Near the limit, growth is refused and shrinking allowed.
    s.counted_bytes = MAX_STATE_BYTES - 10;
    assert!(matches!(
        s.apply(put("big", &"x".repeat(100), None)),
        CommandResult::StateFull { .. }
    ));
    // Decoding recounts.
    let mut t = ClusterState::default();
    t.apply(put("a", "12345", None));
    let back = ClusterState::decode(&t.encode().expect("encode")).expect("decode");
    assert_eq!(back.counted_bytes(), t.counted_bytes());
    assert_eq!(back, t);
}

#[test]
fn format_1_state_migrates() {
    let mut old = v1::ClusterState {
        revision: 9,
        ..Default::default()
    };
    old.kv.insert(
        "a".into(),
        v1::KvEntry {
            value: b"1".to_vec(),
            create_revision: 3,
            mod_revision: 9,
            version: 2,
        },
    );
    old.nodes.insert(
        "n".into(),
        v1::NodeRecord {
            hostname: "h".into(),
            labels: Default::default(),
            inventory: br#"{"gpus":[{"uuid":"GPU-1","name":"A100","pcie_gen":4}]}"#.to_vec(),
            inventory_digest: "d".into(),
            health: v1::NodeHealth::Suspect,
            health_since: 8,
            registered_at: 2,
        },
    );
    let bytes = codec::encode_as("cluster state", 1, &old).expect("encode v1");
    let s = ClusterState::decode(&bytes).expect("migrate");
    assert_eq!((s.revision, s.cluster_level), (9, 1));
    assert_eq!(s.kv["a"].mod_revision, 9);
    assert_eq!(s.nodes["n"].health, NodeHealth::Suspect);
    assert_eq!(s.nodes["n"].inventory.gpus[0].pcie_max_gen, Some(4));
    assert_eq!(
        s.counted_bytes(),
        s.clone().encode().map(|_| s.counted_bytes()).expect("e")
    );
}

/// A state record whose map or sequence declares more entries than it holds (a forged or
/// corrupt record) is a decode error: decoding never reserves what the input claims.
/// imbl's own deserializer reserved it, which aborted the process on allocation.
#[test]
fn a_forged_length_in_a_state_record_is_an_error_not_an_allocation() {
    // A varint of 2^35 - 1 entries; postcard reads it as the next collection's length.
    const HUGE: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x7f];
    for version in 2..=ClusterState::VERSION {
        // revision 0, then the KV map claims HUGE entries.
        let mut kv = vec![version, 0];
        kv.extend(HUGE);
        // revision 0, an empty KV map, no controllers, no nodes, then the node events
        // claim HUGE entries.
        let mut events = vec![version, 0, 0, 0, 0];
        events.extend(HUGE);
        for (what, bytes) in [("kv map", kv), ("event sequence", events)] {
            let e = ClusterState::decode(&bytes)
                .expect_err("a record shorter than it claims does not decode");
            assert!(
                e.to_string().contains("cannot decode cluster state"),
                "format {version}, {what}: {e}"
            );
        }
    }
}
