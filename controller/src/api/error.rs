//! Errors of the admin and agent APIs, and their exhaustive mapping to gRPC statuses.
//!
//! The status says whether a write may have been applied: UNAVAILABLE means it certainly
//! was not (and carries [`NOT_APPLIED_HEADER`]), so a client may retry anywhere;
//! DEADLINE_EXCEEDED means the outcome is unknown, and only a retry with the same request
//! id is safe.

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::raft::typ::NodeId;
use crate::raft::Error as RaftError;

/// Metadata on an UNAVAILABLE answer: nothing was applied, a retry is safe.
pub const NOT_APPLIED_HEADER: &str = "x-steward-not-applied";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Raft(#[from] RaftError),
    #[error("no leader is elected right now (an election is running, or a quorum of controllers is down); retry")]
    NoLeader,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("forwarded {0} times without reaching the leader; leadership is changing, retry")]
    TooManyHops(u32),
    /// The leader could not be reached; the call was not sent.
    #[error("leader {leader} at {addr} is unreachable: {message}")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        message: String,
    },
    /// A write was forwarded to the leader and its answer was lost.
    #[error("outcome unknown: the write was forwarded to leader {leader} at {addr} and no answer came back ({message}); it may or may not have been applied")]
    ForwardedOutcomeUnknown {
        leader: NodeId,
        addr: String,
        message: String,
    },
    /// A limit that frees up with time was reached; nothing was applied.
    #[error("{0}")]
    Overloaded(String),
    /// The call was given up before anything took effect (the message says why); a retry
    /// is safe.
    #[error("{0}")]
    NotApplied(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn to_status(&self) -> Status {
        let msg = self.to_string();
        let not_applied = |msg: String| {
            let mut s = Status::unavailable(msg);
            s.metadata_mut()
                .insert(NOT_APPLIED_HEADER, MetadataValue::from_static("1"));
            s
        };
        match self {
            ApiError::Raft(e) => match e {
                RaftError::NotLeader { .. }
                | RaftError::QuorumLost(_)
                | RaftError::Transferring
                | RaftError::ShuttingDown => not_applied(msg),
                RaftError::Timeout(_) | RaftError::OutcomeUnknown(_) => {
                    Status::deadline_exceeded(msg)
                }
                RaftError::Refused(_) | RaftError::FeatureNotEnabled { .. } => {
                    Status::failed_precondition(msg)
                }
                RaftError::NotFound(_) => Status::not_found(msg),
                RaftError::Internal(_) => Status::internal(msg),
            },
            ApiError::NoLeader
            | ApiError::TooManyHops(_)
            | ApiError::LeaderUnreachable { .. }
            | ApiError::Overloaded(_)
            | ApiError::NotApplied(_) => not_applied(msg),
            ApiError::ForwardedOutcomeUnknown { .. } => Status::deadline_exceeded(msg),
            ApiError::InvalidArgument(_) => Status::invalid_argument(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::Internal(_) => Status::internal(msg),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        e.to_status()
    }
}

/// Whether a status a client received says that nothing was applied.
pub fn status_not_applied(status: &Status) -> bool {
    status.metadata().get(NOT_APPLIED_HEADER).is_some()
}
