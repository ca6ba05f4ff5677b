//! Commands: the only way the replicated cluster state changes.
//!
//! A command is proposed to the Raft leader, committed to a quorum's log, then applied by
//! every controller with [`crate::ClusterState::apply`]. New kinds of state (agents, jobs,
//! placements, objects) arrive as new variants; existing variants never change meaning,
//! because old log entries are replayed by new binaries.

use serde::{Deserialize, Serialize};

use crate::state::ClusterState;
use crate::ControllerId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write `value` under `key`. With `expected_revision`, only if the key's current
    /// `mod_revision` equals it (0: only if the key does not exist).
    KvPut {
        key: String,
        value: Vec<u8>,
        expected_revision: Option<u64>,
    },
    /// Delete `key`; with `expected_revision`, only if its `mod_revision` equals it.
    KvDelete {
        key: String,
        expected_revision: Option<u64>,
    },
    /// A controller registers the incarnation of its data directory and its API address.
    /// The first incarnation reported for an id is kept; a later, different one is refused
    /// (that controller's data dir was wiped). The same incarnation may update the address.
    RegisterController {
        controller: ControllerId,
        incarnation: u64,
        api_addr: String,
    },
    /// Drop the incarnation record of a controller removed from the group, so that its id
    /// could be reused deliberately.
    ForgetController { controller: ControllerId },
    /// Replace the cluster's data with a restored snapshot (operator snapshot restore). The
    /// live controllers' incarnation records are kept, and the revision keeps growing.
    RestoreState { state: Box<ClusterState> },
    /// An agent registers its machine, or re-registers it after its inventory changed.
    /// A new node starts `Ready`.
    RegisterNode {
        node: String,
        hostname: String,
        labels: std::collections::BTreeMap<String, String>,
        inventory: Vec<u8>,
        inventory_digest: String,
    },
    /// The leader's failure detector changes a node's health, with the reason.
    SetNodeHealth {
        node: String,
        health: crate::node::NodeHealth,
        reason: String,
    },
    /// Several commands proposed together as one log entry (the controller batches
    /// concurrent proposals so that they share one Raft round and one fsync). Applied in
    /// order; each gets its own result and revision.
    Batch(Vec<Command>),
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::KvPut { .. } => "kv_put",
            Command::KvDelete { .. } => "kv_delete",
            Command::RegisterController { .. } => "register_controller",
            Command::ForgetController { .. } => "forget_controller",
            Command::RestoreState { .. } => "restore_state",
            Command::RegisterNode { .. } => "register_node",
            Command::SetNodeHealth { .. } => "set_node_health",
            Command::Batch(_) => "batch",
        }
    }

    /// Approximate encoded size in bytes, for bounding batches and messages.
    pub fn approx_size(&self) -> usize {
        const OVERHEAD: usize = 32;
        OVERHEAD
            + match self {
                Command::KvPut { key, value, .. } => key.len() + value.len(),
                Command::KvDelete { key, .. } => key.len(),
                Command::RegisterController { api_addr, .. } => api_addr.len(),
                Command::ForgetController { .. } => 0,
                Command::RestoreState { state } => state.approx_size(),
                Command::RegisterNode {
                    node,
                    hostname,
                    labels,
                    inventory,
                    inventory_digest,
                } => {
                    node.len()
                        + hostname.len()
                        + inventory.len()
                        + inventory_digest.len()
                        + labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                }
                Command::SetNodeHealth { node, reason, .. } => node.len() + reason.len(),
                Command::Batch(commands) => commands.iter().map(Command::approx_size).sum(),
            }
    }
}

/// What applying one command produced. Returned to the proposer; deterministic on every
/// controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A log entry with no command (leader blank entry or membership change).
    Nothing,
    KvPut {
        revision: u64,
    },
    KvDeleted {
        /// Whether the key existed.
        existed: bool,
        revision: u64,
    },
    /// A compare-and-set precondition failed; nothing changed.
    RevisionMismatch {
        key: String,
        expected: u64,
        /// The key's current `mod_revision`, 0 when it does not exist.
        actual: u64,
    },
    ControllerRegistered,
    /// The id is already recorded under another incarnation.
    IncarnationConflict {
        controller: ControllerId,
        recorded: u64,
        reported: u64,
    },
    ControllerForgotten,
    Restored {
        keys: u64,
        revision: u64,
    },
    NodeRegistered {
        revision: u64,
    },
    /// Health recorded; `changed` is false when it already was that.
    NodeHealthSet {
        changed: bool,
        revision: u64,
    },
    UnknownNode {
        node: String,
    },
    /// Results of a [`Command::Batch`], in order.
    Batch(Vec<CommandResult>),
}
