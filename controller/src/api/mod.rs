//! The APIs a controller serves on its api address: `Admin` (operators), `AgentControl`
//! (agents), plus gRPC health and reflection (wired in `server.rs`).
//!
//! Data flow: a write becomes a [`steward_core::Command`] proposed to the local `Raft`; on a
//! follower the call is forwarded to the leader's API (at most [`MAX_FORWARD_HOPS`] hops).
//! A linearizable read asks the leader to confirm its leadership with a quorum
//! (`ensure_linearizable`) and then reads the applied state; a stale read reads locally.

mod admin;
mod agent;
mod context;
pub mod error;
pub mod liveness;
mod proposer;
mod transfer;

pub use admin::AdminService;
pub use agent::AgentControlService;
pub use context::ApiContext;
pub use proposer::Proposer;

/// Most times one call is forwarded between controllers looking for the leader.
pub const MAX_FORWARD_HOPS: u32 = 2;
/// Request metadata carrying how many times a call was forwarded.
pub const FORWARD_HOPS_HEADER: &str = "x-steward-forward-hops";
