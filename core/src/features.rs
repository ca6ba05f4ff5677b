//! Cluster feature levels: how a rolling upgrade adds command kinds without stalling the
//! controllers that do not know them yet.
//!
//! Every command kind has a level (`Command::level`). A build supports every level up to
//! [`SUPPORTED_LEVEL`], and tells its peers in every Raft RPC. The replicated state records
//! the cluster's level (`ClusterState::cluster_level`, starting at [`BASE_LEVEL`]); the
//! leader proposes a command only when its level is at most the cluster's, and raises the
//! cluster's level (`Command::SetClusterLevel`) only when every member of the group has
//! reported supporting it. `apply` refuses, deterministically, a command above the cluster
//! level, so a stray proposal changes nothing anywhere. The level never goes down: once
//! raised, older builds cannot join.
//!
//! Level 1: format 1's commands (KV, controller registration, node registration and health
//! by JSON inventory, batches, restore of a format-1 state).
//! Level 2: stamped entries (the leader's clock), client request ids (at-most-once
//! writes), conditional node-health transitions, typed inventories, node removal, chunked
//! restores, raising the cluster level.
//! Level 3: jobs and allocations (submission, placement with the capacity re-check, stops,
//! agents' reports fenced by generation, cancel, pending reasons, garbage collection), node
//! cordon and drain, GPU health transitions.
//! Level 4: objects and their versions, tags and retention; node maintenance (storage).

/// The level of format 1's commands; a new or migrated cluster starts here.
pub const BASE_LEVEL: u32 = 1;
/// Objects, and the jobs that read them: from this level a submitted job's `inputs` are
/// checked and pinned to a version when the job is accepted.
pub const OBJECTS_LEVEL: u32 = 4;

/// The highest level this build knows.
#[cfg(not(feature = "next-level"))]
pub const SUPPORTED_LEVEL: u32 = 4;
/// The highest level this build knows (a test-only build that adds one command kind, to
/// test rolling upgrades).
#[cfg(feature = "next-level")]
pub const SUPPORTED_LEVEL: u32 = 5;
