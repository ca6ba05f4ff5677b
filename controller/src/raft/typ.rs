//! The one Raft type declaration of Steward, and the aliases every other module uses.
//! No other module spells out `openraft::X<...>` with type parameters.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use steward_core::{Command, CommandResult};

/// How to reach one controller. Kept in Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerNode {
    /// Address of its Raft service.
    pub raft_addr: String,
    /// Address of its admin API; empty for founding members until they register.
    pub api_addr: String,
}

impl fmt::Display for ControllerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// Steward's Raft configuration: commands in, command results out, controllers as nodes.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = ControllerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, ControllerNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ControllerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ControllerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, ControllerNode>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, ControllerNode, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, ControllerNode>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, ControllerNode>;
pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, ControllerNode>;
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
pub type LogFlushed = openraft::storage::LogFlushed<TypeConfig>;
