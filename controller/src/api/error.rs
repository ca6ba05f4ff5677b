//! Errors of the admin and agent APIs, and their exhaustive mapping to gRPC statuses.

use std::time::Duration;

use tonic::Status;

use crate::typ::{CheckIsLeaderError, ClientWriteError, NodeId, RaftError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// This controller is not the leader; the caller forwards to `leader`.
    #[error("controller {responder} is not the leader")]
    NotLeader {
        responder: NodeId,
        leader: Option<NodeId>,
    },
    #[error("no leader is elected right now (an election is running, or a quorum of controllers is down); retry")]
    NoLeader,
    #[error("quorum lost: {0}; at least a majority of voters must be up")]
    QuorumLost(String),
    #[error(
        "not committed within {0:?}: a quorum may be lost; the write may still be applied later"
    )]
    Timeout(Duration),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("forwarded {0} times without reaching the leader; leadership is changing, retry")]
    TooManyHops(u32),
    #[error("leader {leader} at {addr} is unreachable: {message}")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        message: String,
    },
    #[error("leadership transfer in progress; retry in a moment")]
    Transferring,
    #[error("controller is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Whether a client may retry the same call (possibly on another controller).
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::NotLeader { .. }
            | ApiError::NoLeader
            | ApiError::QuorumLost(_)
            | ApiError::Timeout(_)
            | ApiError::TooManyHops(_)
            | ApiError::LeaderUnreachable { .. }
            | ApiError::Transferring
            | ApiError::ShuttingDown => true,
            ApiError::InvalidArgument(_)
            | ApiError::FailedPrecondition(_)
            | ApiError::NotFound(_)
            | ApiError::Internal(_) => false,
        }
    }

    pub fn to_status(&self) -> Status {
        let msg = self.to_string();
        match self {
            ApiError::NotLeader { .. }
            | ApiError::NoLeader
            | ApiError::QuorumLost(_)
            | ApiError::TooManyHops(_)
            | ApiError::LeaderUnreachable { .. }
            | ApiError::Transferring
            | ApiError::ShuttingDown => Status::unavailable(msg),
            ApiError::Timeout(_) => Status::deadline_exceeded(msg),
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }

    pub(crate) fn from_write(responder: NodeId, e: RaftError<ClientWriteError>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ApiError::NotLeader {
                responder,
                leader: f.leader_id,
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(_) => ApiError::ShuttingDown,
        }
    }

    pub(crate) fn from_read(responder: NodeId, e: RaftError<CheckIsLeaderError>) -> Self {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => ApiError::NotLeader {
                responder,
                leader: f.leader_id,
            },
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                ApiError::QuorumLost(q.to_string())
            }
            RaftError::Fatal(_) => ApiError::ShuttingDown,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}
