//! What a scenario run does to the cluster's machines, whoever runs them: [`Nodes`].
//!
//! Two kinds implement it:
//! - [`crate::local::LocalNodes`]: a cluster the harness started itself, each controller
//!   and agent in its own network namespace; processes are the harness's children;
//! - [`crate::staging::StagingNodes`]: running nodes an inventory file describes, driven
//!   through their units' commands over an exec prefix (`ssh root@{address}`).
//!
//! The runner ([`crate::run`]) sees only this trait, so every fault action, workload and
//! checker runs the same code against both. Every method blocks (processes, remote
//! commands): the runner calls them off its workers.

use std::path::PathBuf;

use crate::check::placement::TaskRun;
use crate::harness::netns::{Direction, Netem};

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Victim {
    Controller(u64),
    /// Agent `i` (1-based, in the order the cluster lists them).
    Agent(u32),
}

impl Victim {
    pub fn name(self) -> String {
        match self {
            Victim::Controller(id) => format!("controller {id}"),
            Victim::Agent(i) => format!("agent {i}"),
        }
    }
}

/// The controllers' logs copied out of their stopped processes, to be replayed; the copy
/// (if one was made) is removed when this is dropped.
pub struct StoppedControllers {
    /// (controller id, data dir).
    pub data_dirs: Vec<(u64, PathBuf)>,
    pub _copy: Option<tempfile::TempDir>,
}

/// The machines of a run. Errors are one line, for the report.
pub trait Nodes: Send + Sync {
    /// What drives them, for the report's first lines ("local lab", "inventory FILE").
    fn describe(&self) -> String;
    /// Controller id -> admin API address.
    fn controllers(&self) -> std::collections::BTreeMap<u64, String>;
    /// Controller `id`'s (Raft address, API address), to add it back to the group.
    fn controller_addrs(&self, id: u64) -> Option<(String, String)>;
    /// The agents, 1-based.
    fn agents(&self) -> Vec<u32>;
    /// Agent `i`'s node id, once it has one.
    fn node_id(&self, agent: u32) -> Option<String>;
    /// Every run of a task agent `i` started, from the tasks' own records, wall-clock
    /// milliseconds ([`crate::workload::jobs::collect_runs`]).
    fn task_runs(&self, agent: u32) -> Vec<TaskRun>;

    /// SIGKILL of the process (a crash).
    fn kill(&self, v: Victim) -> Result<(), String>;
    /// Starts the process; starting one that runs is not an error.
    fn start(&self, v: Victim) -> Result<(), String>;
    /// SIGSTOP and SIGCONT.
    fn pause(&self, v: Victim) -> Result<(), String>;
    fn resume(&self, v: Victim) -> Result<(), String>;

    /// Cuts the machines of `victims` off every other machine of the cluster: with
    /// [`Direction::Both`] nothing passes between the sides; with [`Direction::OneWay`]
    /// the victims' packets are dropped while theirs still reach the victims. The harness
    /// still reaches both sides. The partition's id, for [`Nodes::heal`].
    fn partition(&self, victims: &[Victim], direction: Direction) -> Result<u64, String>;
    /// Lifts partition `id`; lifting one that is gone is not an error.
    fn heal(&self, id: u64) -> Result<(), String>;
    /// Why link impairments cannot be applied, if they cannot (checked before a run).
    fn netem_unavailable(&self) -> Option<String>;
    fn netem(&self, v: Victim, netem: &Netem) -> Result<(), String>;
    fn clear_netem(&self, v: Victim) -> Result<(), String>;

    /// Flips a bit in `count` chunk files of agent `i`'s store (chosen by `seed`); how
    /// many it flipped.
    fn bit_rot(&self, agent: u32, count: usize, seed: u64) -> Result<usize, String>;
    /// Fills the filesystem of agent `i`'s data dir, and frees it again.
    fn fill_disk(&self, agent: u32) -> Result<(), String>;
    fn free_disk(&self, agent: u32) -> Result<(), String>;
    /// Why the clock of a process cannot be moved, if it cannot (checked before a run).
    fn clock_skew_unavailable(&self) -> Option<String>;
    /// Moves `v`'s wall clock `offset` seconds (signed, "+30", "-5"; "+0" puts it back).
    fn set_clock(&self, v: Victim, offset: &str) -> Result<(), String>;

    /// Every "became leader" line of every controller's log as (term, id), as far as the
    /// logs can be read.
    fn leaderships(&self) -> Vec<(u64, u64)>;
    /// Stops every controller and hands their data dirs (or copies of them) over for
    /// [`crate::replay`]. It may fail with some stopped: the caller calls
    /// [`Nodes::after_replay`] whatever it returned.
    fn stop_controllers(&self) -> Result<StoppedControllers, String>;
    /// Starts the controllers again where they must keep running (idempotent).
    fn after_replay(&self) -> Result<(), String>;
}

/// Every "became leader" line of one controller's log text as (term, id).
pub fn leaderships_in(log: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for line in log.lines().filter(|l| l.contains("became leader")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| {
                    v.trim_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u64>()
                        .ok()
                })
        };
        if let (Some(term), Some(who)) = (field("term="), field("id=")) {
            out.push((term, who));
        }
    }
    out
}
