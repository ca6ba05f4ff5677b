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
    /// Replace the whole state with a restored snapshot (operator snapshot restore).
    RestoreState { state: Box<ClusterState> },
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
    },
}
