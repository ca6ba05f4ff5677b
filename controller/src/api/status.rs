//! `Admin.Status`: the controller group as one controller sees it (members, leader, term,
//! indexes, replication lag, state digest) and that controller's workers.

use std::collections::BTreeSet;

use openraft::ServerState;
use steward_proto::v1::{
    MemberRole, MemberStatus, ReadConsistency, StatusReply, StatusRequest, WorkerStatus,
};
use tonic::{Request, Response, Status};

use super::forward::{forwarded, Origin};
use super::ApiContext;
use crate::raft::typ::NodeId;

pub async fn status(
    ctx: &ApiContext,
    request: Request<StatusRequest>,
) -> Result<Response<StatusReply>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    if req.consistency != ReadConsistency::Stale as i32 && !ctx.raft.is_leader() {
        // Prefer the leader's view (it knows replication lag); fall back to ours.
        if let Ok(mut l) = ctx.leader_client(ctx.raft.current_leader(), &origin) {
            if let Ok(resp) = l.client.status(forwarded(req, &l.origin)).await {
                return Ok(resp);
            }
        }
    }
    Ok(Response::new(local_status(ctx).await))
}

/// This controller's own view of the group.
async fn local_status(ctx: &ApiContext) -> StatusReply {
    let raft = &ctx.raft;
    let metrics = raft.metrics();
    let committed = raft.committed_index().await;
    let is_leader = metrics.state == ServerState::Leader;
    let last_log = metrics.last_log_index.unwrap_or(0);
    // A copy: the state lock is never held while the state is encoded for its digest.
    let applied = raft.view().copy();
    let state_digest = ctx.state_digest(&applied).await.unwrap_or_default();
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
                } else if *id == raft.id() {
                    Some(0)
                } else {
                    raft.peers().millis_since_contact(*id)
                },
                incarnation: record.map_or(0, |r| r.incarnation),
                feature_level: raft.peers().level_of(*id).unwrap_or(0),
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
        responder_id: raft.id(),
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        commit_index: committed.unwrap_or(0),
        applied_index: applied.last_applied.map_or(0, |l| l.index),
        last_log_index: last_log,
        responder_state: responder_state.to_string(),
        members,
        state_digest,
        snapshot_index: metrics.snapshot.map(|l| l.index),
        purged_index: metrics.purged.map(|l| l.index),
        snapshots_installed: applied.snapshots_installed,
        cluster_name: ctx.cluster_name.clone(),
        cluster_level: applied.state.cluster_level,
        supported_level: steward_core::features::SUPPORTED_LEVEL,
        workers: ctx
            .workers
            .statuses()
            .into_iter()
            .map(|w| WorkerStatus {
                name: w.name,
                state: w.state.name().to_string(),
                steps: w.steps,
                errors: w.errors,
                consecutive_errors: w.consecutive_errors,
                last_error_age_ms: w
                    .last_error
                    .as_ref()
                    .map(|(_, at)| at.elapsed().as_millis() as u64),
                last_error: w.last_error.map(|(e, _)| e).unwrap_or_default(),
                detail: w.detail,
            })
            .collect(),
    }
}
