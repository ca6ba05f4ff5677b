//! The cluster state as format 2 stored it, frozen: format-2 snapshots and operator snapshot
//! files are decoded with this layout. [`ClusterState::into_current`] migrates it to the
//! current one (format 3 added jobs, allocations and node scheduling, all empty here).
//!
//! The field types are today's (KV entries, controllers, nodes, events, sessions, staged
//! restores), which format 3 did not change. A later format that changes one of them must
//! freeze that type's format-2 layout here first.

use std::collections::BTreeMap;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use super::{ClientSession, ControllerRecord, PendingRestore};
use crate::kv::KvEntry;
use crate::node::{NodeEvent, NodeRecord};
use crate::ControllerId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterState {
    pub revision: u64,
    #[serde(deserialize_with = "super::imbl_de::ord_map")]
    pub kv: OrdMap<String, KvEntry>,
    pub controllers: BTreeMap<ControllerId, ControllerRecord>,
    #[serde(deserialize_with = "super::imbl_de::ord_map")]
    pub nodes: OrdMap<String, NodeRecord>,
    #[serde(deserialize_with = "super::imbl_de::vector")]
    pub node_events: Vector<NodeEvent>,
    pub cluster_level: u32,
    pub clock_unix_ms: u64,
    #[serde(deserialize_with = "super::imbl_de::ord_map")]
    pub sessions: OrdMap<u64, ClientSession>,
    pub pending_restore: Option<PendingRestore>,
}

impl ClusterState {
    /// The current layout: no jobs, allocations or scheduling facts yet.
    pub fn into_current(self) -> super::ClusterState {
        super::ClusterState {
            revision: self.revision,
            kv: self.kv,
            controllers: self.controllers,
            nodes: self.nodes,
            node_events: self.node_events,
            cluster_level: self.cluster_level,
            clock_unix_ms: self.clock_unix_ms,
            sessions: self.sessions,
            pending_restore: self.pending_restore,
            ..Default::default()
        }
    }
}
