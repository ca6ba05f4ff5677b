//! The cluster state as format 1 stored it, frozen: these types must never change, because
//! format-1 snapshots, operator snapshot files and `RestoreStateV1` log entries are decoded
//! with them. [`ClusterState::into_current`] migrates to the current layout.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::ControllerId;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub revision: u64,
    pub kv: BTreeMap<String, KvEntry>,
    pub controllers: BTreeMap<ControllerId, ControllerRecord>,
    pub nodes: BTreeMap<String, NodeRecord>,
    pub node_events: VecDeque<NodeEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    pub incarnation: u64,
    pub api_addr: String,
    pub recorded_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeHealth {
    Ready,
    Suspect,
    Down,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// The agent's inventory document (JSON).
    pub inventory: Vec<u8>,
    pub inventory_digest: String,
    pub health: NodeHealth,
    pub health_since: u64,
    pub registered_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub revision: u64,
    pub node: String,
    pub from: Option<NodeHealth>,
    pub to: NodeHealth,
    pub reason: String,
}

impl From<NodeHealth> for crate::node::NodeHealth {
    fn from(h: NodeHealth) -> Self {
        match h {
            NodeHealth::Ready => crate::node::NodeHealth::Ready,
            NodeHealth::Suspect => crate::node::NodeHealth::Suspect,
            NodeHealth::Down => crate::node::NodeHealth::Down,
        }
    }
}

impl ClusterState {
    /// The current layout of this state. The cluster level starts at 1 (the level of
    /// format 1's commands); the leader raises it once every controller runs a newer build.
    pub fn into_current(self) -> super::ClusterState {
        let mut s = super::ClusterState {
            revision: self.revision,
            controllers: self
                .controllers
                .into_iter()
                .map(|(id, r)| {
                    (
                        id,
                        super::ControllerRecord {
                            incarnation: r.incarnation,
                            api_addr: r.api_addr,
                            recorded_at: r.recorded_at,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        for (key, e) in self.kv {
            s.insert_kv(
                key,
                crate::kv::KvEntry {
                    value: e.value.into(),
                    create_revision: e.create_revision,
                    mod_revision: e.mod_revision,
                    version: e.version,
                },
            );
        }
        for (id, n) in self.nodes {
            s.nodes.insert(
                id,
                crate::node::NodeRecord {
                    hostname: n.hostname,
                    labels: n.labels,
                    inventory: Inventory::from_json_lenient(&n.inventory),
                    registration_digest: n.inventory_digest,
                    health: n.health.into(),
                    health_since: n.health_since,
                    registered_at: n.registered_at,
                },
            );
        }
        s.node_events = self
            .node_events
            .into_iter()
            .map(|e| crate::node::NodeEvent {
                revision: e.revision,
                at_unix_ms: 0,
                node: e.node,
                from: e.from.map(Into::into),
                to: Some(e.to.into()),
                reason: e.reason,
            })
            .collect();
        s
    }
}
