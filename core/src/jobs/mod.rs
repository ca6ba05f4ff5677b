//! Jobs and allocations as the cluster state records them.
//!
//! A *job* is a submitted [`JobSpec`] with one *task slot* per task. An *allocation* is one
//! placement of one task on one node: its GPUs (by UUID), share, CPU and memory, and a
//! *generation*, the revision that placed it. The generation is the fence token: an agent's
//! report names the generation it runs, and a report of another generation changes nothing.
//! A task that moves gets a new allocation (new id, new generation); the old one is stopped
//! and stays terminal.
//!
//! Every placement is checked again when it is applied (`ClusterState::apply`), against the
//! capacity the committed allocations hold at that point of the log: a placement whose GPUs,
//! share, CPU or memory are already taken is refused, whole (with its gang), not applied.
//! A stale plan from a deposed leader, or two plans built from the same view, can therefore
//! never over-commit a GPU (Nomad's plan applier follows the same rule).
//!
//! Capacity is held from placement until the allocation is terminal (the agent reported it
//! ended, or its node went down and it was marked lost: the agent has fenced it by then, see
//! ARCHITECTURE.md "Failover and fencing"). A stop asked for (cancel, drain, preemption) keeps
//! holding capacity until the process is gone.

mod apply;
pub mod round;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::JobSpec;

pub(crate) use apply::{alloc_size, job_size};
pub use apply::{AllocReport, NewAllocation, Rendezvous, StopAllocation};

/// Most jobs the state holds, running and finished; a submission beyond it is refused until
/// finished jobs are collected.
pub const MAX_JOBS: usize = 100_000;
/// Most events kept per job and per allocation (oldest dropped first).
pub const MAX_JOB_EVENTS: usize = 32;
/// Most live allocations on one node.
pub const MAX_ALLOCS_PER_NODE: usize = 512;
/// Most allocations one placement command may carry.
pub const MAX_PLACEMENTS_PER_COMMAND: usize = 4096;
/// Longest reason string kept, in bytes (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 1024;

/// Where a job is, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    /// Some task waits for a placement.
    Pending,
    /// Every unfinished task is placed.
    Running,
    /// Every task exited with 0.
    Complete,
    /// A task failed and its restarts and reschedules are spent.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Complete => "complete",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Complete,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// One task of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSlot {
    /// The task's latest allocation (live, or the last one that ended).
    pub alloc: Option<String>,
    /// Allocations made for this task so far (the next one's id suffix).
    pub placements: u32,
    /// Cluster times of the reschedules after failures, within the policy's interval.
    pub reschedules: Vec<u64>,
    /// Not placed again before this cluster time (the reschedule delay).
    pub not_before_ms: u64,
    pub outcome: TaskOutcome,
}

/// Whether a task is still to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// Waiting for a placement or running.
    #[default]
    Open,
    /// Exited with 0.
    Complete,
    /// Failed with its restarts and reschedules spent.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub revision: u64,
    pub at_unix_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub submitted_at_ms: u64,
    pub submitted_revision: u64,
    pub status: JobStatus,
    /// Cluster time of the last status change.
    pub status_since_ms: u64,
    /// Why the job waits, as the scheduler last found it ("no node has 16 GPUs of model
    /// H100"); empty when nothing waits.
    pub pending_reason: String,
    pub tasks: Vec<TaskSlot>,
    /// Oldest first, at most [`MAX_JOB_EVENTS`].
    pub events: Vec<JobEvent>,
}

impl JobRecord {
    /// Tasks that wait for a placement now or later (open, with no live allocation).
    pub fn unplaced_tasks<'a>(
        &'a self,
        allocs: &'a imbl::OrdMap<String, Allocation>,
    ) -> impl Iterator<Item = u32> + 'a {
        self.tasks.iter().enumerate().filter_map(move |(i, t)| {
            let live = t
                .alloc
                .as_ref()
                .and_then(|a| allocs.get(a))
                .is_some_and(|a| !a.state.is_terminal());
            (t.outcome == TaskOutcome::Open && !live).then_some(i as u32)
        })
    }
}

/// What the controller wants an allocation to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DesiredState {
    Run,
    Stop,
}

/// Why an allocation was asked to stop; decides what happens to its task once it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// The job was cancelled: the task is not placed again.
    Cancelled,
    /// Evicted for a higher-priority job (named): placed again when there is room.
    Preempted { by: String },
    /// Its node is draining: placed again elsewhere.
    Drained,
    /// One of its GPUs failed: placed again elsewhere.
    GpuFailed { gpu: String },
    /// Another member of its gang ended: the gang is placed again whole.
    GangMemberEnded { alloc: String },
    /// The task moved elsewhere (its node was down): a returning agent stops the old copy.
    Replaced,
}

