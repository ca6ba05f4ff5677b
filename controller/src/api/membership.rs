//! `Admin.AddLearner | Promote | RemovePeer | TransferLeader`: the controller group's
//! membership. Leader-only actions: a follower forwards them.

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use steward_core::Command;
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{forwarded, Origin};
use super::ApiContext;
use crate::raft::typ::{ControllerNode, NodeId};

/// How long `promote` waits for a learner's first answer to the leader.
const LEARNER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The voters and the learners (members that are not voters) of `m`, each sorted.
pub(crate) fn voters_and_learners(
    m: &openraft::Membership<NodeId, crate::raft::typ::ControllerNode>,
) -> (Vec<NodeId>, Vec<NodeId>) {
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let learners = m
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !voters.contains(id))
        .collect();
    (voters.into_iter().collect(), learners)
}

fn membership_reply(ctx: &ApiContext, log_index: u64) -> MembershipReply {
    let metrics = ctx.raft.metrics();
    let (voters, learners) = voters_and_learners(metrics.membership_config.membership());
    MembershipReply {
        log_index,
        voters,
        learners,
    }
}

/// (voters, every member).
fn member_ids(ctx: &ApiContext) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
    let metrics = ctx.raft.metrics();
    let m = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let all: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
    (voters, all)
}

pub async fn add_learner(
    ctx: &ApiContext,
    request: Request<AddLearnerRequest>,
) -> Result<Response<MembershipReply>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    if req.id == 0 {
        return Err(ApiError::InvalidArgument("controller id must be at least 1".into()).into());
    }
    for (what, addr) in [
        ("raft address", &req.raft_addr),
        ("api address", &req.api_addr),
    ] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(
                ApiError::InvalidArgument(format!("{what} `{addr}` is not IP:PORT")).into(),
            );
        }
    }
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l.client.add_learner(forwarded(req, &l.origin)).await;
    }
    let (_, all) = member_ids(ctx);
    if all.contains(&req.id) {
        return Err(ApiError::FailedPrecondition(format!(
            "controller {} is already a member; remove it first or pick another id",
            req.id
        ))
        .into());
    }
    if ctx
        .raft
        .view()
        .read()
        .state
        .controllers
        .contains_key(&req.id)
    {
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
    let added = ctx.raft.add_learner(req.id, node).await;
    // A learner whose build is below the cluster's feature level cannot decode the log
    // (it stalls, and the add times out): say so, whichever way the add ended.
    let cluster_level = ctx.raft.cluster_level();
    if let Some(level) = ctx.raft.peers().level_of(req.id) {
        if level < cluster_level {
            return Err(ApiError::FailedPrecondition(format!(
                "controller {} runs a build that supports feature level {level}, below the cluster's level {cluster_level}, so it cannot read the log; remove it (`steward operator raft remove-peer {}`) and start it with a newer build",
                req.id, req.id
            ))
            .into());
        }
    }
    let index = added.map_err(ApiError::from)?;
    Ok(Response::new(membership_reply(ctx, index)))
}

pub async fn promote(
    ctx: &ApiContext,
    request: Request<PromoteRequest>,
) -> Result<Response<MembershipReply>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l.client.promote(forwarded(req, &l.origin)).await;
    }
    let (voters, all) = member_ids(ctx);
    if !all.contains(&req.id) {
        return Err(ApiError::NotFound(format!(
            "controller {} is not a member; add it with `steward operator raft add-learner` first",
            req.id
        ))
        .into());
    }
    if voters.contains(&req.id) {
        return Ok(Response::new(membership_reply(ctx, 0)));
    }
    // A voter must be able to read the log: its build must know the cluster's level. It
    // reports its level in its first Raft reply; a learner just added may not have
    // answered yet, so wait a little for it.
    let cluster_level = ctx.raft.cluster_level();
    let deadline = tokio::time::Instant::now() + LEARNER_ANSWER_TIMEOUT;
    let level = loop {
        if let Some(level) = ctx.raft.peers().level_of(req.id) {
            break level;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::FailedPrecondition(format!(
                "controller {} has not answered the leader within {LEARNER_ANSWER_TIMEOUT:?}; is it running and reachable at its raft address?",
                req.id
            ))
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    if level < cluster_level {
        return Err(ApiError::FailedPrecondition(format!(
            "controller {} runs a build of feature level {level}, the cluster is at level {cluster_level}: it cannot read the log; upgrade it first",
            req.id
        ))
        .into());
    }
    let index = ctx
        .raft
        .change_membership(ChangeMembers::AddVoterIds([req.id].into()), true)
        .await
        .map_err(ApiError::from)?;
    Ok(Response::new(membership_reply(ctx, index)))
}

pub async fn remove_peer(
    ctx: &ApiContext,
    request: Request<RemovePeerRequest>,
) -> Result<Response<MembershipReply>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l.client.remove_peer(forwarded(req, &l.origin)).await;
    }
    let (voters, all) = member_ids(ctx);
    if !all.contains(&req.id) {
        return Err(ApiError::NotFound(format!("controller {} is not a member", req.id)).into());
    }
    if voters.contains(&req.id) && voters.len() == 1 {
        return Err(ApiError::FailedPrecondition("cannot remove the last voter".into()).into());
    }
    let change = if voters.contains(&req.id) {
        ChangeMembers::RemoveVoters([req.id].into())
    } else {
        ChangeMembers::RemoveNodes([req.id].into())
    };
    let index = ctx
        .raft
        .change_membership(change, false)
        .await
        .map_err(ApiError::from)?;
    // The removed id's incarnation record is dropped, so the id could be reused
    // deliberately. If this controller was itself removed, it is no longer leader: the
    // record stays, which only keeps the id reserved.
    if ctx.raft.is_leader() {
        if let Err(e) = ctx
            .raft
            .propose(Command::ForgetController { controller: req.id })
            .await
        {
            tracing::warn!(controller = req.id, error = %e, "could not drop the removed controller's record");
        }
    }
    Ok(Response::new(membership_reply(ctx, index)))
}

pub async fn transfer_leader(
    ctx: &ApiContext,
    request: Request<TransferLeaderRequest>,
) -> Result<Response<TransferLeaderReply>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l.client.transfer_leader(forwarded(req, &l.origin)).await;
    }
    let (leader_id, term) = ctx
        .raft
        .transfer_leadership(req.to)
        .await
        .map_err(ApiError::from)?;
    Ok(Response::new(TransferLeaderReply { leader_id, term }))
}
