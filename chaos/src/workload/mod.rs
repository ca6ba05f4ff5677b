//! Workloads that record what their clients saw, for the checkers.

pub mod jobs;
pub mod kv;
pub mod objects;
