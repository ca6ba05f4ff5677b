//! Objects: no read returns bytes that no put wrote (a wrong byte served), a read of a tag
//! returns a version some tag move named before the read ended, and every acknowledged
//! version reads back bit-exact at the end.

use std::collections::{BTreeMap, BTreeSet};

use crate::workload::objects::{ObjCall, ObjOp, ObjOutcome};

/// A promise about objects broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectViolation {
    /// A read returned bytes no put of that object wrote.
    WrongBytes {
        name: String,
        client: u32,
        hash: String,
        at_ms: u64,
    },
    /// A read of `NAME:TAG` returned bytes of no version a tag move had named by then.
    WrongTag {
        name: String,
        tag: String,
        client: u32,
        hash: String,
        at_ms: u64,
    },
    /// An acknowledged version could not be read back, or read back other bytes.
    Lost {
        name: String,
        version: u64,
        why: String,
    },
}

impl std::fmt::Display for ObjectViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectViolation::WrongBytes { name, client, hash, at_ms } => write!(
                f,
                "client {client} read `{name}` at {at_ms} ms and got bytes with BLAKE3 {hash}, which no put of it wrote"
            ),
            ObjectViolation::WrongTag { name, tag, client, hash, at_ms } => write!(
                f,
                "client {client} read `{name}:{tag}` at {at_ms} ms and got bytes with BLAKE3 {hash}: no version any tag move named by then"
            ),
            ObjectViolation::Lost { name, version, why } => {
                write!(f, "`{name}@{version}` was acknowledged but {why}")
            }
        }
    }
}

/// What was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectsChecked {
    pub reads: usize,
    pub acknowledged: usize,
}

