//! The leader's liveness tracking of agents: heartbeats land here (in memory, never in
//! Raft); a worker ticks the pure `steward_core::liveness::Detector` and commits the
//! health transitions it proposes. A controller that becomes leader starts with `grace`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use steward_core::liveness::{Detector, LivenessConfig, Transition};
use steward_core::Command;
use steward_proto::v1::NodeTelemetry;
use tokio_util::sync::CancellationToken;

use super::ApiContext;

/// How often the detector is evaluated.
pub const TICK: Duration = Duration::from_millis(200);

pub struct LivenessTracker {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    detector: Detector,
    /// The term this controller leads and has given grace in.
    led_term: Option<u64>,
    last_seen: HashMap<String, Instant>,
    /// The latest telemetry summary of each node (leader memory only, like heartbeats).
    telemetry: HashMap<String, Arc<NodeTelemetry>>,
}

/// Largest telemetry summary kept per node; a larger one is dropped (the heartbeat still
/// counts). 16 GPUs and the event backlog take about 8 KiB.
pub const MAX_TELEMETRY_BYTES: usize = 64 * 1024;

impl LivenessTracker {
    pub fn new(config: LivenessConfig) -> Arc<Self> {
        Arc::new(LivenessTracker {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                detector: Detector::new(config),
                led_term: None,
                last_seen: HashMap::new(),
                telemetry: HashMap::new(),
            }),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat (or a registration), with the node's telemetry summary when it
    /// carries one; the transition back to ready, if any.
    pub fn heartbeat(&self, node: &str, telemetry: Option<NodeTelemetry>) -> Option<Transition> {
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
        inner.detector.heartbeat(node, now)
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

/// Commits a health transition (in the background: heartbeats never wait on Raft).
pub fn commit(ctx: &Arc<ApiContext>, t: Transition) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        tracing::info!(node = %t.node, to = t.to.name(), reason = %t.reason, "node health change");
        let node = t.node.clone();
        let command = Command::SetNodeHealth {
            node: t.node,
            health: t.to,
            reason: t.reason,
        };
        if let Err(e) = ctx.write(command).await {
            tracing::warn!(error = %e, node = %node, "could not commit a node health change; will retry");
            // Forget the belief: the detector proposes the change again on its next tick.
            let committed = ctx.view.read().state.nodes.get(&node).map(|r| r.health);
            if let Some(h) = committed {
                ctx.liveness.inner().detector.committed(&node, h);
            }
        }
    });
}

/// The detector's clock, on the leader only.
pub async fn run(ctx: Arc<ApiContext>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let (state, term) = {
            let m = ctx.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        let tracker = &ctx.liveness;
        let now = tracker.now_ms();
        let transitions = {
            let mut inner = tracker.inner();
            if state != ServerState::Leader {
                inner.led_term = None;
                continue;
            }
            if inner.led_term != Some(term) {
                let applied = ctx.view.read();
                let nodes: Vec<(String, steward_core::node::NodeHealth)> = applied
                    .state
                    .nodes
                    .iter()
                    .map(|(id, r)| (id.clone(), r.health))
                    .collect();
                drop(applied);
                inner
                    .detector
                    .grace(now, nodes.iter().map(|(id, h)| (id.as_str(), *h)));
                inner.led_term = Some(term);
                tracing::info!(
                    term,
                    nodes = nodes.len(),
                    "leading: every node gets a fresh liveness period"
                );
                continue;
            }
            inner.detector.tick(now)
        };
        for t in transitions {
            commit(&ctx, t);
        }
    }
}