impl StopReason {
    pub fn describe(&self) -> String {
        match self {
            StopReason::Cancelled => "job cancelled".into(),
            StopReason::Preempted { by } => format!("preempted by job {by}"),
            StopReason::Drained => "node drained".into(),
            StopReason::GpuFailed { gpu } => format!("GPU {gpu} failed"),
            StopReason::GangMemberEnded { alloc } => {
                format!("gang member {alloc} ended; the gang is placed again whole")
            }
            StopReason::Replaced => "replaced on another node".into(),
        }
    }

    /// Whether the task is placed again once this allocation ended.
    fn replaces(&self) -> bool {
        !matches!(self, StopReason::Cancelled)
    }
}

/// Where an allocation is, as its agent reported it (or as the controller decided, for
/// `Pending` and `Lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AllocState {
    /// Committed; its agent has not reported it yet.
    Pending,
    /// The agent is preparing or (re)starting the process.
    Starting,
    Running,
    /// Its node is down and the job keeps running while disconnected (`on_disconnect =
    /// "keep"`): still holds its capacity, not placed again.
    Unknown,
    // ---- terminal: the process is gone, the capacity is free ----
    /// Exited with 0.
    Complete,
    /// Exited otherwise (or could not start) and will not be restarted in place.
    Failed,
    /// Stopped because it was asked to (cancel, drain, GPU failure, gang).
    Stopped,
    /// Evicted for a higher-priority job.
    Preempted,
    /// Its node went down (the agent fences such work itself) or was removed.
    Lost,
}

impl AllocState {
    pub fn name(self) -> &'static str {
        match self {
            AllocState::Pending => "pending",
            AllocState::Starting => "starting",
            AllocState::Running => "running",
            AllocState::Unknown => "unknown",
            AllocState::Complete => "complete",
            AllocState::Failed => "failed",
            AllocState::Stopped => "stopped",
            AllocState::Preempted => "preempted",
            AllocState::Lost => "lost",
        }
    }

    pub fn is_terminal(self) -> bool {
        self >= AllocState::Complete
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            AllocState::Pending,
            AllocState::Starting,
            AllocState::Running,
            AllocState::Unknown,
            AllocState::Complete,
            AllocState::Failed,
            AllocState::Stopped,
            AllocState::Preempted,
            AllocState::Lost,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `JOB.TASK.N`: the N-th allocation of task TASK of job JOB.
    pub id: String,
    pub job: String,
    pub task: u32,
    pub node: String,
    /// UUIDs of the GPUs it holds (bind by UUID, never by index).
    pub gpus: Vec<String>,
    /// Milli-GPU held on each of `gpus`: 1000 for whole GPUs, less for a share.
    pub gpu_milli: u16,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    /// The fence token: the revision that placed it.
    pub generation: u64,
    pub desired: DesiredState,
    /// Why it should stop, once it should.
    pub stop_reason: Option<StopReason>,
    pub state: AllocState,
    pub state_since_ms: u64,
    /// The exit code of the last exit, when the agent knows it.
    pub exit_code: Option<i32>,
    /// Restarts in place so far.
    pub restarts: u32,
    /// The last reason reported or decided ("out of memory", "node down").
    pub reason: String,
    pub created_at_ms: u64,
    /// The gang rendezvous torchrun and MPI expect, for gang members.
    pub rendezvous: Option<Rendezvous>,
}

impl Allocation {
    /// Whether it holds capacity on its node.
    pub fn holds_capacity(&self) -> bool {
        !self.state.is_terminal()
    }
}

/// A GPU's health as the cluster records it: transitions the leader commits from its
/// agents' judgements, never readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuHealth {
    #[default]
    Healthy,
    /// Works; needs attention. Still placed on.
    Degraded,
    /// Withdrawn from placement; the allocations on it are stopped and placed again.
    Failed,
}

impl GpuHealth {
    pub fn name(self) -> &'static str {
        match self {
            GpuHealth::Healthy => "healthy",
            GpuHealth::Degraded => "degraded",
            GpuHealth::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [GpuHealth::Healthy, GpuHealth::Degraded, GpuHealth::Failed]
            .into_iter()
            .find(|h| h.name() == name)
    }
}

