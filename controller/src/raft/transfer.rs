//! Leadership transfer. openraft 0.9 has no transfer primitive, so it is built from its
//! runtime switches, with every pause bounded in time so a crash mid-transfer heals itself:
//!
//! 1. check the target is a voter and has every entry the leader has;
//! 2. stop accepting writes here, and pause the election timers of the other voters;
//! 3. stop heartbeats and elections here, so followers' leader leases run out;
//! 4. after one lease (election_timeout_max), check again that the target holds every
//!    entry (a proposal already in flight when writes stopped may have been appended
//!    since: the voters would refuse a candidate without it), then ask it to campaign;
//! 5. wait until the target leads, then restore this controller's switches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use steward_proto::v1::{CampaignRequest, PauseElectionRequest};
use steward_runtime::transport::raft_client;

use super::elections::HoldReason;
use super::error::Error;
use super::typ::NodeId;
use super::RaftHandle;

/// How long the target may take to catch up before the transfer is refused.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the new leader may take to be elected.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one campaign of the target may take before it campaigns again.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(700);
/// RPC deadline for the pause and campaign requests.
const RPC_TIMEOUT: Duration = Duration::from_secs(1);

/// Restores the leader's switches however the transfer ends.
struct Restore<'a>(&'a RaftHandle);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        inner.raft.runtime_config().heartbeat(true);
        inner.holds.release(HoldReason::TransferringLeadership);
        inner.transferring.store(false, Ordering::Release);
    }
}

/// Waits (up to [`CATCH_UP_TIMEOUT`]) until `to` holds every entry this leader has.
async fn target_caught_up(handle: &RaftHandle, to: NodeId) -> bool {
    let mut rx = handle.inner.raft.metrics();
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
    caught_up == Ok(true)
}

pub(super) async fn transfer_leadership(
    handle: &RaftHandle,
    to: NodeId,
) -> Result<(NodeId, u64), Error> {
    let ctx = &handle.inner;
    let metrics = handle.metrics();
    if to == ctx.id {
        return Ok((ctx.id, metrics.current_term));
    }
    let membership = metrics.membership_config.membership().clone();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    if !voters.contains(&to) {
        return Err(Error::NotFound(format!("controller {to} is not a voter")));
    }
    if ctx.transferring.swap(true, Ordering::AcqRel) {
        return Err(Error::Transferring);
    }
    let _restore = Restore(handle);

    // 1. Wait for the target to hold every entry.
    if !target_caught_up(handle, to).await {
        return Err(Error::Refused(format!(
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
                let mut client = raft_client(ch);
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

    // 4. Writes stopped a lease ago: what was in flight then is in the log now. The target
    //    must hold it too, or the voters refuse its campaign.
    if !target_caught_up(handle, to).await {
        return Err(Error::Refused(format!(
            "controller {to} has not caught up with the leader's last entries within {CATCH_UP_TIMEOUT:?}"
        )));
    }
    // Ask the target to campaign.
    let target = membership
        .get_node(&to)
        .ok_or_else(|| Error::NotFound(format!("controller {to} has no address")))?;
    let ch = ctx.peers.channel(&target.raft_addr).map_err(|e| {
        Error::Refused(format!(
            "controller {to} at {} is unreachable: {e}",
            target.raft_addr
        ))
    })?;
    let client = raft_client(ch);
    let campaign = || {
        let mut client = client.clone();
        let req = CampaignRequest {
            from: Some(ctx.peers.identity()),
        };
        async move { tokio::time::timeout(RPC_TIMEOUT, client.campaign(req)).await }
    };
    match campaign().await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            return Err(Error::Refused(format!(
                "controller {to} refused to campaign: {}",
                status.message()
            )))
        }
        Err(_) => {
            return Err(Error::Refused(format!(
                "controller {to} did not answer the campaign request within {RPC_TIMEOUT:?}"
            )))
        }
    }

    // 5. Wait for the new leader. A campaign can lose (a voter that heard from this leader
    //    a moment ago still honours its lease): the target campaigns again, at a higher
    //    term, while the other voters' timers are still paused.
    let mut rx = ctx.raft.metrics();
    let deadline = tokio::time::Instant::now() + ELECTION_TIMEOUT;
    let elected = loop {
        let round = tokio::time::timeout(CAMPAIGN_RETRY, async {
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
        match round {
            Ok(found) => break found,
            Err(_) if tokio::time::Instant::now() >= deadline => break None,
            Err(_) => {
                tracing::info!(to, "leadership transfer: the target campaigns again");
                let _ = campaign().await;
            }
        }
    };
    match elected {
        Some(term) => {
            tracing::info!(from = ctx.id, to, term, "leadership transferred");
            Ok((to, term))
        }
        _ => Err(Error::Refused(format!(
            "controller {to} did not become leader within {ELECTION_TIMEOUT:?}; the group elects a leader by itself"
        ))),
    }
}
