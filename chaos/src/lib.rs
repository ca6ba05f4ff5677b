//! steward-chaos: the chaos harness. Breaks a cluster on purpose (fault actions in
//! network namespaces, or on staging nodes) while workloads record what clients saw, then
//! checks Steward's promises on the records.
//!
//! - [`harness`]: controller and agent processes, on loopback or each in its own network
//!   namespace ([`harness::netns::Lab`]), and the test PKI (steward-tests re-exports it);
//! - [`workload`]: clients that record what they saw (KV, jobs);
//! - [`fault`]: fault actions behind an undo guard;
//! - [`check`]: the invariant checkers, pure;
//! - [`scenario`]: scenario files; [`run`]: a scenario run and its report
//!   (`steward-chaos run`), on [`nodes::Nodes`]: a local lab ([`local`]) or staging nodes
//!   from an inventory ([`staging`]); [`admin`]: the harness's credentials;
//! - [`replay`]: a stopped controller's committed log replayed into GPU grants;
//! - [`sim`]: the deterministic simulation of the control plane (`steward-chaos sim`).

pub mod admin;
pub mod check;
pub mod fault;
pub mod harness;
pub mod history;
pub mod local;
pub mod nodes;
pub mod replay;
pub mod run;
pub mod scenario;
pub mod sim;
pub mod staging;
pub mod workload;
