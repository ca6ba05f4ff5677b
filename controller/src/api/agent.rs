//! The agent-facing control API (`steward.v1.AgentControl`); minimal until the agent issue.

use std::sync::Arc;

use steward_proto::v1::agent_control_server::AgentControl;
use steward_proto::v1::{LeaderHintReply, LeaderHintRequest};
use tonic::{Request, Response, Status};

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
}
