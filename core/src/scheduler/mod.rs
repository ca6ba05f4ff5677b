//! GPU placement decisions: pure functions from a cluster snapshot and a task to a
//! placement, with no I/O and no clock. The controller and the trace simulator
//! (`crate::sim`) call exactly this code.
//!
//! - `model`: node and task resources as the scheduler sees them;
//! - `frag`: the FGD fragmentation measure (Weng et al., ATC '23) over a typical-task
//!   distribution;
//! - `policy`: the placement policies (random, best-fit, dot-product, gpu-packing,
//!   gpu-clustering, FGD, and Steward's own) and GPU selection.

pub mod admission;
pub mod frag;
pub mod model;
pub mod plan;
pub mod policy;

pub use model::{GpuModels, NodeState, TaskShape, MAX_GPUS_PER_NODE};
pub use policy::{Placement, Policy, Scheduler};
