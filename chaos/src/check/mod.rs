//! The invariant checkers: pure functions over what a run recorded, each with unit tests
//! on known-bad histories (a checker that cannot fail proves nothing).
//!
//! - [`linearizable`]: the KV history, key by key.
//! - [`objects`]: no wrong byte served; every acknowledged version reads back.
//! - [`placement`]: no GPU over-committed at any applied index; no task on two nodes at
//!   once.
//! - [`raft`]: one leader per term; one state digest per applied index.

pub mod linearizable;
pub mod objects;
pub mod placement;
pub mod raft;
