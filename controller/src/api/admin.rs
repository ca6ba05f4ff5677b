//! The operator admin API (`steward.v1.Admin`).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::{ChangeMembers, ServerState};
use steward_core::kv::{self, MAX_LIST_BYTES, MAX_LIST_LIMIT};
use steward_core::{Command, CommandResult};
use steward_proto::conv::kv_entry_to_pb;
use steward_proto::v1::admin_server::Admin;
use steward_proto::v1::*;
use tonic::{Request, Response, Status, Streaming};

use super::context::{forwarded, hops_of, ApiContext};
use super::error::ApiError;
use crate::snapshot_file::{self, SnapshotHeader, MAX_SNAPSHOT_FILE_BYTES};
use crate::typ::{ControllerNode, NodeId};

/// Size of each chunk of `SnapshotSave`'s stream.
const SNAPSHOT_STREAM_CHUNK: usize = 1024 * 1024;

pub struct AdminService {
    ctx: Arc<ApiContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        AdminService { ctx }
    }
}

/// Runs `$local` here; on `NotLeader`, forwards `$req` to the leader's `$method`.
macro_rules! on_leader {
    ($self:ident, $hops:expr, $req:expr, $method:ident, $local:expr) => {
        match $local {
            Err(ApiError::NotLeader { leader, .. }) => {
                let (mut client, hops) = $self.ctx.leader_client(leader, $hops)?;
                return client.$method(forwarded($req, hops)).await;
            }
            other => other?,
        }
    };
}

fn stale(consistency: i32) -> bool {
    consistency == ReadConsistency::Stale as i32
}

fn invalid(e: impl ToString) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

impl AdminService {
    async fn read_barrier(&self, consistency: i32) -> Result<(), ApiError> {
        if stale(consistency) {
            Ok(())
        } else {
            self.ctx.linearizable_barrier().await
        }
    }

    /// This controller's own view of the group.
    async fn local_status(&self) -> StatusReply {
        let ctx = &self.ctx;
        let metrics = ctx.raft.metrics().borrow().clone();
        let committed = ctx
            .raft
            .with_raft_state(|s| s.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        let is_leader = metrics.state == ServerState::Leader;
        let last_log = metrics.last_log_index.unwrap_or(0);
        let applied = ctx.view.read();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|m| m.map_or(0, |l| l.index));
                let record = applied.state.controllers.get(id);
                let api_addr = record
                    .map(|r| r.api_addr.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| node.api_addr.clone());
                MemberStatus {
                    id: *id,
                    raft_addr: node.raft_addr.clone(),
                    api_addr,
                    role: if voters.contains(id) {
                        MemberRole::Voter as i32
                    } else {
                        MemberRole::Learner as i32
                    },
                    is_leader: metrics.current_leader == Some(*id),
                    matched_index: matched,
                    lag: matched.map(|m| last_log.saturating_sub(m)),
                    last_contact_ms: if !is_leader {
                        None
                    } else if *id == ctx.id {
                        Some(0)
                    } else {
                        ctx.peers.millis_since_contact(*id)
                    },
                    incarnation: record.map_or(0, |r| r.incarnation),
                }
            })
            .collect();
        let responder_state = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        StatusReply {
            responder_id: ctx.id,
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            commit_index: committed.unwrap_or(0),
            applied_index: applied.last_applied.map_or(0, |l| l.index),
            last_log_index: last_log,
            responder_state: responder_state.to_string(),
            members,
            state_digest: applied.state.digest().unwrap_or_default(),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
            snapshots_installed: applied.snapshots_installed,
            cluster_name: ctx.cluster_name.clone(),
        }
    }

    fn membership_reply(&self, log_index: u64) -> MembershipReply {
        let metrics = self.ctx.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let learners = m
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        MembershipReply {
            log_index,
            voters: voters.into_iter().collect(),
            learners,
        }
    }

    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, ControllerNode>,
        retain: bool,
    ) -> Result<u64, ApiError> {
        match tokio::time::timeout(
            super::context::WRITE_TIMEOUT * 3,
            self.ctx.raft.change_membership(change, retain),
        )
        .await
        {
            Err(_) => Err(ApiError::Timeout(super::context::WRITE_TIMEOUT * 3)),
            Ok(Ok(resp)) => Ok(resp.log_id.index),
            Ok(Err(e)) => Err(ApiError::from_write(self.ctx.id, e)),
        }
    }

    fn member_ids(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let metrics = self.ctx.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let all: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
        (voters, all)
    }

    /// Fails with `NotLeader` unless this controller leads.
    fn require_leader(&self) -> Result<(), ApiError> {
        if self.ctx.is_leader() {
            Ok(())
        } else {
            Err(ApiError::NotLeader {
                responder: self.ctx.id,
                leader: self.ctx.raft.metrics().borrow().current_leader,
            })
        }
    }
}

