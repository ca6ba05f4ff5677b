//! The agent-facing control API (`steward.v1.AgentControl`): leader hints, registration
//! (a Raft write, only when the inventory changes) and heartbeats (leader memory only).

use std::sync::Arc;

use steward_core::codec;
use steward_core::inventory::Inventory;
use steward_core::node::{validate_labels, validate_registration};
use steward_core::{Command, CommandResult};
use steward_proto::v1::agent_control_server::AgentControl;
use steward_proto::v1::{
    AllocationsUpdate, ConfirmGarbageReply, ConfirmGarbageRequest, HeartbeatReply,
    HeartbeatRequest, LeaderHintReply, LeaderHintRequest, RegisterNodeReply, RegisterNodeRequest,
    ReportAllocationsReply, ReportAllocationsRequest, ReportChunksReply, ReportChunksRequest,
    WatchAllocationsRequest,
};
use tonic::{Request, Response, Status};

/// How often an assignment stream re-checks that this controller still leads.
const WATCH_LEADERSHIP_CHECK: std::time::Duration = std::time::Duration::from_millis(500);
/// Most reports one call may carry.
pub const MAX_REPORTS_PER_CALL: usize = 1024;

pub type AllocationsStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<AllocationsUpdate, Status>> + Send>>;

/// The node's live allocations, with their specs, as an agent receives them.
fn node_allocations(ctx: &ApiContext, node: &str) -> (u64, Vec<steward_proto::v1::AllocationPb>) {
    // A copy (O(1)): the list is built off the state lock (ARCHITECTURE.md, invariant 12).
    let applied = ctx.raft.view().copy();
    let s = &applied.state;
    let list = s
        .live_allocs_on(node)
        .iter()
        .filter_map(|id| s.allocs.get(id))
        .map(|a| super::jobs::alloc_to_pb(s, a, true))
        .collect();
    (s.revision, list)
}

use super::error::ApiError;
use super::ApiContext;

pub struct AgentControlService {
    ctx: Arc<ApiContext>,
}

