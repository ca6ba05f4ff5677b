//! Leadership transfer. openraft 0.9 has no transfer primitive, so it is built from its
//! runtime switches, with every pause bounded in time so a crash mid-transfer heals itself:
//!
//! 1. check the target is a voter and has every entry the leader has;
//! 2. stop accepting writes here, and pause the election timers of the other voters;
//! 3. stop heartbeats and elections here, so followers' leader leases run out;
//! 4. after one lease (election_timeout_max), ask the target to campaign;
//! 5. wait until the target leads, then restore this controller's switches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use steward_proto::v1::raft_service_client::RaftServiceClient;
use steward_proto::v1::{CampaignRequest, PauseElectionRequest};

use super::error::ApiError;
use super::ApiContext;
use crate::elections::HoldReason;
use crate::typ::NodeId;

/// How long the target may take to catch up before the transfer is refused.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the new leader may take to be elected.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// RPC deadline for the pause and campaign requests.
const RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Restores the leader's switches however the transfer ends.
struct Restore<'a>(&'a ApiContext);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.0.raft.runtime_config().heartbeat(true);
        self.0.holds.release(HoldReason::TransferringLeadership);
        self.0.transferring.store(false, Ordering::Release);
    }
}

pub async fn transfer_leadership(ctx: &ApiContext, to: NodeId) -> Result<(NodeId, u64), ApiError> {
    let metrics = ctx.raft.metrics().borrow().clone();
    if to == ctx.id {
        return Ok((ctx.id, metrics.current_term));
    }
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if !voters.contains(&to) {
        return Err(ApiError::NotFound(format!(
            "controller {to} is not a voter"
        )));
    }
    if ctx.transferring.swap(true, Ordering::AcqRel) {
        return Err(ApiError::Transferring);
    }
    let _restore = Restore(ctx);

    // 1. Wait for the target to hold every entry.
    let mut rx = ctx.raft.metrics();
    let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        loop {
            let m = rx.borrow_and_update().clone();
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&to).cloned())
                .flatten();
            if matched.map(|l| l.index) == m.last_log_index && m.last_log_index.is_some() {
                return true;
            }
            if m.state != ServerState::Leader || rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    if caught_up != Ok(true) {
        return Err(ApiError::FailedPrecondition(format!(
            "controller {to} has not caught up with the leader's log within {CATCH_UP_TIMEOUT:?}"
        )));
    }

    // 2. Pause the other voters' election timers.
    let lease = ctx.tuning.election_timeout_max;
    let pause = lease * 4;
    for v in voters.iter().copied().filter(|v| *v != to && *v != ctx.id) {
        if let Some(node) = membership.get_node(&v) {
            let req = PauseElectionRequest {
                from: Some(ctx.peers.identity()),
                pause_ms: pause.as_millis() as u64,
            };
            if let Ok(ch) = ctx.peers.channel(&node.raft_addr) {
                let mut client = RaftServiceClient::new(ch);
                let _ = tokio::time::timeout(RPC_TIMEOUT, client.pause_election(req)).await;
            }
        }
    }

    // 3. Let the followers' leases lapse.
    ctx.raft.runtime_config().heartbeat(false);
    ctx.holds.hold(
        HoldReason::TransferringLeadership,
        CATCH_UP_TIMEOUT + ELECTION_TIMEOUT + lease,
    );
    tokio::time::sleep(lease + ctx.tuning.heartbeat_interval).await;

    // 4. Ask the target to campaign.
    let target = membership
        .get_node(&to)
        .ok_or_else(|| ApiError::NotFound(format!("controller {to} has no address")))?;
    let ch = ctx
        .peers
        .channel(&target.raft_addr)
        .map_err(|e| ApiError::LeaderUnreachable {
            leader: to,
            addr: target.raft_addr.clone(),
            message: e.to_string(),
        })?;
    let mut client = RaftServiceClient::new(ch);
    let req = CampaignRequest {
        from: Some(ctx.peers.identity()),
    };
    match tokio::time::timeout(RPC_TIMEOUT, client.campaign(req)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            return Err(ApiError::Internal(format!(
                "controller {to} refused to campaign: {}",
                status.message()
            )))
        }
        Err(_) => return Err(ApiError::Timeout(RPC_TIMEOUT)),
    }

    // 5. Wait for the new leader.
    let mut rx = ctx.raft.metrics();
    let elected = tokio::time::timeout(ELECTION_TIMEOUT, async {
        loop {
            let m = rx.borrow_and_update().clone();
            if m.current_leader == Some(to) {
                return Some(m.current_term);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    match elected {
        Ok(Some(term)) => {
            tracing::info!(from = ctx.id, to, term, "leadership transferred");
            Ok((to, term))
        }
        _ => Err(ApiError::Internal(format!(
            "controller {to} did not become leader within {ELECTION_TIMEOUT:?}; the group elects a leader by itself"
        ))),
    }
}
