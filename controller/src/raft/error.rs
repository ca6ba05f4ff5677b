//! Errors of the Raft layer, as the API and the control loops see them. Each says whether
//! the command may have been applied: a caller may retry a command that certainly was not
//! (`may_have_applied` is false), and must report the others as "outcome unknown".

use std::time::Duration;

use crate::raft::typ::{CheckIsLeaderError, ClientWriteError, NodeId, RaftError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// This controller does not lead; nothing was proposed. The caller forwards to `leader`.
    #[error("controller {responder} is not the leader")]
    NotLeader {
        responder: NodeId,
        leader: Option<NodeId>,
    },
    #[error("quorum lost: {0}; at least a majority of voters must be up")]
    QuorumLost(String),
    /// Proposed, and not known to be committed within the deadline.
    #[error(
        "outcome unknown: not committed within {0:?} (a quorum may be lost); the write may still be applied"
    )]
    Timeout(Duration),
    /// Proposed, and then the answer was lost (the controller is stopping).
    #[error("outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
    /// A leadership transfer is running; nothing was proposed.
    #[error("leadership transfer in progress; retry in a moment")]
    Transferring,
    /// The controller is stopping; nothing was proposed.
    #[error("controller is shutting down")]
    ShuttingDown,
    /// Refused as asked (a membership change openraft refuses, a transfer to a lagging
    /// controller); nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The command's kind is newer than the cluster's feature level; nothing was proposed.
    #[error("{kind} needs cluster feature level {needs}; the cluster is at level {cluster_level} (a controller runs an older build; upgrade it)")]
    FeatureNotEnabled {
        kind: &'static str,
        needs: u32,
        cluster_level: u32,
    },
    /// The request names a controller that is not a member.
    #[error("{0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether the command may have been applied (so a blind retry could apply it twice).
    pub fn may_have_applied(&self) -> bool {
        match self {
            Error::Timeout(_) | Error::OutcomeUnknown(_) | Error::Internal(_) => true,
            Error::NotLeader { .. }
            | Error::QuorumLost(_)
            | Error::Transferring
            | Error::ShuttingDown
            | Error::Refused(_)
            | Error::FeatureNotEnabled { .. }
            | Error::NotFound(_) => false,
        }
    }

    /// openraft's answer to a write proposed here. `ForwardToLeader` means the entry was not
    /// appended, or was appended and then truncated by a new leader (so it can never
    /// commit): either way it was not applied.
    pub(crate) fn from_write(responder: NodeId, e: RaftError<ClientWriteError>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
                responder,
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Error::Refused(e.to_string())
            }
            RaftError::Fatal(f) => Error::OutcomeUnknown(format!("raft stopped: {f}")),
        }
    }

    pub(crate) fn from_read(responder: NodeId, e: RaftError<CheckIsLeaderError>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => Error::NotLeader {
                responder,
                leader: f.leader_id,
            },
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                Error::QuorumLost(q.to_string())
            }
            RaftError::Fatal(_) => Error::ShuttingDown,
        }
    }
}
