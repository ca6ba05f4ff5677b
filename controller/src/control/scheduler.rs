//! The leader's scheduling loop. It wakes when the applied state changes (a submission, a
//! node ready or down, a GPU health change, an allocation ending: each is a committed
//! change) and on a periodic tick, runs one pure round (`steward_core::jobs::round`) on an
//! O(1) copy of the state off the async workers, and proposes what the round decided:
//! placements, preemptions, drain-deadline stops and pending reasons. Every placement is
//! re-checked by `apply`, so a round computed just before a change can be refused, never
//! wrong; the next round sees the change.
//!
//! Two chores ride on the same loop: the cluster clock only moves with stamped entries, so
//! when a reschedule delay or drain deadline is due by this controller's clock and nothing
//! else was proposed, it proposes an empty entry to move it; and it collects finished jobs
//! (`jobs.gc_after`, `jobs.history`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use steward_core::state::ClusterState;

use steward_core::jobs::round::{collection_due, next_due_ms, schedule_round, RoundConfig};
use steward_core::{Command, CommandResult};
use steward_runtime::{Next, Worker, WorkerError};
use tokio::sync::watch;

use super::replicas::ReplicaTracker;
use crate::config::JobsTuning;
use crate::raft::RaftHandle;

/// The longest the loop sleeps without a change.
pub const TICK: Duration = Duration::from_secs(1);
/// How often finished jobs are considered for collection.
pub const COLLECT_EVERY: Duration = Duration::from_secs(30);
/// The feature level that brought jobs.
const JOBS_LEVEL: u32 = 3;
/// Waiting jobs whose input locality one round measures (the oldest first); the rest are
/// placed without the preference.
pub const MAX_LOCALITY_JOBS: usize = 64;

/// For each waiting job with inputs (at most [`MAX_LOCALITY_JOBS`]): the share of its
/// inputs' distinct chunk bytes each node already holds, from the agents' chunk reports.
pub fn input_locality(
    state: &ClusterState,
    replicas: &ReplicaTracker,
) -> HashMap<String, HashMap<String, f64>> {
    let mut waiting: Vec<_> = state
        .jobs
        .values()
        .filter(|j| !j.status.is_terminal() && !j.spec.inputs.is_empty())
        .filter(|j| j.unplaced_tasks(&state.allocs).next().is_some())
        .collect();
    waiting.sort_by_key(|j| j.submitted_revision);
    waiting.truncate(MAX_LOCALITY_JOBS);
    let mut out = HashMap::new();
    for job in waiting {
        let mut chunks = std::collections::BTreeMap::new();
        for v in job
            .spec
            .inputs
            .iter()
            .filter_map(|i| state.version_named(i))
        {
            chunks.extend(v.manifest.distinct_chunks());
        }
        let total: u64 = chunks.values().map(|s| u64::from(*s)).sum();
        if total == 0 {
            continue;
        }
        let held = replicas.bytes_held(chunks.iter().map(|(id, size)| (id, *size)));
        out.insert(
            job.id.clone(),
            held.into_iter()
                .map(|(node, bytes)| (node, bytes as f64 / total as f64))
                .collect(),
        );
    }
    out
}

pub struct SchedulerWorker {
    raft: RaftHandle,
    replicas: Arc<ReplicaTracker>,
    changes: watch::Receiver<u64>,
    tuning: JobsTuning,
    last_collect: Option<Instant>,
    rounds: u64,
    placed: u64,
    refused: u64,
    preempted: u64,
    last_round: Duration,
}

impl SchedulerWorker {
    pub fn new(raft: RaftHandle, replicas: Arc<ReplicaTracker>, tuning: JobsTuning) -> Self {
        SchedulerWorker {
            changes: raft.view().subscribe(),
            raft,
            replicas,
            tuning,
            last_collect: None,
            rounds: 0,
            placed: 0,
            refused: 0,
            preempted: 0,
            last_round: Duration::ZERO,
        }
    }

    /// Waits for the next applied change, at most `at_most`.
    async fn wait_for_change(&mut self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.changes.changed()).await;
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Worker for SchedulerWorker {
    fn name(&self) -> String {
        "scheduler".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if !self.raft.is_leader() || self.raft.cluster_level() < JOBS_LEVEL {
            self.wait_for_change(TICK).await;
            return Ok(Next::Busy);
        }
        self.changes.borrow_and_update();
        let state = self.raft.view().copy().state;
        let config = RoundConfig {
            preemption_gap: self.tuning.preemption_gap,
            input_locality: input_locality(&state, &self.replicas),
            ..RoundConfig::default()
        };
        let started = Instant::now();
        let (state, round) = tokio::task::spawn_blocking(move || {
            let round = schedule_round(&state, &config);
            (state, round)
        })
        .await?;
        self.last_round = started.elapsed();
        self.rounds += 1;
        if !round.commands.is_empty() {
            self.preempted += round.preempted as u64;
            let results =
                futures::future::join_all(round.commands.into_iter().map(|c| self.raft.propose(c)))
                    .await;
            for r in results {
                match r {
                    Ok((_, CommandResult::AllocationsPlaced { allocs, .. })) => {
                        self.placed += allocs.len() as u64
                    }
                    Ok((_, CommandResult::PlacementRefused { reason })) => {
                        self.refused += 1;
                        tracing::debug!(%reason, "a placement was refused (the state moved under the round)");
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("proposing the round's decisions: {e}").into()),
                }
            }
            // Wait for the applied change (or a moment) so a refused plan is not retried hot.
            self.wait_for_change(Duration::from_millis(50)).await;
            return Ok(Next::Busy);
        }
        let now = wall_clock_ms();
        if let Some(due) = next_due_ms(&state) {
            if due <= now {
                // An empty entry: its stamp moves the cluster clock past `due`.
                self.raft
                    .propose(Command::Batch(Vec::new()))
                    .await
                    .map_err(|e| format!("moving the cluster clock: {e}"))?;
                return Ok(Next::Busy);
            }
        }
        if self
            .last_collect
            .is_none_or(|t| t.elapsed() >= COLLECT_EVERY)
        {
            self.last_collect = Some(Instant::now());
            let finished_before_ms = state
                .clock_unix_ms
                .saturating_sub(self.tuning.gc_after.as_millis() as u64);
            if collection_due(&state, finished_before_ms, self.tuning.history) {
                let r = self
                    .raft
                    .propose(Command::CollectJobs {
                        finished_before_ms,
                        keep_at_most: self.tuning.history,
                    })
                    .await
                    .map_err(|e| format!("collecting finished jobs: {e}"))?;
                if let (_, CommandResult::JobsCollected { jobs, allocs, .. }) = r {
                    tracing::info!(jobs, allocs, "collected finished jobs");
                }
                return Ok(Next::Busy);
            }
        }
        let sleep = next_due_ms(&state).map_or(TICK, |due| {
            Duration::from_millis(due.saturating_sub(now)).min(TICK)
        });
        self.wait_for_change(sleep.max(Duration::from_millis(10)))
            .await;
        Ok(Next::Busy)
    }

    fn detail(&self) -> String {
        format!(
            "{} rounds (last {} ms), {} tasks placed, {} plans refused, {} preemptions",
            self.rounds,
            self.last_round.as_millis(),
            self.placed,
            self.refused,
            self.preempted
        )
    }
}
