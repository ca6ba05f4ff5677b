//! Shared state of the API services and the write/read paths they all use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use steward_core::{Command, CommandResult};
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::MAX_API_MESSAGE_BYTES;
use tonic::transport::Channel;

use super::error::ApiError;
use super::proposer::Proposer;
use super::{FORWARD_HOPS_HEADER, MAX_FORWARD_HOPS};
use crate::config::RaftTuning;
use crate::network::PeerShared;
use crate::store::StateView;
use crate::typ::{NodeId, Raft};

/// Longest a write waits to be committed and applied.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a linearizable read waits for the leader to confirm with a quorum.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ApiContext {
    pub id: NodeId,
    pub raft: Raft,
    pub view: StateView,
    pub peers: Arc<PeerShared>,
    pub cluster_name: String,
    pub tuning: RaftTuning,
    pub(crate) transferring: AtomicBool,
    pub(crate) holds: Arc<crate::elections::ElectionHolds>,
    proposer: Proposer,
    /// Agents' heartbeats (leader only).
    pub liveness: Arc<super::liveness::LivenessTracker>,
}

impl ApiContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raft: Raft,
        view: StateView,
        peers: Arc<PeerShared>,
        cluster_name: String,
        tuning: RaftTuning,
        proposer: Proposer,
        liveness: Arc<super::liveness::LivenessTracker>,
        holds: Arc<crate::elections::ElectionHolds>,
    ) -> Arc<Self> {
        Arc::new(ApiContext {
            id: peers.id,
            raft,
            view,
            peers,
            cluster_name,
            tuning,
            transferring: AtomicBool::new(false),
            holds,
            proposer,
            liveness,
        })
    }

    /// Proposes `command` here (batched with concurrent writes); `NotLeader` tells the
    /// caller to forward.
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResult), ApiError> {
        if self.transferring.load(Ordering::Acquire) {
            return Err(ApiError::Transferring);
        }
        self.proposer.propose(command).await
    }

    /// Waits until the local state may be read linearizably (this controller is leader,
    /// confirmed by a quorum, and has applied up to the read point).
    pub async fn linearizable_barrier(&self) -> Result<(), ApiError> {
        match tokio::time::timeout(READ_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ApiError::Timeout(READ_TIMEOUT)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ApiError::from_read(self.id, e)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// API address of controller `id`: its registration, else its membership entry.
    pub fn api_addr_of(&self, id: NodeId) -> Option<String> {
        let applied = self.view.read();
        if let Some(rec) = applied.state.controllers.get(&id) {
            if !rec.api_addr.is_empty() {
                return Some(rec.api_addr.clone());
            }
        }
        applied
            .last_membership
            .membership()
            .get_node(&id)
            .map(|n| n.api_addr.clone())
            .filter(|a| !a.is_empty())
    }

    /// An admin client for the leader, to forward a call that arrived with `hops` hops.
    pub fn leader_client(
        &self,
        leader: Option<NodeId>,
        hops: u32,
    ) -> Result<(AdminClient<Channel>, u32), ApiError> {
        let leader = leader.ok_or(ApiError::NoLeader)?;
        if hops >= MAX_FORWARD_HOPS {
            return Err(ApiError::TooManyHops(hops));
        }
        if leader == self.id {
            return Err(ApiError::NoLeader);
        }
        let addr = self
            .api_addr_of(leader)
            .ok_or_else(|| ApiError::LeaderUnreachable {
                leader,
                addr: "?".into(),
                message: "its API address is not registered yet".into(),
            })?;
        let ch = self
            .peers
            .channel(&addr)
            .map_err(|e| ApiError::LeaderUnreachable {
                leader,
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        let client = AdminClient::new(ch)
            .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
        Ok((client, hops + 1))
    }
}

/// Hops a received call has already made.
pub fn hops_of<T>(request: &tonic::Request<T>) -> u32 {
    request
        .metadata()
        .get(FORWARD_HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Wraps `msg` for forwarding with `hops` recorded.
pub fn forwarded<T>(msg: T, hops: u32) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = hops.to_string().parse() {
        req.metadata_mut().insert(FORWARD_HOPS_HEADER, v);
    }
    req.set_timeout(WRITE_TIMEOUT + Duration::from_secs(1));
    req
}
