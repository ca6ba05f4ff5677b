//! The APIs a controller serves on its api address: `Admin` (operators), `AgentControl`
//! (agents), plus gRPC health and reflection (wired in `server.rs`). Thin adapters: they
//! validate, turn requests into commands or reads, and map results to replies.
//!
//! - `admin.rs`: the `Admin` service, delegating to one file per area: `status.rs`,
//!   `kv.rs`, `membership.rs`, `nodes.rs`, `snapshot.rs`, `jobs.rs` (jobs, allocations,
//!   cordon and drain), `objects.rs` (objects, versions, tags; the write path's plan and
//!   verified commit);
//! - `agent.rs`: the `AgentControl` service (leader hints, registration, heartbeats, the
//!   node's allocations as a stream, and agents' reports of them);
//! - `forward.rs`: the one read path and the one write path, with forwarding to the leader;
//! - `error.rs`: errors and their gRPC statuses.
//!
//! Data flow: a write on a follower is forwarded to the leader's API before anything is
//! queued (at most [`forward::MAX_FORWARD_HOPS`] hops); on the leader it becomes a
//! [`steward_core::Command`] proposed through the [`crate::raft::RaftHandle`]. A linearizable
//! read asks the leader to confirm its leadership with a quorum and then reads the applied
//! state; a stale read reads locally.

pub mod acl;
mod admin;
mod agent;
pub mod error;
pub mod forward;
mod jobs;
mod kv;
mod membership;
mod nodes;
mod objects;
mod snapshot;
mod status;
mod storage;

use std::sync::Arc;

pub use admin::AdminService;
pub use agent::AgentControlService;
use steward_runtime::WorkerSet;

use crate::control::liveness::LivenessTracker;
use crate::raft::RaftHandle;

/// What every API handler reaches: the Raft handle, the leader's observations, and the
/// controller's workers (for `status`).
pub struct ApiContext {
    pub raft: RaftHandle,
    pub cluster_name: String,
    /// Agents' heartbeats and telemetry (leader memory).
    pub liveness: Arc<LivenessTracker>,
    /// Which agent holds which chunk (leader memory).
    pub replicas: Arc<crate::control::replicas::ReplicaTracker>,
    /// The storage repair loop (its progress, for `fsck`).
    pub repair: crate::control::repair::RepairHandle,
    pub repair_delay: std::time::Duration,
    pub workers: WorkerSet,
    /// The state digest `status` last computed, by applied log index.
    pub digest_cache: std::sync::Mutex<Option<(u64, String)>>,
    /// Cancelled when the controller starts to shut down: long-lived streams (agents'
    /// assignment watches) end then, so the listeners can stop.
    pub stopping: steward_runtime::CancellationToken,
    /// How the Raft and API servers admit callers (their counters go to `/metrics`), with
    /// this controller's TLS dir.
    pub security: Vec<(&'static str, steward_runtime::transport::ServerSecurity)>,
}

impl ApiContext {
    /// The digest of `applied` (a copy of the applied state), computed off the async
    /// workers and cached until the next entry is applied.
    pub async fn state_digest(
        &self,
        applied: &crate::raft::store::Applied,
    ) -> Result<String, error::ApiError> {
        let index = applied.last_applied.map_or(0, |l| l.index);
        if let Some((i, d)) = &*self.digest_cache.lock().unwrap_or_else(|p| p.into_inner()) {
            if *i == index {
                return Ok(d.clone());
            }
        }
        let state = applied.state.clone();
        let digest = tokio::task::spawn_blocking(move || state.digest())
            .await
            .map_err(|e| error::ApiError::Internal(e.to_string()))?
            .map_err(|e| error::ApiError::Internal(e.to_string()))?;
        *self.digest_cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((index, digest.clone()));
        Ok(digest)
    }
}
