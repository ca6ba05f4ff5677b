//! The agent-facing control API (`steward.v1.AgentControl`): leader hints, registration
//! (a Raft write, only when the inventory changes) and heartbeats (leader memory only).

use std::sync::Arc;

use steward_core::node::validate_registration;
use steward_core::{Command, CommandResult};
use steward_proto::v1::agent_control_server::AgentControl;
use steward_proto::v1::{
    HeartbeatReply, HeartbeatRequest, LeaderHintReply, LeaderHintRequest, RegisterNodeReply,
    RegisterNodeRequest,
};
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;

pub struct AgentControlService {
    ctx: Arc<ApiContext>,
}

impl AgentControlService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        AgentControlService { ctx }
    }

    /// Agents talk to the leader only; a follower points them at it.
    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.raft.is_leader() {
            return Ok(());
        }
        let addr = self
            .ctx
            .raft
            .current_leader()
            .and_then(|l| self.ctx.raft.api_addr_of(l))
            .unwrap_or_default();
        Err(ApiError::from(self.ctx.raft.not_leader())
            .to_status()
            .tap_message(format!(
                "not the leader; ask LeaderHint (leader at `{addr}`)"
            )))
    }
}

/// Replaces a status's message, keeping its code and metadata.
trait TapMessage {
    fn tap_message(self, message: String) -> Status;
}

impl TapMessage for Status {
    fn tap_message(self, message: String) -> Status {
        Status::with_metadata(self.code(), message, self.metadata().clone())
    }
}

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    async fn leader_hint(
        &self,
        _request: Request<LeaderHintRequest>,
    ) -> Result<Response<LeaderHintReply>, Status> {
        let m = self.ctx.raft.metrics();
        Ok(Response::new(LeaderHintReply {
            leader_id: m.current_leader,
            leader_api_addr: m
                .current_leader
                .and_then(|l| self.ctx.raft.api_addr_of(l))
                .unwrap_or_default(),
            term: m.current_term,
        }))
    }

    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        let req = request.into_inner();
        validate_registration(&req.node_id, &req.inventory_json)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        self.require_leader()?;
        let node = req.node_id.clone();
        let command = Command::RegisterNode {
            node: req.node_id,
            hostname: req.hostname,
            labels: req.labels.into_iter().collect(),
            inventory: req.inventory_json,
            inventory_digest: req.inventory_digest,
        };
        match self
            .ctx
            .raft
            .propose(command)
            .await
            .map_err(ApiError::from)?
        {
            (_, CommandResult::NodeRegistered { revision }) => {
                self.ctx.liveness.heartbeat(&node, None);
                tracing::info!(node = %node, revision, "node registered");
                Ok(Response::new(RegisterNodeReply { revision }))
            }
            (_, other) => Err(ApiError::Internal(format!("unexpected result {other:?}")).into()),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let req = request.into_inner();
        self.require_leader()?;
        let known_digest = self
            .ctx
            .raft
            .view()
            .read()
            .state
            .nodes
            .get(&req.node_id)
            .map(|n| n.inventory_digest.clone());
        match known_digest {
            None => Ok(Response::new(HeartbeatReply {
                register_again: true,
            })),
            Some(digest) => {
                self.ctx.liveness.heartbeat(&req.node_id, req.telemetry);
                Ok(Response::new(HeartbeatReply {
                    register_again: digest != req.inventory_digest,
                }))
            }
        }
    }
}