/// What the controller reads of an agent's inventory document (unknown shapes give none).
#[derive(serde::Deserialize, Default)]
struct InventoryView {
    #[serde(default)]
    agent: AgentView,
    #[serde(default)]
    gpus: Vec<GpuView>,
}
#[derive(serde::Deserialize, Default)]
struct AgentView {
    #[serde(default)]
    api_addr: Option<String>,
}
#[derive(serde::Deserialize)]
struct GpuView {
    uuid: String,
    name: String,
}

/// GPU identities (with health from the latest telemetry) and the agent's API address.
fn inventory_view(inventory: &[u8], telemetry: Option<&NodeTelemetry>) -> (Vec<NodeGpu>, String) {
    let inv: InventoryView = serde_json::from_slice(inventory).unwrap_or_default();
    let gpus = inv
        .gpus
        .into_iter()
        .map(|g| NodeGpu {
            health: telemetry
                .and_then(|t| t.gpus.iter().find(|x| x.uuid == g.uuid))
                .map(|x| x.health.clone())
                .unwrap_or_default(),
            uuid: g.uuid,
            model: g.name,
        })
        .collect();
    (gpus, inv.agent.api_addr.unwrap_or_default())
}

/// The error for a KV write whose result is not a success: a failed compare-and-set, or
/// something that cannot happen.
fn kv_write_error(result: CommandResult) -> Status {
    match result {
        CommandResult::RevisionMismatch {
            key,
            expected,
            actual,
        } => ApiError::FailedPrecondition(format!(
            "revision mismatch on `{key}`: expected {expected}, current {actual}"
        ))
        .into(),
        other => ApiError::Internal(format!("unexpected result {other:?}")).into(),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        if !stale(req.consistency) && !self.ctx.is_leader() {
            let leader = self.ctx.raft.metrics().borrow().current_leader;
            // Prefer the leader's view (it knows replication lag); fall back to ours.
            if let Ok((mut client, hops)) = self.ctx.leader_client(leader, hops) {
                if let Ok(resp) = client.status(forwarded(req, hops)).await {
                    return Ok(resp);
                }
            }
        }
        Ok(Response::new(self.local_status().await))
    }

    async fn kv_put(&self, request: Request<KvPutRequest>) -> Result<Response<KvPutReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        kv::validate_key(&req.key).map_err(invalid)?;
        kv::validate_value(&req.value).map_err(invalid)?;
        let command = Command::KvPut {
            key: req.key.clone(),
            value: req.value.clone(),
            expected_revision: req.expected_revision,
        };
        let (_, result) = on_leader!(self, hops, req, kv_put, self.ctx.write(command).await);
        match result {
            CommandResult::KvPut { revision } => Ok(Response::new(KvPutReply { revision })),
            other => Err(kv_write_error(other)),
        }
    }

    async fn kv_get(&self, request: Request<KvGetRequest>) -> Result<Response<KvGetReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        kv::validate_key(&req.key).map_err(invalid)?;
        on_leader!(
            self,
            hops,
            req,
            kv_get,
            self.read_barrier(req.consistency).await
        );
        let applied = self.ctx.view.read();
        Ok(Response::new(KvGetReply {
            entry: applied
                .state
                .kv
                .get(&req.key)
                .map(|e| kv_entry_to_pb(&req.key, e)),
            read_revision: applied.last_applied.map_or(0, |l| l.index),
        }))
    }

    async fn kv_list(
        &self,
        request: Request<KvListRequest>,
    ) -> Result<Response<KvListReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(
            self,
            hops,
            req,
            kv_list,
            self.read_barrier(req.consistency).await
        );
        let limit = match req.limit as usize {
            0 => MAX_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let applied = self.ctx.view.read();
        let start_after = (!req.start_after.is_empty()).then_some(req.start_after.as_str());
        let mut entries: Vec<KvEntry> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for (k, e) in applied.state.kv_list(&req.prefix, start_after, limit + 1) {
            let size = k.len() + e.value.len();
            if entries.len() == limit || (!entries.is_empty() && bytes + size > MAX_LIST_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            entries.push(kv_entry_to_pb(k, e));
        }
        Ok(Response::new(KvListReply {
            entries,
            more,
            read_revision: applied.last_applied.map_or(0, |l| l.index),
        }))
    }

    async fn kv_delete(
        &self,
        request: Request<KvDeleteRequest>,
    ) -> Result<Response<KvDeleteReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        kv::validate_key(&req.key).map_err(invalid)?;
        let command = Command::KvDelete {
            key: req.key.clone(),
            expected_revision: req.expected_revision,
        };
        let (_, result) = on_leader!(self, hops, req, kv_delete, self.ctx.write(command).await);
        match result {
            CommandResult::KvDeleted { existed, revision } => {
                Ok(Response::new(KvDeleteReply { existed, revision }))
            }
            other => Err(kv_write_error(other)),
        }
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        if req.id == 0 {
            return Err(invalid("controller id must be at least 1").into());
        }
        for (what, addr) in [
            ("raft address", &req.raft_addr),
            ("api address", &req.api_addr),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(format!("{what} `{addr}` is not IP:PORT")).into());
            }
        }
        on_leader!(self, hops, req, add_learner, self.require_leader());
        let (_, all) = self.member_ids();
        if all.contains(&req.id) {
            return Err(ApiError::FailedPrecondition(format!(
                "controller {} is already a member; remove it first or pick another id",
                req.id
            ))
            .into());
        }
        if self.ctx.view.read().state.controllers.contains_key(&req.id) {
            return Err(ApiError::FailedPrecondition(format!(
                "id {} was used by a controller before; pick a new id",
                req.id
            ))
            .into());
        }
        let node = ControllerNode {
            raft_addr: req.raft_addr.clone(),
            api_addr: req.api_addr.clone(),
        };
        let index = match tokio::time::timeout(
            super::context::WRITE_TIMEOUT * 3,
            self.ctx.raft.add_learner(req.id, node, true),
        )
        .await
        {
            Err(_) => {
                return Err(ApiError::Timeout(super::context::WRITE_TIMEOUT * 3).into());
            }
            Ok(r) => {
                r.map_err(|e| ApiError::from_write(self.ctx.id, e))?
                    .log_id
                    .index
            }
        };
        Ok(Response::new(self.membership_reply(index)))
    }

    async fn promote(
        &self,
        request: Request<PromoteRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(self, hops, req, promote, self.require_leader());
        let (voters, all) = self.member_ids();
        if !all.contains(&req.id) {
            return Err(ApiError::NotFound(format!(
                "controller {} is not a member; add it with `steward operator raft add-learner` first",
                req.id
            ))
            .into());
        }
        if voters.contains(&req.id) {
            return Ok(Response::new(self.membership_reply(0)));
        }
        let index = self
            .change_membership(ChangeMembers::AddVoterIds([req.id].into()), true)
            .await?;
        Ok(Response::new(self.membership_reply(index)))
    }

    async fn remove_peer(
        &self,
        request: Request<RemovePeerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(self, hops, req, remove_peer, self.require_leader());
        let (voters, all) = self.member_ids();
        if !all.contains(&req.id) {
            return Err(
                ApiError::NotFound(format!("controller {} is not a member", req.id)).into(),
            );
        }
        if voters.contains(&req.id) && voters.len() == 1 {
            return Err(ApiError::FailedPrecondition("cannot remove the last voter".into()).into());
        }
        let index = if voters.contains(&req.id) {
            self.change_membership(ChangeMembers::RemoveVoters([req.id].into()), false)
                .await?
        } else {
            self.change_membership(ChangeMembers::RemoveNodes([req.id].into()), false)
                .await?
        };
        // The removed id's incarnation record is dropped, so the id could be reused
        // deliberately. If this controller was itself removed, it is no longer leader: the
        // next leader's registration sweep is not needed for correctness.
        if self.ctx.is_leader() {
            if let Err(e) = self
                .ctx
                .write(Command::ForgetController { controller: req.id })
                .await
            {
                tracing::warn!(controller = req.id, error = %e, "could not drop the removed controller's record");
            }
        }
        Ok(Response::new(self.membership_reply(index)))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(self, hops, req, transfer_leader, self.require_leader());
        let (leader_id, term) = super::transfer::transfer_leadership(&self.ctx, req.to).await?;
        Ok(Response::new(TransferLeaderReply { leader_id, term }))
    }

    async fn list_nodes(
        &self,
        request: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(
            self,
            hops,
            req,
            list_nodes,
            self.ctx.linearizable_barrier().await
        );
        let applied = self.ctx.view.read();
        let nodes = applied
            .state
            .nodes
            .iter()
            .filter(|(id, _)| req.node_id.is_empty() || **id == req.node_id)
            .map(|(id, n)| {
                let telemetry = self.ctx.liveness.telemetry(id);
                let (gpus, agent_api_addr) = inventory_view(&n.inventory, telemetry.as_deref());
                NodeSummary {
                    id: id.clone(),
                    hostname: n.hostname.clone(),
                    health: n.health.name().to_string(),
                    labels: n.labels.clone().into_iter().collect(),
                    gpus,
                    last_heartbeat_age_ms: self.ctx.liveness.age_ms(id),
                    inventory_json: if req.with_inventory {
                        n.inventory.clone()
                    } else {
                        Vec::new()
                    },
                    agent_api_addr,
                    telemetry: if req.with_inventory {
                        telemetry.map(|t| (*t).clone())
                    } else {
                        None
                    },
                }
            })
            .collect();
        Ok(Response::new(ListNodesReply { nodes }))
    }

    async fn node_events(
        &self,
        request: Request<NodeEventsRequest>,
    ) -> Result<Response<NodeEventsReply>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        on_leader!(
            self,
            hops,
            req,
            node_events,
            self.ctx.linearizable_barrier().await
        );
        let applied = self.ctx.view.read();
        let events = applied
            .state
            .node_events
            .iter()
            .filter(|e| req.node_id.is_empty() || e.node == req.node_id)
            .map(|e| NodeEventPb {
                revision: e.revision,
                node_id: e.node.clone(),
                from: e.from.map(|h| h.name().to_string()).unwrap_or_default(),
                to: e.to.name().to_string(),
                reason: e.reason.clone(),
            })
            .collect();
        Ok(Response::new(NodeEventsReply { events }))
    }

    type SnapshotSaveStream = ChunkStream;

    async fn snapshot_save(
        &self,
        request: Request<SnapshotSaveRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let hops = hops_of(&request);
        let req = request.into_inner();
        match self.ctx.linearizable_barrier().await {
            Err(ApiError::NotLeader { leader, .. }) => {
                let (mut client, hops) = self.ctx.leader_client(leader, hops)?;
                let stream = client
                    .snapshot_save(forwarded(req, hops))
                    .await?
                    .into_inner();
                return Ok(Response::new(Box::pin(stream) as ChunkStream));
            }
            other => other?,
        }
        let bytes = {
            let applied = self.ctx.view.read();
            let m = applied.last_membership.membership();
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            let header = SnapshotHeader {
                cluster_name: self.ctx.cluster_name.clone(),
                taken_by: self.ctx.id,
                applied_index: applied.last_applied.map_or(0, |l| l.index),
                applied_term: applied.last_applied.map_or(0, |l| l.leader_id.term),
                voters: voters.iter().copied().collect(),
                learners: m
                    .nodes()
                    .map(|(id, _)| *id)
                    .filter(|id| !voters.contains(id))
                    .collect(),
                keys: applied.state.kv.len() as u64,
                state_digest: applied
                    .state
                    .digest()
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            };
            snapshot_file::encode(header, &applied.state)
                .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        let chunks: Vec<Result<SnapshotChunk, Status>> = bytes
            .chunks(SNAPSHOT_STREAM_CHUNK)
            .map(|c| Ok(SnapshotChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn snapshot_restore(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotRestoreReply>, Status> {
        let hops = hops_of(&request);
        let mut stream = request.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?.data);
            if bytes.len() > MAX_SNAPSHOT_FILE_BYTES {
                return Err(
                    invalid(format!("snapshot exceeds {MAX_SNAPSHOT_FILE_BYTES} bytes")).into(),
                );
            }
        }
        let (header, state) = snapshot_file::decode(&bytes).map_err(invalid)?;
        if header.cluster_name != self.ctx.cluster_name {
            tracing::warn!(from = %header.cluster_name, to = %self.ctx.cluster_name, "restoring a snapshot taken on another cluster");
        }
        let command = Command::RestoreState {
            state: Box::new(state),
        };
        match self.ctx.write(command).await {
            Err(ApiError::NotLeader { leader, .. }) => {
                let (mut client, hops) = self.ctx.leader_client(leader, hops)?;
                let chunks: Vec<SnapshotChunk> = bytes
                    .chunks(SNAPSHOT_STREAM_CHUNK)
                    .map(|c| SnapshotChunk { data: c.to_vec() })
                    .collect();
                client
                    .snapshot_restore(forwarded(futures::stream::iter(chunks), hops))
                    .await
            }
            Err(e) => Err(e.into()),
            Ok((_, CommandResult::Restored { keys, revision })) => {
                Ok(Response::new(SnapshotRestoreReply { revision, keys }))
            }
            Ok((_, other)) => {
                Err(ApiError::Internal(format!("unexpected result {other:?}")).into())
            }
        }
    }
}
