//! The replicated cluster state and its deterministic transition function.
//!
//! `ClusterState` is what the Raft state machine holds and what snapshots contain. It is
//! plain data with ordered maps, so its encoding (and therefore [`ClusterState::digest`])
//! is identical on every controller that applied the same log prefix. Later issues add
//! agents, jobs, placements and objects as new fields (bumping the codec version).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::command::{Command, CommandResult};
use crate::kv::KvEntry;
use crate::node::{NodeEvent, NodeHealth, NodeRecord, MAX_NODE_EVENTS};
use crate::ControllerId;

/// What the cluster remembers about one controller's data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Random id made when the controller's data dir was created.
    pub incarnation: u64,
    /// Address of its admin/agent API, as it last registered.
    pub api_addr: String,
    /// Cluster revision at which it was first recorded.
    pub recorded_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Revision of the last change; grows by one with every change, like etcd's revision.
    pub revision: u64,
    /// The metadata key-value namespace.
    pub kv: BTreeMap<String, KvEntry>,
    /// Incarnation of each controller's data dir, used to refuse a wiped member.
    pub controllers: BTreeMap<ControllerId, ControllerRecord>,
    /// Agents' machines by node id.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Health changes, oldest first, at most [`MAX_NODE_EVENTS`].
    pub node_events: VecDeque<NodeEvent>,
}

/// Whether applying produced a change that takes a revision.
fn result_changes(result: &CommandResult) -> bool {
    match result {
        CommandResult::KvPut { .. }
        | CommandResult::KvDeleted { .. }
        | CommandResult::ControllerRegistered
        | CommandResult::ControllerForgotten
        | CommandResult::Restored { .. }
        | CommandResult::NodeRegistered { .. }
        | CommandResult::NodeHealthSet { changed: true, .. } => true,
        CommandResult::Nothing
        | CommandResult::RevisionMismatch { .. }
        | CommandResult::IncarnationConflict { .. }
        | CommandResult::NodeHealthSet { changed: false, .. }
        | CommandResult::UnknownNode { .. }
        | CommandResult::Batch(_) => false,
    }
}

impl ClusterState {
    /// Applies one committed command. Pure and deterministic: every change takes the next
    /// revision; a refused compare-and-set changes nothing.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        let revision = self.revision + 1;
        let result = self.apply_at(revision, command);
        match &result {
            CommandResult::Restored { revision, .. } => self.revision = *revision,
            r if result_changes(r) => self.revision = revision,
            _ => {}
        }
        result
    }

    fn apply_at(&mut self, revision: u64, command: Command) -> CommandResult {
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
                let controllers = std::mem::take(&mut self.controllers);
                *self = *state;
                self.controllers = controllers;
                // The restored revision may be older: never let revisions go back.
                let revision = revision.max(self.revision + 1);
                CommandResult::Restored { keys, revision }
            }
            Command::RegisterNode {
                node,
                hostname,
                labels,
                inventory,
                inventory_digest,
            } => {
                match self.nodes.get_mut(&node) {
                    Some(rec) => {
                        rec.hostname = hostname;
                        rec.labels = labels;
                        rec.inventory = inventory;
                        rec.inventory_digest = inventory_digest;
                    }
                    None => {
                        self.nodes.insert(
                            node.clone(),
                            NodeRecord {
                                hostname,
                                labels,
                                inventory,
                                inventory_digest,
                                health: NodeHealth::Ready,
                                health_since: revision,
                                registered_at: revision,
                            },
                        );
                        self.push_event(NodeEvent {
                            revision,
                            node,
                            from: None,
                            to: NodeHealth::Ready,
                            reason: "registered".into(),
                        });
                    }
                }
                CommandResult::NodeRegistered { revision }
            }
            Command::SetNodeHealth {
                node,
                health,
                reason,
            } => match self.nodes.get_mut(&node) {
                None => CommandResult::UnknownNode { node },
                // Nothing changes: report the current revision, take none.
                Some(rec) if rec.health == health => CommandResult::NodeHealthSet {
                    changed: false,
                    revision: revision - 1,
                },
                Some(rec) => {
                    let from = rec.health;
                    rec.health = health;
                    rec.health_since = revision;
                    self.push_event(NodeEvent {
                        revision,
                        node,
                        from: Some(from),
                        to: health,
                        reason,
                    });
                    CommandResult::NodeHealthSet {
                        changed: true,
                        revision,
                    }
                }
            },
            Command::Batch(commands) => {
                // Each inner command takes its own revision through `apply`; the outer
                // `apply` sees `Batch` as "no change" and leaves the revision alone.
                CommandResult::Batch(commands.into_iter().map(|c| self.apply(c)).collect())
            }
        }
    }

    fn push_event(&mut self, event: NodeEvent) {
        if self.node_events.len() >= MAX_NODE_EVENTS {
            self.node_events.pop_front();
        }
        self.node_events.push_back(event);
    }

    /// Approximate encoded size in bytes.
    pub fn approx_size(&self) -> usize {
        self.kv
            .iter()
            .map(|(k, e)| k.len() + e.value.len() + 32)
            .sum::<usize>()
            + self
                .controllers
                .values()
                .map(|r| r.api_addr.len() + 32)
                .sum::<usize>()
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
        assert_eq!(e.value, b"3");
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
        assert_eq!(s.kv["k"].value, b"2");
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
            inventory: b"{}".to_vec(),
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
        let events: Vec<_> = s.node_events.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(
            events,
            [
                (None, NodeHealth::Ready),
                (Some(NodeHealth::Ready), NodeHealth::Down)
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
        let mut live = ClusterState::default();
        for i in 0..5 {
            live.apply(put(&format!("live{i}"), "v", None));
        }
        live.apply(Command::RegisterController {
            controller: 1,
            incarnation: 7,
            api_addr: "x".into(),
        });
        let before = live.revision;
        let r = live.apply(Command::RestoreState {
            state: Box::new(old),
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
        assert_eq!(
            live.apply(put("after", "1", None)),
            CommandResult::KvPut {
                revision: before + 2
            }
        );
    }
}
