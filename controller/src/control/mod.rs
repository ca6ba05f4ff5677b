//! The leader's control loops. Each is a worker that reads the replicated state (through
//! the [`crate::raft::RaftHandle`]'s `StateView`) and what the leader observes in memory
//! (heartbeats, telemetry), calls pure decisions in steward-core, and proposes the
//! resulting commands through the one bounded proposer queue, in order and awaited (no task
//! per event). On a follower each loop idles.
//!
//! - `liveness`: agents' heartbeats -> node health (ready, suspect, down);
//! - `cluster_level`: the members' reported builds -> the cluster's feature level.
//!
//! Scheduling, failover, repair and remediation join here as further loops.

pub mod cluster_level;
#[cfg(feature = "next-level")]
pub mod level_probe;
pub mod liveness;

use std::sync::Arc;

use steward_runtime::WorkerSet;

use crate::raft::RaftHandle;
use cluster_level::ClusterLevelWorker;
use liveness::{LivenessTracker, LivenessWorker};

/// Starts the leader's control loops on `workers`.
pub fn start(workers: &WorkerSet, raft: &RaftHandle, liveness: &Arc<LivenessTracker>) {
    workers.spawn(
        LivenessWorker::new(raft.clone(), liveness.clone()),
        Some(liveness.waker()),
    );
    workers.spawn(ClusterLevelWorker::new(raft.clone()), None);
    #[cfg(feature = "next-level")]
    workers.spawn(level_probe::LevelProbeWorker::new(raft.clone()), None);
}
