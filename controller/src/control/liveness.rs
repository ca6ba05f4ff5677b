//! The leader's liveness tracking of agents. Heartbeats land in [`LivenessTracker`] (in
//! memory, never in Raft). The [`LivenessWorker`] reconciles on every tick: it reads each
//! node's committed health from the applied state, asks the pure
//! `steward_core::liveness::Detector` what the heartbeats say, and proposes the
//! differences as conditional transitions (`TransitionNodeHealth`: applied only if the node
//! is still in the health they start from), awaiting them before the next tick. So a
//! reordered, failed or overwritten transition (a restore, an earlier leader) is corrected
//! on the next tick. A controller that becomes leader starts with `grace`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_core::liveness::{Detector, LivenessConfig, Transition};
use steward_core::node::NodeHealth;
use steward_core::{Command, CommandResult};
use steward_proto::v1::NodeTelemetry;
use steward_runtime::{Next, Worker, WorkerError};
use tokio::sync::Notify;

use crate::raft::RaftHandle;

/// How often the detector is evaluated.
pub const TICK: Duration = Duration::from_millis(200);
/// Largest telemetry summary kept per node; a larger one is dropped (the heartbeat still
/// counts). 16 GPUs and the event backlog take about 8 KiB.
pub const MAX_TELEMETRY_BYTES: usize = 64 * 1024;

pub struct LivenessTracker {
    start: Instant,
    down_after_ms: u64,
    inner: Mutex<Inner>,
    /// Wakes the worker when a heartbeat brings a node back.
    wake: Arc<Notify>,
}

struct Inner {
    detector: Detector,
    /// The term this controller leads and has given grace in.
    led_term: Option<u64>,
    last_seen: HashMap<String, Instant>,
    /// The latest telemetry summary of each node (leader memory only, like heartbeats).
    telemetry: HashMap<String, Arc<NodeTelemetry>>,
}

impl LivenessTracker {
    pub fn new(config: LivenessConfig) -> Arc<Self> {
        Arc::new(LivenessTracker {
            start: Instant::now(),
            down_after_ms: config.down_after_ms,
            inner: Mutex::new(Inner {
                detector: Detector::new(config),
                led_term: None,
                last_seen: HashMap::new(),
                telemetry: HashMap::new(),
            }),
            wake: Arc::new(Notify::new()),
        })
    }

    /// The silence after which the leader declares a node down (agents fence before it).
    pub fn down_after_ms(&self) -> u64 {
        self.down_after_ms
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The notify that wakes the liveness worker.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Records a heartbeat (or a registration), with the node's telemetry summary when it
    /// carries one. `committed` is the node's committed health: when it is not ready, the
    /// worker is woken to heal it at once.
    pub fn heartbeat(
        &self,
        node: &str,
        telemetry: Option<NodeTelemetry>,
        committed: Option<NodeHealth>,
    ) {
        let now = self.now_ms();
        let telemetry = telemetry.filter(|t| {
            let size = prost::Message::encoded_len(t);
            if size > MAX_TELEMETRY_BYTES {
                tracing::warn!(
                    node,
                    size,
                    limit = MAX_TELEMETRY_BYTES,
                    "telemetry summary too large; dropped"
                );
            }
            size <= MAX_TELEMETRY_BYTES
        });
        let mut inner = self.inner();
        inner.last_seen.insert(node.to_string(), Instant::now());
        if let Some(t) = telemetry {
            inner.telemetry.insert(node.to_string(), Arc::new(t));
        }
        inner.detector.heartbeat(node, now);
        if committed.is_some_and(|h| h != NodeHealth::Ready) {
            self.wake.notify_one();
        }
    }

    /// The latest telemetry summary this controller received from `node`.
    pub fn telemetry(&self, node: &str) -> Option<Arc<NodeTelemetry>> {
        self.inner().telemetry.get(node).cloned()
    }

    /// Milliseconds since the last heartbeat this controller received from `node`.
    pub fn age_ms(&self, node: &str) -> Option<u64> {
        self.inner()
            .last_seen
            .get(node)
            .map(|t| t.elapsed().as_millis() as u64)
    }
}

/// The detector's clock and committer, on the leader only.
pub struct LivenessWorker {
    raft: RaftHandle,
    tracker: Arc<LivenessTracker>,
    committed: u64,
    conflicts: u64,
}

impl LivenessWorker {
    pub fn new(raft: RaftHandle, tracker: Arc<LivenessTracker>) -> Self {
        LivenessWorker {
            raft,
            tracker,
            committed: 0,
            conflicts: 0,
        }
    }

    /// The command for `t` at the cluster's feature level.
    fn command(&self, t: Transition) -> Command {
        if self.raft.cluster_level() >= 2 {
            Command::TransitionNodeHealth {
                node: t.node,
                from: t.from,
                to: t.to,
                reason: t.reason,
            }
        } else {
            Command::SetNodeHealth {
                node: t.node,
                health: t.to,
                reason: t.reason,
            }
        }
    }
}

impl Worker for LivenessWorker {
    fn name(&self) -> String {
        "liveness".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        let m = self.raft.metrics();
        let tracker = &self.tracker;
        let now = tracker.now_ms();
        let transitions = {
            let mut inner = tracker.inner();
            if m.state != openraft::ServerState::Leader {
                inner.led_term = None;
                return Ok(Next::Wait(TICK));
            }
            if inner.led_term != Some(m.current_term) {
                inner.detector.grace();
                inner.led_term = Some(m.current_term);
                tracing::info!(
                    term = m.current_term,
                    "leading: every node gets a fresh liveness period"
                );
            }
            let applied = self.raft.view().read();
            inner.detector.reconcile(
                now,
                applied
                    .state
                    .nodes
                    .iter()
                    .map(|(id, r)| (id.as_str(), r.health)),
            )
        };
        if transitions.is_empty() {
            return Ok(Next::Wait(TICK));
        }
        for t in &transitions {
            tracing::info!(node = %t.node, from = t.from.name(), to = t.to.name(), reason = %t.reason, "node health change");
        }
        // Proposed together (they share one entry) and awaited before the next tick.
        let results = futures::future::join_all(
            transitions
                .into_iter()
                .map(|t| self.raft.propose(self.command(t))),
        )
        .await;
        for r in results {
            match r {
                Ok((_, CommandResult::NodeHealthSet { changed: true, .. })) => self.committed += 1,
                Ok((_, CommandResult::NodeHealthConflict { .. })) => self.conflicts += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("committing node health: {e}").into()),
            }
        }
        Ok(Next::Wait(TICK))
    }

    fn detail(&self) -> String {
        format!(
            "{} health changes committed, {} overtaken by another change",
            self.committed, self.conflicts
        )
    }
}