/// Checks `ops` (the workload's) and `final_reads` (a get of every acknowledged
/// `NAME@VERSION` after the faults).
pub fn check(ops: &[ObjOp], final_reads: &[ObjOp]) -> Result<ObjectsChecked, ObjectViolation> {
    let mut written: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<(&str, u64), &str> = BTreeMap::new();
    for op in ops {
        if let ObjCall::Put { hash } = &op.call {
            // A put whose outcome is unknown may have committed: its bytes may be read.
            if !matches!(op.outcome, ObjOutcome::Failed(_)) {
                written.entry(&op.name).or_default().insert(hash);
            }
            if let ObjOutcome::Stored { version } = op.outcome {
                acknowledged.insert((&op.name, version), hash);
            }
        }
    }
    // Tag moves that may have happened (acknowledged or unknown): (name, tag) -> (version,
    // invoked).
    let mut moves: BTreeMap<(&str, &str), Vec<(u64, u64)>> = BTreeMap::new();
    for op in ops {
        if let ObjCall::Tag { version, tag } = &op.call {
            if !matches!(op.outcome, ObjOutcome::Failed(_)) {
                moves
                    .entry((&op.name, tag))
                    .or_default()
                    .push((*version, op.invoked));
            }
        }
    }
    let mut checked = ObjectsChecked::default();
    for op in ops.iter().chain(final_reads) {
        if let (ObjCall::GetTag { tag }, ObjOutcome::Read { hash }) = (&op.call, &op.outcome) {
            let ended = op.completed.unwrap_or(u64::MAX);
            let named = moves
                .get(&(op.name.as_str(), tag.as_str()))
                .into_iter()
                .flatten()
                .any(|(v, invoked)| {
                    *invoked < ended
                        && acknowledged.get(&(op.name.as_str(), *v)) == Some(&hash.as_str())
                });
            if !named {
                return Err(ObjectViolation::WrongTag {
                    name: op.name.clone(),
                    tag: tag.clone(),
                    client: op.client,
                    hash: hash.clone(),
                    at_ms: op.invoked / 1_000_000,
                });
            }
        }
        if let (ObjCall::Get { .. } | ObjCall::GetTag { .. }, ObjOutcome::Read { hash }) =
            (&op.call, &op.outcome)
        {
            checked.reads += 1;
            let known = written
                .get(op.name.as_str())
                .is_some_and(|w| w.contains(hash.as_str()));
            if !known {
                return Err(ObjectViolation::WrongBytes {
                    name: op.name.clone(),
                    client: op.client,
                    hash: hash.clone(),
                    at_ms: op.invoked / 1_000_000,
                });
            }
        }
    }
    for ((name, version), hash) in &acknowledged {
        let read = final_reads.iter().find(|o| {
            o.name == *name
                && o.call
                    == ObjCall::Get {
                        version: Some(*version),
                    }
        });
        let why = match read.map(|o| &o.outcome) {
            None => Some("was not read back".to_string()),
            Some(ObjOutcome::Read { hash: got }) if got == hash => None,
            Some(ObjOutcome::Read { hash: got }) => Some(format!("read back as {got}, not {hash}")),
            Some(ObjOutcome::Failed(e)) => Some(format!("could not be read back: {e}")),
            Some(other) => Some(format!("read back as {other:?}")),
        };
        if let Some(why) = why {
            return Err(ObjectViolation::Lost {
                name: name.to_string(),
                version: *version,
                why,
            });
        }
        checked.acknowledged += 1;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(client: u32, name: &str, hash: &str, outcome: ObjOutcome) -> ObjOp {
        ObjOp {
            client,
            name: name.into(),
            call: ObjCall::Put { hash: hash.into() },
            invoked: 0,
            completed: Some(1),
            outcome,
        }
    }

    fn get(name: &str, version: Option<u64>, outcome: ObjOutcome) -> ObjOp {
        ObjOp {
            client: 9,
            name: name.into(),
            call: ObjCall::Get { version },
            invoked: 2_000_000,
            completed: Some(3_000_000),
            outcome,
        }
    }

    fn read(hash: &str) -> ObjOutcome {
        ObjOutcome::Read { hash: hash.into() }
    }

    #[test]
    fn reads_of_written_bytes_and_errors_pass() {
        let ops = vec![
            put(1, "o", "aa", ObjOutcome::Stored { version: 1 }),
            // Unknown: its bytes may be read.
            put(1, "o", "bb", ObjOutcome::Unknown),
            get("o", None, read("aa")),
            get("o", None, read("bb")),
            get(
                "o",
                None,
                ObjOutcome::Failed("a rotten chunk and no other replica".into()),
            ),
        ];
        let finals = vec![get("o", Some(1), read("aa"))];
        assert_eq!(
            check(&ops, &finals),
            Ok(ObjectsChecked {
                reads: 3,
                acknowledged: 1
            })
        );
    }

    #[test]
    fn a_wrong_byte_served_is_caught() {
        let ops = vec![
            put(1, "o", "aa", ObjOutcome::Stored { version: 1 }),
            get("o", None, read("rotten")),
        ];
        let finals = vec![get("o", Some(1), read("aa"))];
        let e = check(&ops, &finals).unwrap_err();
        assert!(
            matches!(e, ObjectViolation::WrongBytes { ref hash, .. } if hash == "rotten"),
            "{e}"
        );
        // Bytes of another object are wrong too.
        let ops = vec![
            put(1, "o", "aa", ObjOutcome::Stored { version: 1 }),
            put(1, "p", "cc", ObjOutcome::Stored { version: 1 }),
            get("o", None, read("cc")),
        ];
        assert!(check(&ops, &[]).is_err());
    }

    fn tag(name: &str, version: u64, invoked: u64, outcome: ObjOutcome) -> ObjOp {
        ObjOp {
            client: 2,
            name: name.into(),
            call: ObjCall::Tag {
                version,
                tag: "stable".into(),
            },
            invoked,
            completed: Some(invoked + 1),
            outcome,
        }
    }

    fn get_tag(name: &str, completed: u64, outcome: ObjOutcome) -> ObjOp {
        ObjOp {
            client: 3,
            name: name.into(),
            call: ObjCall::GetTag {
                tag: "stable".into(),
            },
            invoked: completed - 1,
            completed: Some(completed),
            outcome,
        }
    }

    #[test]
    fn a_tag_read_must_return_a_version_a_move_named_in_time() {
        let puts = vec![
            put(1, "o", "aa", ObjOutcome::Stored { version: 1 }),
            put(1, "o", "bb", ObjOutcome::Stored { version: 2 }),
        ];
        let finals = vec![get("o", Some(1), read("aa")), get("o", Some(2), read("bb"))];
        // Tagged 1 (acknowledged), then 2 (answer lost): either may be read after.
        let mut ops = puts.clone();
        ops.push(tag("o", 1, 10, ObjOutcome::Tagged));
        ops.push(tag("o", 2, 20, ObjOutcome::Unknown));
        ops.push(get_tag("o", 30, read("aa")));
        ops.push(get_tag("o", 31, read("bb")));
        assert!(check(&ops, &finals).is_ok());
        // Version 2 read through the tag before any move named it.
        let mut early = puts.clone();
        early.push(tag("o", 1, 10, ObjOutcome::Tagged));
        early.push(get_tag("o", 15, read("bb")));
        early.push(tag("o", 2, 20, ObjOutcome::Tagged));
        assert!(matches!(
            check(&early, &finals),
            Err(ObjectViolation::WrongTag { ref hash, .. }) if hash == "bb"
        ));
        // A move that failed named nothing.
        let mut failed = puts;
        failed.push(tag("o", 2, 10, ObjOutcome::Failed("refused".into())));
        failed.push(get_tag("o", 30, read("bb")));
        assert!(check(&failed, &finals).is_err());
    }

    #[test]
    fn an_acknowledged_version_lost_or_changed_is_caught() {
        let ops = vec![put(1, "o", "aa", ObjOutcome::Stored { version: 1 })];
        let lost = vec![get("o", Some(1), ObjOutcome::Failed("not found".into()))];
        assert!(matches!(
            check(&ops, &lost),
            Err(ObjectViolation::Lost { .. })
        ));
        assert!(matches!(
            check(&ops, &[]),
            Err(ObjectViolation::Lost { .. })
        ));
        // A failed put promised nothing: its version need not exist.
        let failed = vec![put(1, "o", "aa", ObjOutcome::Failed("refused".into()))];
        assert!(check(&failed, &[]).is_ok());
    }
}