impl AgentControlService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        AgentControlService { ctx }
    }

    /// Agents talk to the leader only, and only while it holds its lease (a quorum heard
    /// from it recently): a follower points them at the leader, and a leader cut off from
    /// its quorum sends them looking, before another leader could declare them down.
    fn require_leader(&self) -> Result<(), Status> {
        if self.ctx.raft.holds_leader_lease() {
            return Ok(());
        }
        if self.ctx.raft.is_leader() {
            let m = self.ctx.raft.metrics();
            return Err(ApiError::from(self.ctx.raft.not_leader()).to_status().tap_message(
                format!(
                    "controller {} leads but no quorum acknowledged it for {} ms (lease {:?}): ask the other controllers (LeaderHint)",
                    self.ctx.raft.id(),
                    m.millis_since_quorum_ack.map_or("?".to_string(), |ms| ms.to_string()),
                    self.ctx.raft.tuning().leader_lease()
                ),
            ));
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
    type WatchAllocationsStream = AllocationsStream;

    /// A full list of the node's allocations now, and again after every change to it,
    /// for as long as this controller leads. The stream ends with UNAVAILABLE when it stops
    /// leading; the agent then finds the new leader and watches there.
    async fn watch_allocations(
        &self,
        request: Request<WatchAllocationsRequest>,
    ) -> Result<Response<AllocationsStream>, Status> {
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        self.require_leader()?;
        // Everything committed before this call is applied before the first list.
        self.ctx.raft.read_barrier().await.map_err(ApiError::from)?;
        let ctx = self.ctx.clone();
        let changes = ctx.raft.view().subscribe();
        let state = (
            ctx,
            req.node_id,
            changes,
            None::<Vec<steward_proto::v1::AllocationPb>>,
            false,
        );
        let stream = futures::stream::unfold(
            state,
            |(ctx, node, mut changes, last, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    if !ctx.raft.holds_leader_lease() {
                        let status = Status::unavailable(
                            "this controller no longer leads; ask LeaderHint and watch there",
                        );
                        return Some((Err(status), (ctx, node, changes, last, true)));
                    }
                    changes.borrow_and_update();
                    let (revision, list) = node_allocations(&ctx, &node);
                    if last.as_ref() != Some(&list) {
                        let update = AllocationsUpdate {
                            revision,
                            allocations: list.clone(),
                        };
                        return Some((Ok(update), (ctx, node, changes, Some(list), false)));
                    }
                    let closed = tokio::select! {
                        r = tokio::time::timeout(WATCH_LEADERSHIP_CHECK, changes.changed()) => matches!(r, Ok(Err(_))),
                        _ = ctx.stopping.cancelled() => true,
                    };
                    if closed {
                        let status = Status::unavailable("this controller is stopping");
                        return Some((Err(status), (ctx, node, changes, last, true)));
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_allocations(
        &self,
        request: Request<ReportAllocationsRequest>,
    ) -> Result<Response<ReportAllocationsReply>, Status> {
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        self.require_leader()?;
        if req.reports.len() > MAX_REPORTS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "{} reports in one call, the limit is {MAX_REPORTS_PER_CALL}",
                req.reports.len()
            ))
            .into());
        }
        let mut reports = Vec::with_capacity(req.reports.len());
        for r in req.reports {
            let state = steward_core::jobs::AllocState::parse(&r.state).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "allocation {}: unknown state `{}`",
                    r.alloc_id, r.state
                ))
            })?;
            reports.push(steward_core::jobs::AllocReport {
                alloc: r.alloc_id,
                generation: r.generation,
                state,
                exit_code: r.exit_code,
                restarts: r.restarts,
                reason: steward_core::jobs::bounded_reason(r.reason),
            });
        }
        let command = Command::ReportAllocations {
            node: req.node_id,
            reports,
        };
        match self
            .ctx
            .raft
            .propose(command)
            .await
            .map_err(ApiError::from)?
        {
            (
                _,
                CommandResult::AllocationsReported {
                    applied, ignored, ..
                },
            ) => Ok(Response::new(ReportAllocationsReply { applied, ignored })),
            (_, other) => Err(ApiError::Internal(format!("unexpected result {other:?}")).into()),
        }
    }

    async fn leader_hint(
        &self,
        _request: Request<LeaderHintRequest>,
    ) -> Result<Response<LeaderHintReply>, Status> {
        let m = self.ctx.raft.metrics();
        // A leader without its lease does not name itself: it may already be deposed.
        let leader = m
            .current_leader
            .filter(|l| *l != self.ctx.raft.id() || self.ctx.raft.holds_leader_lease());
        Ok(Response::new(LeaderHintReply {
            leader_id: leader,
            leader_api_addr: leader
                .and_then(|l| self.ctx.raft.api_addr_of(l))
                .unwrap_or_default(),
            term: m.current_term,
        }))
    }

    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeReply>, Status> {
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        // Agents from before the typed inventory send a JSON document instead.
        let inventory: Inventory = match req.inventory {
            Some(pb) => pb.into(),
            None => Inventory::from_json_lenient(&req.inventory_json),
        };
        let encoded = codec::encode_as("inventory", 1, &inventory)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        validate_registration(&req.node_id, encoded.len())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let labels: std::collections::BTreeMap<String, String> = req.labels.into_iter().collect();
        validate_labels(&labels).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        // Test builds: the leader refuses registrations (see the fail point's tests).
        fail::fail_point!("register-node-refuse", |_| Err(ApiError::InvalidArgument(
            "registration refused (fail point register-node-refuse)".into()
        )
        .into()));
        self.require_leader()?;
        let node = req.node_id.clone();
        let command = if self.ctx.raft.cluster_level() >= 2 {
            Command::RegisterNodeTyped {
                node: req.node_id,
                hostname: req.hostname,
                labels,
                inventory: Box::new(inventory),
                registration_digest: req.inventory_digest,
            }
        } else {
            Command::RegisterNode {
                node: req.node_id,
                hostname: req.hostname,
                labels,
                inventory: serde_json::to_vec(&inventory)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
                inventory_digest: req.inventory_digest,
            }
        };
        match self
            .ctx
            .raft
            .propose(command)
            .await
            .map_err(ApiError::from)?
        {
            (_, CommandResult::StateFull { limit, would_be }) => Err(ApiError::FailedPrecondition(
                format!("the cluster state is full: registering would make it {would_be} bytes, the limit is {limit}"),
            )
            .into()),
            (_, CommandResult::NodeRegistered { revision }) => {
                self.ctx.liveness.heartbeat(&node, None, None);
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
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        self.require_leader()?;
        let known = self
            .ctx
            .raft
            .view()
            .read()
            .state
            .nodes
            .get(&req.node_id)
            .map(|n| (n.registration_digest.clone(), n.health));
        match known {
            None => {
                // Not registered (yet): its silence still counts from now once it is.
                self.ctx
                    .liveness
                    .heartbeat(&req.node_id, req.telemetry, None);
                Ok(Response::new(HeartbeatReply {
                    register_again: true,
                    down_after_ms: self.ctx.liveness.down_after_ms(),
                    chunk_report_needed: false,
                }))
            }
            Some((digest, health)) => {
                self.ctx
                    .liveness
                    .heartbeat(&req.node_id, req.telemetry, Some(health));
                Ok(Response::new(HeartbeatReply {
                    register_again: digest != req.inventory_digest,
                    down_after_ms: self.ctx.liveness.down_after_ms(),
                    chunk_report_needed: !self.ctx.replicas.has_full_report(&req.node_id),
                }))
            }
        }
    }

    /// What a node's chunk store holds (leader memory): a full list in parts, or changes.
    async fn report_chunks(
        &self,
        request: Request<ReportChunksRequest>,
    ) -> Result<Response<ReportChunksReply>, Status> {
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        self.require_leader()?;
        validate_registration(&req.node_id, 0)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if !self
            .ctx
            .raft
            .view()
            .copy()
            .state
            .nodes
            .contains_key(&req.node_id)
        {
            return Err(ApiError::NotFound(format!(
                "node {} is not registered: register before reporting chunks",
                req.node_id
            ))
            .into());
        }
        for (what, list) in [
            ("added", &req.added),
            ("removed", &req.removed),
            ("corrupt", &req.corrupt),
        ] {
            if list.len() > MAX_CHUNK_IDS_PER_REPORT {
                return Err(ApiError::InvalidArgument(format!(
                    "{} {what} ids in one report, over the {MAX_CHUNK_IDS_PER_REPORT} limit",
                    list.len()
                ))
                .into());
            }
        }
        let ids = |list: &[Vec<u8>]| {
            list.iter()
                .map(|b| steward_proto::conv::chunk_id_from_pb(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Status::from(ApiError::InvalidArgument(e)))
        };
        let (added, removed, corrupt) = (ids(&req.added)?, ids(&req.removed)?, ids(&req.corrupt)?);
        let tracker = &self.ctx.replicas;
        let refused = |e: String| Status::from(ApiError::Overloaded(e));
        if req.full {
            tracker
                .full_report(&req.node_id, req.report_id, added, req.last)
                .map_err(refused)?;
        } else {
            tracker.record(&req.node_id, added).map_err(refused)?;
            tracker.remove(&req.node_id, removed);
            if !corrupt.is_empty() {
                tracing::warn!(node = %req.node_id, chunks = corrupt.len(), "an agent found rotten chunks; repair follows");
                tracker.corrupt(&req.node_id, corrupt);
            }
        }
        Ok(Response::new(ReportChunksReply {}))
    }

    /// Which of the chunks are referenced by no version and were not planned here lately.
    /// Confirmed with a quorum first: a deposed leader's state could miss a new version.
    async fn confirm_garbage(
        &self,
        request: Request<ConfirmGarbageRequest>,
    ) -> Result<Response<ConfirmGarbageReply>, Status> {
        // The node authorizer rule: an agent acts only for its own node.
        steward_runtime::access::check_node(&request, &request.get_ref().node_id)?;
        let req = request.into_inner();
        self.require_leader()?;
        if req.chunk_ids.len() > MAX_GARBAGE_IDS {
            return Err(ApiError::InvalidArgument(format!(
                "{} ids, over the {MAX_GARBAGE_IDS} a confirmation takes",
                req.chunk_ids.len()
            ))
            .into());
        }
        let ids = req
            .chunk_ids
            .iter()
            .map(|b| steward_proto::conv::chunk_id_from_pb(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::from(ApiError::InvalidArgument(e)))?;
        self.ctx
            .raft
            .read_barrier()
            .await
            .map_err(|e| Status::from(ApiError::from(e)))?;
        let applied = self.ctx.raft.view().read();
        let refs = applied.state.chunk_refs();
        let garbage = ids
            .into_iter()
            .filter(|id| !refs.contains_key(id) && !self.ctx.replicas.recently_planned(id))
            .map(|id| id.as_bytes().to_vec())
            .collect();
        Ok(Response::new(ConfirmGarbageReply { garbage }))
    }
}

/// Ids per garbage confirmation.
pub const MAX_GARBAGE_IDS: usize = 10_000;

/// Ids per list in one chunk report (the agents send at most 50,000).
pub const MAX_CHUNK_IDS_PER_REPORT: usize = 100_000;
