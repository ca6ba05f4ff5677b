//! The leader's control loops. Each is a worker that reads the replicated state (through
//! the [`crate::raft::RaftHandle`]'s `StateView`) and what the leader observes in memory
//! (heartbeats, telemetry), calls pure decisions in steward-core, and proposes the
//! resulting commands through the one bounded proposer queue, in order and awaited (no task
//! per event). On a follower each loop idles.
//!
//! - `liveness`: agents' heartbeats -> node health (ready, suspect, down);
//! - `cluster_level`: the members' reported builds -> the cluster's feature level;
//! - `scheduler`: waiting tasks -> placements, preemptions, drain stops, pending reasons
//!   (failover is a node going down: `apply` marks its work lost, the next round places it);
//! - `gpu_health`: agents' GPU judgements (heartbeat telemetry) -> committed GPU health
//!   transitions, which withdraw a failed GPU and stop the work on it.
//!
//! - `repair`: referenced chunks' replicas (agents' reports) -> copies between agents
//!   (repair, rebalancing) and trims of surplus replicas, throttled; `fsck` reads its survey.
//!
//! `replicas` is the leader's record of which agent holds which chunk (observations, like
//! heartbeats). Storage repair and remediation join here as further loops.

pub mod cluster_level;
pub mod gpu_health;
#[cfg(feature = "next-level")]
pub mod level_probe;
pub mod liveness;
pub mod repair;
pub mod replicas;
pub mod scheduler;

use std::sync::Arc;

use steward_runtime::WorkerSet;

use crate::raft::RaftHandle;
use cluster_level::ClusterLevelWorker;
use liveness::{LivenessTracker, LivenessWorker};

/// Starts the leader's control loops on `workers`; returns the storage repair loop's
/// handle (for `fsck`).
pub fn start(
    workers: &WorkerSet,
    raft: &RaftHandle,
    liveness: &Arc<LivenessTracker>,
    replicas: &Arc<replicas::ReplicaTracker>,
    jobs: &crate::config::JobsTuning,
    storage: repair::RepairTuning,
) -> repair::RepairHandle {
    workers.spawn(
        LivenessWorker::new(raft.clone(), liveness.clone()),
        Some(liveness.waker()),
    );
    workers.spawn(ClusterLevelWorker::new(raft.clone()), None);
    workers.spawn(
        scheduler::SchedulerWorker::new(raft.clone(), replicas.clone(), jobs.clone()),
        None,
    );
    workers.spawn(
        gpu_health::GpuHealthWorker::new(raft.clone(), liveness.clone()),
        None,
    );
    let (repair, handle) =
        repair::RepairWorker::new(raft.clone(), liveness.clone(), replicas.clone(), storage);
    workers.spawn(repair, None);
    #[cfg(feature = "next-level")]
    workers.spawn(level_probe::LevelProbeWorker::new(raft.clone()), None);
    handle
}
