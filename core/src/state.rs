//! The replicated cluster state and its deterministic transition function.
//!
//! `ClusterState` is what the Raft state machine holds and what snapshots contain. It is
//! plain data with ordered maps, so its encoding (and therefore [`ClusterState::digest`])
//! is identical on every controller that applied the same log prefix. Later issues add
//! agents, jobs, placements and objects as new fields (bumping the codec version).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::command::{Command, CommandResult};
use crate::kv::KvEntry;
use crate::ControllerId;

/// What the cluster remembers about one controller's data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Random id made when the controller's data dir was created.
    pub incarnation: u64,
    /// Address of its admin/agent API, as it last registered.
    pub api_addr: String,
    /// Revision (log index) at which it was first recorded.
    pub recorded_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The metadata key-value namespace.
    pub kv: BTreeMap<String, KvEntry>,
    /// Incarnation of each controller's data dir, used to refuse a wiped member.
    pub controllers: BTreeMap<ControllerId, ControllerRecord>,
}

impl ClusterState {
    /// Applies one committed command at log index `revision`. Pure and deterministic.
    pub fn apply(&mut self, revision: u64, command: Command) -> CommandResult {
        match command {
            Command::KvPut {
                key,
                value,
                expected_revision,
            } => {
                let current = self.kv.get(&key);
                if let Some(expected) = expected_revision {
                    let actual = current.map_or(0, |e| e.mod_revision);
                    if actual != expected {
                        return CommandResult::RevisionMismatch {
                            key,
                            expected,
                            actual,
                        };
                    }
                }
                let entry = match current {
                    Some(old) => KvEntry {
                        value,
                        create_revision: old.create_revision,
                        mod_revision: revision,
                        version: old.version + 1,
                    },
                    None => KvEntry {
                        value,
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                    },
                };
                self.kv.insert(key, entry);
                CommandResult::KvPut { revision }
            }
            Command::KvDelete {
                key,
                expected_revision,
            } => {
                if let Some(expected) = expected_revision {
                    let actual = self.kv.get(&key).map_or(0, |e| e.mod_revision);
                    if actual != expected {
                        return CommandResult::RevisionMismatch {
                            key,
                            expected,
                            actual,
                        };
                    }
                }
                let existed = self.kv.remove(&key).is_some();
                CommandResult::KvDeleted { existed, revision }
            }
            Command::RegisterController {
                controller,
                incarnation,
                api_addr,
            } => match self.controllers.get_mut(&controller) {
                Some(rec) if rec.incarnation != incarnation => CommandResult::IncarnationConflict {
                    controller,
                    recorded: rec.incarnation,
                    reported: incarnation,
                },
                Some(rec) => {
                    rec.api_addr = api_addr;
                    CommandResult::ControllerRegistered
                }
                None => {
                    self.controllers.insert(
                        controller,
                        ControllerRecord {
                            incarnation,
                            api_addr,
                            recorded_at: revision,
                        },
                    );
                    CommandResult::ControllerRegistered
                }
            },
            Command::ForgetController { controller } => {
                self.controllers.remove(&controller);
                CommandResult::ControllerForgotten
            }
            Command::RestoreState { state } => {
                let keys = state.kv.len() as u64;
                *self = *state;
                CommandResult::Restored { keys }
            }
        }
    }

    /// Entries whose key starts with `prefix`, strictly after `start_after`, at most `limit`.
    pub fn kv_list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a String, &'a KvEntry)> + 'a {
        use std::ops::Bound;
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.kv
            .range::<String, _>((lower, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .take(limit)
    }

    /// Versioned binary encoding of the whole state.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode("cluster state", self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode("cluster state", bytes)
    }

    /// BLAKE3 digest of the encoded state, hex. Equal on controllers that applied the same
    /// log prefix; the tests compare it across controllers.
    pub fn digest(&self) -> Result<String, CodecError> {
        Ok(blake3::hash(&self.encode()?).to_hex().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, cas: Option<u64>) -> Command {
        Command::KvPut {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            expected_revision: cas,
        }
    }

    #[test]
    fn revisions_and_compare_and_set() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(5, put("a", "1", Some(0))),
            CommandResult::KvPut { revision: 5 }
        );
        // Creating again with cas=0 fails: the key exists.
        assert_eq!(
            s.apply(6, put("a", "2", Some(0))),
            CommandResult::RevisionMismatch {
                key: "a".into(),
                expected: 0,
                actual: 5
            }
        );
        assert_eq!(
            s.apply(7, put("a", "3", Some(5))),
            CommandResult::KvPut { revision: 7 }
        );
        let e = &s.kv["a"];
        assert_eq!((e.create_revision, e.mod_revision, e.version), (5, 7, 2));
        assert_eq!(e.value, b"3");
        assert_eq!(
            s.apply(
                8,
                Command::KvDelete {
                    key: "a".into(),
                    expected_revision: Some(5)
                }
            ),
            CommandResult::RevisionMismatch {
                key: "a".into(),
                expected: 5,
                actual: 7
            }
        );
        assert_eq!(
            s.apply(
                9,
                Command::KvDelete {
                    key: "a".into(),
                    expected_revision: Some(7)
                }
            ),
            CommandResult::KvDeleted {
                existed: true,
                revision: 9
            }
        );
        assert!(s.kv.is_empty());
    }

    #[test]
    fn incarnation_first_report_wins() {
        let mut s = ClusterState::default();
        let rec = |i| Command::RegisterController {
            controller: 2,
            incarnation: i,
            api_addr: format!("127.0.0.1:{i}"),
        };
        assert_eq!(s.apply(1, rec(11)), CommandResult::ControllerRegistered);
        assert_eq!(s.apply(2, rec(11)), CommandResult::ControllerRegistered);
        assert_eq!(
            s.apply(3, rec(12)),
            CommandResult::IncarnationConflict {
                controller: 2,
                recorded: 11,
                reported: 12
            }
        );
        s.apply(4, Command::ForgetController { controller: 2 });
        assert_eq!(s.apply(5, rec(12)), CommandResult::ControllerRegistered);
        assert_eq!(s.controllers[&2].incarnation, 12);
        assert_eq!(s.controllers[&2].api_addr, "127.0.0.1:12");
    }

    #[test]
    fn list_by_prefix_pages() {
        let mut s = ClusterState::default();
        for (i, k) in ["a/1", "a/2", "a/3", "b/1"].iter().enumerate() {
            s.apply(i as u64 + 1, put(k, "v", None));
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
            s.apply(1, put("x", "1", None));
            s.apply(
                2,
                Command::RegisterController {
                    controller: 1,
                    incarnation: 9,
                    api_addr: "a".into(),
                },
            );
        }
        assert_eq!(a.digest().expect("digest"), b.digest().expect("digest"));
        b.apply(3, put("y", "2", None));
        assert_ne!(a.digest().expect("digest"), b.digest().expect("digest"));
        let back = ClusterState::decode(&b.encode().expect("encode")).expect("decode");
        assert_eq!(back, b);
        let restored = CommandResult::Restored { keys: 2 };
        assert_eq!(
            a.apply(
                4,
                Command::RestoreState {
                    state: Box::new(b.clone())
                }
            ),
            restored
        );
        assert_eq!(a, b);
    }
}
