//! The Raft layer's own background work, as workers:
//!
//! - [`RegisterSelf`]: records this controller's data-dir incarnation and API address in the
//!   cluster state once it is a member, and stops the controller if the cluster knows its
//!   id under another incarnation (its data dir was wiped);
//! - [`SplitVoteBreaker`]: randomised back-off for repeated split votes;
//! - [`LeadershipLog`]: one log line per term this controller leads (the black-box tests
//!   read them to check that no term had two leaders).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use steward_proto::v1::RegisterControllerRequest;
use steward_runtime::transport::raft_client;
use steward_runtime::{Next, Worker, WorkerError};
use tokio::sync::watch;

use super::elections::{ElectionHolds, HoldReason};
use super::network::{wiped_message, PeerShared};
use super::typ::{Raft, RaftMetrics};
use crate::config::RaftTuning;

/// How often an unregistered controller retries registering with the leader.
const REGISTER_RETRY: Duration = Duration::from_millis(500);
/// Deadline of one registration call.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct RegisterSelf {
    raft: Raft,
    peers: Arc<PeerShared>,
    api_addr: String,
    attempts: u64,
}

impl RegisterSelf {
    pub fn new(raft: Raft, peers: Arc<PeerShared>, api_addr: String) -> Self {
        RegisterSelf {
            raft,
            peers,
            api_addr,
            attempts: 0,
        }
    }
}

impl Worker for RegisterSelf {
    fn name(&self) -> String {
        "register-controller".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        let peers = &self.peers;
        let leader_addr = {
            let applied = peers.view.read();
            let record = applied.state.controllers.get(&peers.id).cloned();
            let m = self.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership();
            match record {
                Some(r) if r.incarnation != peers.incarnation => {
                    peers.fail(wiped_message(peers.id, r.incarnation, peers.incarnation));
                    return Ok(Next::Done);
                }
                Some(r) if r.api_addr == self.api_addr => {
                    tracing::info!(id = peers.id, "registered with the cluster");
                    return Ok(Next::Done);
                }
                _ if membership.get_node(&peers.id).is_none() => None,
                _ => m
                    .current_leader
                    .and_then(|l| membership.get_node(&l).map(|n| n.raft_addr.clone())),
            }
        };
        let Some(addr) = leader_addr else {
            return Ok(Next::Wait(REGISTER_RETRY));
        };
        self.attempts += 1;
        let mut client = raft_client(peers.channel(&addr)?);
        let req = RegisterControllerRequest {
            from: Some(peers.identity()),
            api_addr: self.api_addr.clone(),
        };
        match tokio::time::timeout(REGISTER_TIMEOUT, client.register_controller(req)).await {
            Ok(Ok(reply)) => {
                let recorded = reply.into_inner().recorded_incarnation;
                if recorded != peers.incarnation {
                    peers.fail(wiped_message(peers.id, recorded, peers.incarnation));
                    return Ok(Next::Done);
                }
            }
            Ok(Err(status)) => tracing::debug!(%status, "registration not accepted yet"),
            Err(_) => tracing::debug!("registration timed out"),
        }
        Ok(Next::Wait(REGISTER_RETRY))
    }

    fn detail(&self) -> String {
        format!("{} attempts", self.attempts)
    }
}

/// Randomised back-off for repeated split votes. openraft 0.9 draws a controller's
/// election timeout once per process, so two candidates whose timeouts happen to be close
/// can split the vote round after round (seen in tests: 10 rounds, 4 s). From the second
/// consecutive candidacy without a leader in between, this controller sits out one more
/// election_timeout_max plus a random share of election_timeout_min before it may campaign
/// again, which desynchronises the candidates as the Raft paper's randomised timeouts intend.
/// The first retry is left alone: it is usually a vote refused under the old leader's lease.
pub struct SplitVoteBreaker {
    rx: watch::Receiver<RaftMetrics>,
    holds: Arc<ElectionHolds>,
    tuning: RaftTuning,
    last_term: u64,
    streak: u32,
    backoffs: u64,
}

impl SplitVoteBreaker {
    pub fn new(raft: &Raft, holds: Arc<ElectionHolds>, tuning: RaftTuning) -> Self {
        SplitVoteBreaker {
            rx: raft.metrics(),
            holds,
            tuning,
            last_term: 0,
            streak: 0,
            backoffs: 0,
        }
    }
}

impl Worker for SplitVoteBreaker {
    fn name(&self) -> String {
        "split-vote-breaker".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        let backoff = {
            let m = self.rx.borrow_and_update();
            if m.current_leader.is_some() {
                self.streak = 0;
            }
            if m.state == ServerState::Candidate && m.current_term != self.last_term {
                self.last_term = m.current_term;
                self.streak += 1;
                self.streak >= 2
            } else {
                false
            }
        };
        if backoff {
            let min = self.tuning.election_timeout_min.as_millis().max(1) as u64;
            let pause = self.tuning.election_timeout_max
                + Duration::from_millis(rand::random_range(0..min));
            self.holds.hold(HoldReason::SplitVoteBackoff, pause);
            self.backoffs += 1;
            return Ok(Next::Wait(pause));
        }
        if self.rx.changed().await.is_err() {
            return Ok(Next::Done);
        }
        Ok(Next::Busy)
    }

    fn detail(&self) -> String {
        format!("{} back-offs", self.backoffs)
    }
}

/// Logs every leadership this controller takes, one line per term.
pub struct LeadershipLog {
    rx: watch::Receiver<RaftMetrics>,
    logged_term: Option<u64>,
}

impl LeadershipLog {
    pub fn new(raft: &Raft) -> Self {
        LeadershipLog {
            rx: raft.metrics(),
            logged_term: None,
        }
    }
}

impl Worker for LeadershipLog {
    fn name(&self) -> String {
        "leadership-log".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        {
            let m = self.rx.borrow_and_update();
            if m.state == ServerState::Leader && self.logged_term != Some(m.current_term) {
                self.logged_term = Some(m.current_term);
                tracing::info!(term = m.current_term, id = m.id, "became leader");
            }
        }
        if self.rx.changed().await.is_err() {
            return Ok(Next::Done);
        }
        Ok(Next::Busy)
    }
}

/// Stamps each of openraft's metrics reports as it arrives, for the leader lease
/// (`super::LeaseClock`).
pub struct LeaseWatch {
    rx: watch::Receiver<RaftMetrics>,
    clock: Arc<super::LeaseClock>,
}

impl LeaseWatch {
    pub fn new(raft: &Raft, clock: Arc<super::LeaseClock>) -> Self {
        LeaseWatch {
            rx: raft.metrics(),
            clock,
        }
    }
}

impl Worker for LeaseWatch {
    fn name(&self) -> String {
        "lease-watch".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        self.clock.observe(&self.rx.borrow_and_update());
        if self.rx.changed().await.is_err() {
            return Ok(Next::Done);
        }
        Ok(Next::Busy)
    }
}
