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
}

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    async fn leader_hint(
        &self,
        _request: Request<LeaderHintRequest>,
    ) -> Result<Response<LeaderHintReply>, Status> {
        let (leader, term) = {
            let m = self.ctx.raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        Ok(Response::new(LeaderHintReply {
            leader_id: leader,
            leader_api_addr: leader
                .and_then(|l| self.ctx.api_addr_of(l))
                .unwrap_or_default(),
            term,
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
        match self.ctx.write(command).await? {
            (_, CommandResult::NodeRegistered { revision }) => {
                if let Some(t) = self.ctx.liveness.heartbeat(&node, None) {
                    super::liveness::commit(&self.ctx, t);
                }
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
            .view
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
                if let Some(t) = self.ctx.liveness.heartbeat(&req.node_id, req.telemetry) {
                    super::liveness::commit(&self.ctx, t);
                }
                Ok(Response::new(HeartbeatReply {
                    register_again: digest != req.inventory_digest,
                }))
            }
        }
    }
}

impl AgentControlService {
    /// Agents talk to the leader only; a follower points them at it.
    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.is_leader() {
            return Ok(());
        }
        let leader = self.ctx.raft.metrics().borrow().current_leader;
        let addr = leader
            .and_then(|l| self.ctx.api_addr_of(l))
            .unwrap_or_default();
        Err(Status::unavailable(format!(
            "not the leader; ask LeaderHint (leader at `{addr}`)"
        )))
    }
}
