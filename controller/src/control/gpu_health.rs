//! Commits GPU health transitions. Agents judge each GPU healthy, degraded or failed
//! (`agent/src/telemetry/health.rs`) and send the judgement in every heartbeat's telemetry;
//! the leader holds the latest in memory. This loop compares it with the committed health
//! (`ClusterState::node_scheduling`) and proposes the differences as conditional
//! transitions, never readings: a failed GPU is withdrawn from placement and the work on it
//! is stopped and placed again (`apply`), a recovered one (reset, agent restarted) returns.

use std::sync::Arc;
use std::time::Duration;

use steward_core::jobs::GpuHealth;
use steward_core::node::NodeHealth;
use steward_core::{Command, CommandResult};
use steward_runtime::{Next, Worker, WorkerError};

use super::liveness::LivenessTracker;
use crate::raft::RaftHandle;

/// How often the leader compares agents' judgements with the committed health.
pub const TICK: Duration = Duration::from_millis(250);
/// The feature level that brought GPU health transitions.
const LEVEL: u32 = 3;

pub struct GpuHealthWorker {
    raft: RaftHandle,
    tracker: Arc<LivenessTracker>,
    committed: u64,
}

impl GpuHealthWorker {
    pub fn new(raft: RaftHandle, tracker: Arc<LivenessTracker>) -> Self {
        GpuHealthWorker {
            raft,
            tracker,
            committed: 0,
        }
    }
}

impl Worker for GpuHealthWorker {
    fn name(&self) -> String {
        "gpu-health".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if !self.raft.is_leader() || self.raft.cluster_level() < LEVEL {
            return Ok(Next::Wait(TICK));
        }
        let mut transitions = Vec::new();
        {
            let applied = self.raft.view().read();
            let s = &applied.state;
            for (id, node) in s
                .nodes
                .iter()
                .filter(|(_, n)| n.health == NodeHealth::Ready)
            {
                let Some(t) = self.tracker.telemetry(id) else {
                    continue;
                };
                let sched = s.node_scheduling.get(id);
                for g in &t.gpus {
                    let Some(reported) = GpuHealth::parse(&g.health) else {
                        continue;
                    };
                    if !node.inventory.gpus.iter().any(|x| x.uuid == g.uuid) {
                        continue;
                    }
                    let committed = sched.map_or(GpuHealth::Healthy, |s| s.gpu_health(&g.uuid));
                    if committed != reported {
                        transitions.push(Command::TransitionGpuHealth {
                            node: id.clone(),
                            gpu: g.uuid.clone(),
                            from: committed,
                            to: reported,
                            reason: if g.health_reasons.is_empty() {
                                "reported by the agent".into()
                            } else {
                                g.health_reasons.join("; ")
                            },
                        });
                    }
                }
            }
        }
        if transitions.is_empty() {
            return Ok(Next::Wait(TICK));
        }
        for t in &transitions {
            if let Command::TransitionGpuHealth {
                node,
                gpu,
                from,
                to,
                reason,
            } = t
            {
                tracing::info!(%node, %gpu, from = from.name(), to = to.name(), %reason, "GPU health change");
            }
        }
        let results =
            futures::future::join_all(transitions.into_iter().map(|c| self.raft.propose(c))).await;
        for r in results {
            match r {
                Ok((_, CommandResult::GpuHealthSet { changed: true, .. })) => self.committed += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("committing GPU health: {e}").into()),
            }
        }
        Ok(Next::Wait(TICK))
    }

    fn detail(&self) -> String {
        format!("{} GPU health changes committed", self.committed)
    }
}
