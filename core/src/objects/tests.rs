//! Objects in the cluster state: versions, unchanged puts, tags with compare-and-set,
//! retention, deletes, limits, the chunk reference index, and the format-3 migration.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::apply::PutVersion;
use super::*;
use crate::chunk::{ChunkId, ObjectHash};
use crate::command::{Command, CommandResult};
use crate::state::ClusterState;

fn state() -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(Command::SetClusterLevel { level: 4 });
    s
}

/// A manifest of chunks whose contents are `parts`.
fn manifest(parts: &[&[u8]]) -> Manifest {
    let mut content = ObjectHash::content_hasher();
    for p in parts {
        content.update(p);
    }
    Manifest {
        chunks: parts
            .iter()
            .map(|p| ChunkRef {
                id: ChunkId::of(p),
                size: p.len() as u32,
            })
            .collect(),
        size: parts.iter().map(|p| p.len() as u64).sum(),
        content_hash: ObjectHash::from_hash(content.finalize()),
    }
}

fn put(name: &str, parts: &[&[u8]], rf: u8, tags: &[&str]) -> Command {
    Command::PutObjectVersion {
        put: Box::new(PutVersion {
            name: name.into(),
            manifest: manifest(parts),
            rf,
            labels: BTreeMap::new(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            retention: None,
        }),
    }
}

fn tag(name: &str, tag: &str, to: Option<u64>, expected: Option<u64>) -> Command {
    Command::MoveObjectTag {
        name: name.into(),
        tag: tag.into(),
        to,
        expected,
    }
}

fn version_of(r: &CommandResult) -> u64 {
    match r {
        CommandResult::ObjectVersionPut { version, .. } => *version,
        other => panic!("not a put: {other:?}"),
    }
}

/// The reference index must always equal one rebuilt from scratch, and the counted size a
/// recount.
fn check_index(s: &ClusterState) {
    let mut rebuilt = s.clone();
    rebuilt.rebuild_chunk_refs();
    assert_eq!(s.chunk_refs, rebuilt.chunk_refs, "chunk reference index");
    let decoded = ClusterState::decode(&s.encode().expect("encode")).expect("decode");
    assert_eq!(decoded.chunk_refs, s.chunk_refs, "rebuilt on decode");
    assert_eq!(decoded.counted_bytes(), s.counted_bytes(), "counted size");
}

#[test]
fn versions_number_up_and_an_unchanged_put_makes_none() {
    let mut s = state();
    let r = s.apply(put("models/m", &[b"aaa", b"bbb"], 3, &["latest"]));
    assert!(matches!(
        r,
        CommandResult::ObjectVersionPut {
            version: 1,
            created: true,
            ..
        }
    ));
    let rev = s.revision;
    // The same bytes again: version 1, nothing changed, no revision taken.
    let r = s.apply(put("models/m", &[b"aaa", b"bbb"], 3, &["latest"]));
    assert!(matches!(
        r,
        CommandResult::ObjectVersionPut {
            version: 1,
            created: false,
            changed: false,
            ..
        }
    ));
    assert_eq!(s.revision, rev);
    // One chunk changed: version 2 shares the other.
    let r = s.apply(put("models/m", &[b"aaa", b"ccc"], 3, &["latest"]));
    assert_eq!(version_of(&r), 2);
    let o = &s.objects["models/m"];
    assert_eq!(o.tags["latest"], 2);
    assert_eq!(o.tag_history.len(), 2);
    assert_eq!(s.chunk_refs[&ChunkId::of(b"aaa")].refs, 2);
    assert_eq!(s.chunk_refs[&ChunkId::of(b"bbb")].refs, 1);
    assert_eq!(s.chunk_refs.len(), 3);
    // A chunk listed twice in one version counts once.
    s.apply(put("other", &[b"aaa", b"aaa"], 2, &[]));
    assert_eq!(s.chunk_refs[&ChunkId::of(b"aaa")].refs, 3);
    assert_eq!(s.chunk_refs[&ChunkId::of(b"aaa")].rf, 3);
    check_index(&s);
}

#[test]
fn tags_move_by_compare_and_set_with_a_history() {
    let mut s = state();
    s.apply(put("m", &[b"1"], 3, &[]));
    s.apply(put("m", &[b"2"], 3, &[]));
    // 0 = must not exist.
    let r = s.apply(tag("m", "prod", Some(1), Some(0)));
    assert!(
        matches!(
            r,
            CommandResult::TagMoved {
                from: None,
                changed: true,
                ..
            }
        ),
        "{r:?}"
    );
    let rev = s.revision;
    let r = s.apply(tag("m", "prod", Some(2), Some(0)));
    assert_eq!(
        r,
        CommandResult::TagConflict {
            name: "m".into(),
            tag: "prod".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(s.revision, rev, "a failed compare-and-set changes nothing");
    let r = s.apply(tag("m", "prod", Some(2), Some(1)));
    assert!(matches!(
        r,
        CommandResult::TagMoved {
            from: Some(1),
            changed: true,
            ..
        }
    ));
    assert_eq!(s.objects["m"].tags["prod"], 2);
    // To a version that does not exist; an unknown object; a bad tag.
    assert!(matches!(
        s.apply(tag("m", "prod", Some(9), None)),
        CommandResult::ObjectRefused { .. }
    ));
    assert!(matches!(
        s.apply(tag("nope", "prod", Some(1), None)),
        CommandResult::UnknownObject { .. }
    ));
    assert!(matches!(
        s.apply(tag("m", "Prod", Some(1), None)),
        CommandResult::ObjectRefused { .. }
    ));
    // Removing it.
    let r = s.apply(tag("m", "prod", None, Some(2)));
    assert!(matches!(
        r,
        CommandResult::TagMoved {
            from: Some(2),
            changed: true,
            ..
        }
    ));
    let h: Vec<(Option<u64>, Option<u64>)> = s.objects["m"]
        .tag_history
        .iter()
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        h,
        vec![(None, Some(1)), (Some(1), Some(2)), (Some(2), None)]
    );
    // The history is bounded.
    for i in 0..(MAX_TAG_HISTORY as u64 + 10) {
        s.apply(tag("m", "flip", Some(1 + i % 2), None));
    }
    assert_eq!(s.objects["m"].tag_history.len(), MAX_TAG_HISTORY);
    check_index(&s);
}

#[test]
fn retention_keeps_the_newest_and_the_tagged() {
    let mut s = state();
    s.apply(Command::PutObjectVersion {
        put: Box::new(PutVersion {
            retention: Some(Retention {
                keep_last: Some(2),
                keep_tagged: true,
            }),
            ..match put("ckpt", &[b"v1"], 3, &["best"]) {
                Command::PutObjectVersion { put } => *put,
                _ => unreachable!(),
            }
        }),
    });
    s.apply(put("ckpt", &[b"v2"], 3, &[]));
    let r = s.apply(put("ckpt", &[b"v3"], 3, &[]));
    // v1 is tagged: kept beside the newest two.
    assert!(matches!(&r, CommandResult::ObjectVersionPut { pruned, .. } if pruned.is_empty()));
    let r = s.apply(put("ckpt", &[b"v4"], 3, &[]));
    assert!(
        matches!(&r, CommandResult::ObjectVersionPut { pruned, .. } if *pruned == vec![2]),
        "{r:?}"
    );
    assert_eq!(
        s.objects["ckpt"]
            .versions
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert!(
        !s.chunk_refs.contains_key(&ChunkId::of(b"v2")),
        "v2's chunk is garbage"
    );
    // Moving the tag off v1 lets the rule take it.
    let r = s.apply(tag("ckpt", "best", Some(4), Some(1)));
    assert!(
        matches!(&r, CommandResult::TagMoved { pruned, .. } if *pruned == vec![1]),
        "{r:?}"
    );
    assert_eq!(
        s.objects["ckpt"]
            .versions
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    // Numbers are never reused.
    assert_eq!(version_of(&s.apply(put("ckpt", &[b"v5"], 3, &[]))), 5);
    check_index(&s);
}

#[test]
fn deletes_keep_tagged_versions_unless_forced_and_recompute_factors() {
    let mut s = state();
    s.apply(put("a", &[b"shared", b"a1"], 5, &["prod"]));
    s.apply(put("b", &[b"shared"], 2, &[]));
    assert_eq!(s.chunk_refs[&ChunkId::of(b"shared")].rf, 5);
    let rev = s.revision;
    let r = s.apply(Command::DeleteObject {
        name: "a".into(),
        version: Some(1),
        force: false,
    });
    assert!(
        matches!(&r, CommandResult::ObjectRefused { reason } if reason.contains("prod -> 1")),
        "{r:?}"
    );
    assert_eq!(s.revision, rev);
    let r = s.apply(Command::DeleteObject {
        name: "a".into(),
        version: Some(1),
        force: true,
    });
    assert!(matches!(r, CommandResult::ObjectDeleted { .. }));
    // The record stays (numbers are not reused), without versions or tags.
    assert!(s.objects["a"].versions.is_empty() && s.objects["a"].tags.is_empty());
    // The shared chunk now needs only b's factor.
    assert_eq!(s.chunk_refs[&ChunkId::of(b"shared")].rf, 2);
    assert!(!s.chunk_refs.contains_key(&ChunkId::of(b"a1")));
    let r = s.apply(Command::DeleteObject {
        name: "b".into(),
        version: None,
        force: false,
    });
    assert!(matches!(r, CommandResult::ObjectDeleted { .. }));
    assert!(!s.objects.contains_key("b"));
    assert!(s.chunk_refs.is_empty());
    assert!(matches!(
        s.apply(Command::DeleteObject {
            name: "b".into(),
            version: None,
            force: false
        }),
        CommandResult::UnknownObject { .. }
    ));
    check_index(&s);
}

#[test]
fn bad_puts_are_refused_and_change_nothing() {
    let mut s = state();
    let good = match put("ok", &[b"x"], 3, &[]) {
        Command::PutObjectVersion { put } => *put,
        _ => unreachable!(),
    };
    let mut cases: Vec<(PutVersion, &str)> = Vec::new();
    for name in [
        "", "../x", "a//b", "a/./b", "/a", "a/", "a@1", "a:b", "a b", "a\0b",
    ] {
        cases.push((
            PutVersion {
                name: name.into(),
                ..good.clone()
            },
            "name",
        ));
    }
    cases.push((
        PutVersion {
            name: "x".repeat(MAX_OBJECT_NAME_BYTES + 1),
            ..good.clone()
        },
        "long name",
    ));
    for rf in [0, MAX_RF + 1] {
        cases.push((PutVersion { rf, ..good.clone() }, "rf"));
    }
    let mut wrong_size = good.clone();
    wrong_size.manifest.size += 1;
    cases.push((wrong_size, "sizes"));
    let mut too_big = good.clone();
    too_big.manifest.chunks[0].size = MAX_CHUNK_BYTES + 1;
    too_big.manifest.size = u64::from(MAX_CHUNK_BYTES) + 1;
    cases.push((too_big, "chunk size"));
    cases.push((
        PutVersion {
            tags: vec!["UPPER".into()],
            ..good.clone()
        },
        "tag",
    ));
    cases.push((
        PutVersion {
            retention: Some(Retention {
                keep_last: Some(0),
                keep_tagged: false,
            }),
            ..good.clone()
        },
        "keep 0",
    ));
    for (p, what) in cases {
        let before = s.clone();
        let r = s.apply(Command::PutObjectVersion { put: Box::new(p) });
        assert!(
            matches!(r, CommandResult::ObjectRefused { .. }),
            "{what}: {r:?}"
        );
        assert_eq!(s, before, "{what}: nothing changed");
    }
    // Below level 4 the kind is not enabled at all.
    let mut old = ClusterState::default();
    old.apply(Command::SetClusterLevel { level: 3 });
    let r = old.apply(Command::PutObjectVersion {
        put: Box::new(good),
    });
    assert!(
        matches!(r, CommandResult::FeatureNotEnabled { needs: 4, .. }),
        "{r:?}"
    );
}

#[test]
fn references_parse_and_resolve() {
    let (n, v) = VersionSelector::parse_reference("models/m@3").expect("number");
    assert_eq!((n.as_str(), v), ("models/m", VersionSelector::Number(3)));
    let (n, v) = VersionSelector::parse_reference("models/m:prod").expect("tag");
    assert_eq!(
        (n.as_str(), v),
        ("models/m", VersionSelector::Tag("prod".into()))
    );
    let (_, v) = VersionSelector::parse_reference("m").expect("latest");
    assert_eq!(v, VersionSelector::Latest);
    for bad in ["m@0", "m@x", "m:", "m:UP", "../m", "@1"] {
        assert!(VersionSelector::parse_reference(bad).is_err(), "{bad}");
    }
    let mut s = state();
    s.apply(put("m", &[b"1"], 3, &["prod"]));
    s.apply(put("m", &[b"2"], 3, &[]));
    let o = &s.objects["m"];
    assert_eq!(VersionSelector::Latest.resolve(o), Some(2));
    assert_eq!(VersionSelector::Tag("prod".into()).resolve(o), Some(1));
    assert_eq!(VersionSelector::Number(7).resolve(o), None);
}

#[test]
fn maintenance_is_per_registered_node_and_goes_with_it() {
    let mut s = state();
    let r = s.apply(Command::SetNodeMaintenance {
        node: "n1".into(),
        on: true,
        reason: "kernel".into(),
    });
    assert!(matches!(r, CommandResult::UnknownNode { .. }));
    s.apply(Command::RegisterNodeTyped {
        node: "n1".into(),
        hostname: "h".into(),
        labels: BTreeMap::new(),
        inventory: Box::default(),
        registration_digest: "d".into(),
    });
    let on = Command::SetNodeMaintenance {
        node: "n1".into(),
        on: true,
        reason: "kernel".into(),
    };
    assert!(matches!(
        s.apply(on.clone()),
        CommandResult::NodeMaintenanceSet { changed: true, .. }
    ));
    assert!(matches!(
        s.apply(on),
        CommandResult::NodeMaintenanceSet { changed: false, .. }
    ));
    assert_eq!(
        s.node_storage["n1"]
            .maintenance
            .as_ref()
            .map(|m| m.reason.as_str()),
        Some("kernel")
    );
    s.apply(Command::RemoveNode { node: "n1".into() });
    assert!(s.node_storage.is_empty());
}

#[test]
fn a_format_3_state_loads_with_no_objects() {
    let mut s = state();
    s.apply(Command::KvPut {
        key: "k".into(),
        value: b"v".to_vec(),
        expected_revision: None,
    });
    let v3 = crate::state::v3::ClusterState {
        revision: s.revision,
        kv: s.kv.clone(),
        controllers: s.controllers.clone(),
        nodes: s.nodes.clone(),
        node_events: s.node_events.clone(),
        cluster_level: s.cluster_level,
        clock_unix_ms: s.clock_unix_ms,
        sessions: s.sessions.clone(),
        pending_restore: None,
        jobs: s.jobs.clone(),
        allocs: s.allocs.clone(),
        node_scheduling: s.node_scheduling.clone(),
    };
    let bytes = crate::codec::encode_as("cluster state", 3, &v3).expect("encode v3");
    let loaded = ClusterState::decode(&bytes).expect("decode v3");
    assert_eq!(loaded, s);
    assert!(loaded.objects.is_empty() && loaded.chunk_refs.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        object: u8,
        chunks: Vec<u8>,
        rf: u8,
        tag: Option<u8>,
        keep: Option<u8>,
    },
    Tag {
        object: u8,
        tag: u8,
        to: Option<u8>,
    },
    Delete {
        object: u8,
        version: Option<u8>,
        force: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, prop::collection::vec(0..12u8, 0..6), 1..=MAX_RF, prop::option::of(0..3u8), prop::option::of(1..4u8))
            .prop_map(|(object, chunks, rf, tag, keep)| Op::Put { object, chunks, rf, tag, keep }),
        2 => (0..3u8, 0..3u8, prop::option::of(1..8u8)).prop_map(|(object, tag, to)| Op::Tag { object, tag, to }),
        1 => (0..3u8, prop::option::of(1..8u8), any::<bool>())
            .prop_map(|(object, version, force)| Op::Delete { object, version, force }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever happens, the reference index equals one rebuilt from the objects, and
    /// every referenced chunk's factor is the highest among the versions listing it.
    #[test]
    fn the_reference_index_always_matches_the_objects(ops in prop::collection::vec(op(), 1..40)) {
        let mut s = state();
        let chunk = |c: u8| vec![c; 3];
        for op in ops {
            let cmd = match op {
                Op::Put { object, chunks, rf, tag, keep } => {
                    let parts: Vec<Vec<u8>> = chunks.iter().map(|c| chunk(*c)).collect();
                    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    Command::PutObjectVersion { put: Box::new(PutVersion {
                        name: format!("o{object}"),
                        manifest: manifest(&refs),
                        rf,
                        labels: BTreeMap::new(),
                        tags: tag.map(|t| vec![format!("t{t}")]).unwrap_or_default(),
                        retention: keep.map(|k| Retention { keep_last: Some(u32::from(k)), keep_tagged: k % 2 == 0 }),
                    })}
                }
                Op::Tag { object, tag, to } => Command::MoveObjectTag {
                    name: format!("o{object}"), tag: format!("t{tag}"), to: to.map(u64::from), expected: None,
                },
                Op::Delete { object, version, force } => Command::DeleteObject {
                    name: format!("o{object}"), version: version.map(u64::from), force,
                },
            };
            s.apply(cmd);
            let mut rebuilt = s.clone();
            rebuilt.rebuild_chunk_refs();
            prop_assert_eq!(&s.chunk_refs, &rebuilt.chunk_refs);
            for (name, o) in s.objects.iter() {
                for t in o.tags.values() {
                    prop_assert!(o.versions.contains_key(t), "{} tag names a missing version", name);
                }
            }
        }
        check_index(&s);
    }
}

#[test]
fn job_inputs_are_pinned_to_the_version_they_name_at_submission() {
    let mut s = state();
    version_of(&s.apply(put("models/m", &[b"one"], 3, &["prod"])));
    version_of(&s.apply(put("models/m", &[b"two"], 3, &[])));
    let job = |inputs: &[&str]| {
        let mut spec = crate::job::JobSpec::from_toml(
            "name = \"j\"\ncommand = \"true\"\n[resources]\ncpu_millicores = 100\nmemory_mib = 64\n",
        )
        .expect("spec");
        spec.inputs = inputs.iter().map(|i| i.to_string()).collect();
        Command::SubmitJob {
            spec: Box::new(spec),
        }
    };
    let pinned = |s: &ClusterState, r: CommandResult| match r {
        CommandResult::JobSubmitted { job, .. } => s.jobs[&job].spec.inputs.clone(),
        other => panic!("submit: {other:?}"),
    };
    let r = s.apply(job(&["models/m:prod", "models/m2x@1"]));
    assert!(
        matches!(&r, CommandResult::JobRefused { reason } if reason.contains("no object `models/m2x`")),
        "{r:?}"
    );
    let r = s.apply(job(&["models/m:prod"]));
    assert_eq!(pinned(&s, r), vec!["models/m@1".to_string()]);
    let r = s.apply(job(&["models/m"]));
    assert_eq!(pinned(&s, r), vec!["models/m@2".to_string()]);
    // The tag moves: a job submitted before keeps its version.
    s.apply(tag("models/m", "prod", Some(2), Some(1)));
    let first = s.jobs.values().find(|j| j.spec.inputs == ["models/m@1"]);
    assert!(first.is_some());
    for bad in [
        vec!["models/m:nope"],
        vec!["models/m@9"],
        vec!["../x"],
        vec!["models/m", "models_m@1"],
    ] {
        let before = s.jobs.len();
        let r = s.apply(job(&bad));
        assert!(
            matches!(r, CommandResult::JobRefused { .. }),
            "{bad:?}: {r:?}"
        );
        assert_eq!(s.jobs.len(), before);
    }
    // Below the objects level inputs are kept as given (older controllers did so).
    let mut old = ClusterState::default();
    old.apply(Command::SetClusterLevel { level: 3 });
    let r = old.apply(job(&["anything goes"]));
    assert_eq!(pinned(&old, r), vec!["anything goes".to_string()]);
}

#[test]
fn input_variables_name_the_object() {
    assert_eq!(
        crate::job::input_env_name("datasets/tokens-v3.1"),
        "STEWARD_INPUT_DATASETS_TOKENS_V3_1"
    );
}

#[test]
fn a_chunk_id_has_one_size_in_every_manifest() {
    let mut s = state();
    version_of(&s.apply(put("a", &[b"shared", b"own"], 3, &[])));
    let lying = |m: &mut Manifest| {
        m.chunks[0].size += 1;
        m.size += 1;
    };
    // Another object names the shared chunk with another size.
    let mut m = manifest(&[b"shared"]);
    lying(&mut m);
    let r = s.apply(Command::PutObjectVersion {
        put: Box::new(PutVersion {
            name: "b".into(),
            manifest: m,
            rf: 3,
            labels: BTreeMap::new(),
            tags: vec![],
            retention: None,
        }),
    });
    assert!(
        matches!(&r, CommandResult::ObjectRefused { reason } if reason.contains("bytes in this manifest")),
        "{r:?}"
    );
    assert!(!s.objects.contains_key("b"));
    // One manifest lists one id with two sizes.
    let mut m = manifest(&[b"x", b"x"]);
    m.chunks[1].size += 1;
    m.size += 1;
    assert!(m.validate().unwrap_err().contains("one id is one content"));
    check_index(&s);
}