/// An operator's and the cluster's scheduling facts about a node, beside its registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeScheduling {
    /// Nothing new is placed here.
    pub cordoned: bool,
    /// Draining: cordoned, and its allocations are moved off by `deadline_ms` (cluster
    /// time; at once when it is the drain's start).
    pub drain: Option<Drain>,
    /// GPUs whose committed health is not `Healthy`, by UUID.
    pub gpu_health: BTreeMap<String, GpuHealthRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub started_at_ms: u64,
    /// Cluster time by which every allocation is stopped.
    pub deadline_ms: u64,
    /// Cluster time the node was found empty, once it was.
    pub completed_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHealthRecord {
    pub health: GpuHealth,
    pub since_revision: u64,
    pub reason: String,
}

impl NodeScheduling {
    pub fn gpu_health(&self, uuid: &str) -> GpuHealth {
        self.gpu_health
            .get(uuid)
            .map_or(GpuHealth::Healthy, |r| r.health)
    }

    /// Whether new work may be placed here.
    pub fn schedulable(&self) -> bool {
        !self.cordoned && self.drain.is_none()
    }
}

/// What the live allocations hold on one node. Derived from the allocations (never stored):
/// rebuilt when a state is decoded, kept up to date by every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    /// Milli-GPU held, by GPU UUID.
    pub gpu_milli: BTreeMap<String, u32>,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    pub allocs: usize,
    /// The live allocations' ids.
    pub alloc_ids: std::collections::BTreeSet<String>,
}

impl NodeUsage {
    fn add(&mut self, a: &Allocation) {
        self.hold(&a.gpus, a.gpu_milli, a.cpu_millicores, a.memory_mib);
        self.alloc_ids.insert(a.id.clone());
    }

    /// Counts what one placement holds (without an id: a plan's tentative placement).
    fn hold(&mut self, gpus: &[String], gpu_milli: u16, cpu_millicores: u64, memory_mib: u64) {
        for g in gpus {
            *self.gpu_milli.entry(g.clone()).or_default() += u32::from(gpu_milli);
        }
        self.cpu_millicores += cpu_millicores;
        self.memory_mib += memory_mib;
        self.allocs += 1;
    }

    fn remove(&mut self, a: &Allocation) {
        for g in &a.gpus {
            if let Some(m) = self.gpu_milli.get_mut(g) {
                *m = m.saturating_sub(u32::from(a.gpu_milli));
                if *m == 0 {
                    self.gpu_milli.remove(g);
                }
            }
        }
        self.cpu_millicores = self.cpu_millicores.saturating_sub(a.cpu_millicores);
        self.memory_mib = self.memory_mib.saturating_sub(a.memory_mib);
        self.allocs = self.allocs.saturating_sub(1);
        self.alloc_ids.remove(&a.id);
    }

    pub fn is_empty(&self) -> bool {
        self.allocs == 0
    }
}

/// A node's capacity for placements, from its registered inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    /// GPU UUIDs, in index order.
    pub gpus: Vec<String>,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
}

impl NodeCapacity {
    pub fn of(inventory: &crate::inventory::Inventory) -> Self {
        let cpu = &inventory.host.cpu;
        let threads = if cpu.threads > 0 {
            cpu.threads
        } else {
            cpu.cores
        };
        NodeCapacity {
            gpus: inventory.gpus.iter().map(|g| g.uuid.clone()).collect(),
            cpu_millicores: u64::from(threads) * 1000,
            memory_mib: inventory.host.memory_total_bytes.unwrap_or(0) / (1024 * 1024),
        }
    }
}

/// A job's id: its name and the revision that accepted it (`NAME-REVISION`).
pub fn job_id(name: &str, revision: u64) -> String {
    format!("{name}-{revision}")
}

/// The revision that accepted job `id` (None: not a job id). Anything a job pinned when it
/// was accepted (its inputs' versions) existed at that revision.
pub fn accepted_revision(id: &str) -> Option<u64> {
    id.rsplit_once('-')?.1.parse().ok()
}

/// Checks that input `reference`, pinned when job `job_id` was accepted, still names the
/// version the job pinned: a version created after the job (its object deleted and put
/// again, which reuses the numbers) holds other bytes.
pub fn check_pinned_version(
    job_id: &str,
    reference: &str,
    version_created_revision: u64,
) -> Result<(), String> {
    let Some(accepted) = accepted_revision(job_id) else {
        return Err(format!("`{job_id}` is not a job id (NAME-REVISION)"));
    };
    if version_created_revision > accepted {
        return Err(format!(
            "`{reference}` was created at revision {version_created_revision}, after the job was \
             accepted at revision {accepted}: the object was deleted and put again since, and \
             this is not the version the job pinned"
        ));
    }
    Ok(())
}

/// Cuts `reason` to [`MAX_REASON_BYTES`] on a character boundary.
pub fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
