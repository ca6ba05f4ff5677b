//! Holds on this controller's elections. openraft 0.9 has one switch for campaigning
//! (`runtime_config().elect`); several parts of Steward need it off for a while:
//!
//! - receiving a snapshot: openraft does not count snapshot chunks as contact with the
//!   leader, so a follower receiving a snapshot that takes longer than its election timeout
//!   would campaign mid-transfer, depose the leader, and restart the transfer forever;
//! - a leadership transfer (on the leader, and on the voters it asks to wait);
//! - the back-off after repeated split votes.
//!
//! Each hold has a reason and an expiry, and elections are on exactly when no hold is in
//! force, so a hold whose owner crashed or forgot it lapses by itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use steward_runtime::{Next, Worker, WorkerError};
use tokio::sync::Notify;

use super::typ::Raft;

/// Why elections are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HoldReason {
    /// Snapshot chunks from the leader are arriving.
    ReceivingSnapshot,
    /// This controller is handing leadership to another.
    TransferringLeadership,
    /// Another controller is taking over leadership and asked this one to wait.
    PausedForTransfer,
    /// Back-off after repeated split votes.
    SplitVoteBackoff,
}

pub struct ElectionHolds {
    raft: Raft,
    holds: Mutex<HashMap<HoldReason, Instant>>,
    changed: std::sync::Arc<Notify>,
}

impl ElectionHolds {
    pub fn new(raft: Raft) -> std::sync::Arc<Self> {
        std::sync::Arc::new(ElectionHolds {
            raft,
            holds: Mutex::new(HashMap::new()),
            changed: std::sync::Arc::new(Notify::new()),
        })
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<HoldReason, Instant>> {
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds elections for `duration` from now (extending an earlier hold for `reason`).
    pub fn hold(&self, reason: HoldReason, duration: Duration) {
        let until = Instant::now() + duration;
        let mut holds = self.holds();
        let entry = holds.entry(reason).or_insert(until);
        *entry = (*entry).max(until);
        self.apply(&mut holds);
        self.changed.notify_one();
    }

    pub fn release(&self, reason: HoldReason) {
        let mut holds = self.holds();
        holds.remove(&reason);
        self.apply(&mut holds);
        self.changed.notify_one();
    }

    /// Drops every hold (this controller was asked to campaign now).
    pub fn release_all(&self) {
        let mut holds = self.holds();
        holds.clear();
        self.apply(&mut holds);
        self.changed.notify_one();
    }

    /// Whether `reason` holds elections now.
    pub fn is_held(&self, reason: HoldReason) -> bool {
        self.holds()
            .get(&reason)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Drops expired holds and sets the switch; the next expiry, if any.
    fn apply(&self, holds: &mut HashMap<HoldReason, Instant>) -> Option<Instant> {
        let now = Instant::now();
        holds.retain(|_, until| *until > now);
        self.raft.runtime_config().elect(holds.is_empty());
        holds.values().min().copied()
    }

    /// Wakes the [`HoldsWorker`] when a hold is taken or released.
    pub fn changed(&self) -> std::sync::Arc<Notify> {
        self.changed.clone()
    }
}

/// Lets holds lapse on time.
pub struct HoldsWorker(pub std::sync::Arc<ElectionHolds>);

impl Worker for HoldsWorker {
    fn name(&self) -> String {
        "election-holds".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        let next = {
            let mut holds = self.0.holds();
            self.0.apply(&mut holds)
        };
        Ok(match next {
            Some(t) => Next::Wait(t.saturating_duration_since(Instant::now())),
            None => Next::Idle,
        })
    }

    fn detail(&self) -> String {
        let holds = self.0.holds();
        let mut reasons: Vec<String> = holds.keys().map(|r| format!("{r:?}")).collect();
        reasons.sort();
        if reasons.is_empty() {
            "elections allowed".into()
        } else {
            format!("elections held: {}", reasons.join(", "))
        }
    }
}
