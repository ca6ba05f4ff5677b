//! steward-core: Steward's pure domain types and decisions.
//!
//! Everything here is plain data and pure functions: the replicated cluster state and the
//! deterministic `apply` that every controller runs on each committed command, the key-value
//! namespace's rules and limits, and the versioned binary codec used for everything the
//! controller persists. No async runtime, no network, no disk, no clock: the controller feeds
//! this crate with committed log entries and executes what it returns.
//!
//! Must not depend on: tokio, tonic, rocksdb, nvml, or any other I/O crate.

pub mod acl;
pub mod authz;
pub mod chunk;
pub mod chunking;
pub mod codec;
pub mod command;
pub mod features;
pub mod identity;
pub mod inventory;
pub mod job;
pub mod jobs;
pub mod kv;
pub mod liveness;
pub mod node;
pub mod objects;
pub mod scheduler;
pub mod sim;
pub mod state;

pub use command::{Command, CommandResult};
pub use state::ClusterState;

/// Identifier of a controller in the Raft group (its `--id`).
pub type ControllerId = u64;
