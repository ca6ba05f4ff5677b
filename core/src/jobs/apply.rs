//! `ClusterState::apply` for the job commands: submission, placement (with the capacity
//! re-check), stops, agents' reports (fenced by generation), node scheduling, GPU health
//! transitions and collection of finished jobs. Pure and deterministic like the rest of
//! `apply`: time is the cluster clock.

use serde::{Deserialize, Serialize};

use super::*;
use crate::command::CommandResult;
use crate::job::JobSpec;
use crate::node::{NodeEvent, NodeHealth};
use crate::objects::VersionSelector;
use crate::state::ClusterState;

/// One placement of a plan: task `task` of the plan's job on `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewAllocation {
    pub task: u32,
    pub node: String,
    /// GPU UUIDs.
    pub gpus: Vec<String>,
    /// Milli-GPU on each GPU: 1000 for whole GPUs.
    pub gpu_milli: u16,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    pub rendezvous: Option<Rendezvous>,
}

/// What a gang member needs to find the others (torchrun's and MPI's environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendezvous {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: u32,
    pub world_size: u32,
    pub local_rank: u32,
}

/// Ask one allocation (of this generation) to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAllocation {
    pub alloc: String,
    pub generation: u64,
    pub reason: StopReason,
}

/// An agent's report of one allocation's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocReport {
    pub alloc: String,
    /// The generation the agent runs; a report of another generation changes nothing.
    pub generation: u64,
    pub state: AllocState,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub reason: String,
}

/// Counted bytes of a job beyond its spec's strings.
const JOB_OVERHEAD: u64 = 512;
/// Counted bytes of one task slot.
const TASK_OVERHEAD: u64 = 64;
/// Counted bytes of one allocation beyond its strings.
const ALLOC_OVERHEAD: u64 = 256;

pub(crate) fn job_size(job: &JobRecord) -> u64 {
    let s = &job.spec;
    let strings = s.name.len()
        + s.command.len()
        + s.args.iter().map(String::len).sum::<usize>()
        + s.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + s.inputs.iter().map(String::len).sum::<usize>();
    strings as u64 + JOB_OVERHEAD + TASK_OVERHEAD * job.tasks.len() as u64
}

pub(crate) fn alloc_size(a: &Allocation) -> u64 {
    (a.id.len() + a.node.len() + a.gpus.iter().map(String::len).sum::<usize>()) as u64
        + ALLOC_OVERHEAD
}

fn refused(reason: impl Into<String>) -> CommandResult {
    CommandResult::PlacementRefused {
        reason: reason.into(),
    }
}

impl ClusterState {
    pub(crate) fn submit_job(&mut self, revision: u64, mut spec: JobSpec) -> CommandResult {
        if let Err(e) = spec.validate() {
            return CommandResult::JobRefused {
                reason: e.to_string(),
            };
        }
        if self.cluster_level >= crate::features::OBJECTS_LEVEL {
            match self.pin_inputs(&spec.inputs) {
                Ok(pinned) => spec.inputs = pinned,
                Err(reason) => return CommandResult::JobRefused { reason },
            }
        }
        if self.jobs.len() >= MAX_JOBS {
            return CommandResult::JobRefused {
                reason: format!(
                    "the cluster holds {MAX_JOBS} jobs, its limit; finished jobs are collected after the controller's job_gc_after"
                ),
            };
        }
        let id = crate::jobs::job_id(&spec.name, revision);
        let job = JobRecord {
            id: id.clone(),
            tasks: vec![TaskSlot::default(); spec.tasks as usize],
            spec,
            submitted_at_ms: self.clock_unix_ms,
            submitted_revision: revision,
            status: JobStatus::Pending,
            status_since_ms: self.clock_unix_ms,
            pending_reason: String::new(),
            events: Vec::new(),
        };
        let size = job_size(&job);
        if let Some(full) = self.refuse_growth(0, size) {
            return full;
        }
        self.counted_bytes += size;
        self.jobs.insert(id.clone(), job);
        self.job_event(&id, revision, "submitted".into());
        CommandResult::JobSubmitted { job: id, revision }
    }

    /// Each input (`NAME`, `NAME@VERSION`, `NAME:TAG`) as the version it names now,
    /// `NAME@VERSION`: the job reads those bytes however tags move later.
    pub(crate) fn pin_inputs(&self, inputs: &[String]) -> Result<Vec<String>, String> {
        crate::job::validate_inputs(inputs).map_err(|e| e.to_string())?;
        inputs
            .iter()
            .map(|input| {
                let (name, selector) = VersionSelector::parse_reference(input)?;
                let object = self
                    .objects
                    .get(&name)
                    .ok_or_else(|| format!("input `{input}`: no object `{name}`"))?;
                let version = selector.resolve(object).ok_or_else(|| {
                    format!("input `{input}`: `{name}` has no version {selector}")
                })?;
                Ok(format!("{name}@{version}"))
            })
            .collect()
    }

    pub(crate) fn cancel_job(&mut self, revision: u64, job: String) -> CommandResult {
        let Some(record) = self.jobs.get(&job) else {
            return CommandResult::UnknownJob { job };
        };
        if record.status.is_terminal() {
            return CommandResult::JobUpdated {
                changed: false,
                revision: revision - 1,
            };
        }
        let live = self.live_allocs_of(&job);
        for id in live {
            self.ask_stop(&id, StopReason::Cancelled);
        }
        self.set_job_status(&job, JobStatus::Cancelled);
        self.job_event(&job, revision, "cancelled by an operator".into());
        CommandResult::JobUpdated {
            changed: true,
            revision,
        }
    }

    pub(crate) fn set_pending_reason(
        &mut self,
        revision: u64,
        job: String,
        reason: String,
    ) -> CommandResult {
        let reason = bounded_reason(reason);
        match self.jobs.get_mut(&job) {
            None => CommandResult::UnknownJob { job },
            Some(j) if j.pending_reason == reason || j.status.is_terminal() => {
                CommandResult::JobUpdated {
                    changed: false,
                    revision: revision - 1,
                }
            }
            Some(j) => {
                j.pending_reason = reason;
                CommandResult::JobUpdated {
                    changed: true,
                    revision,
                }
            }
        }
    }

    /// Places tasks of `job`, all or none: each placement is checked against what the
    /// committed allocations hold now, together with the placements before it in the
    /// command. A gang's placements must cover all its tasks.
    pub(crate) fn place_allocations(
        &mut self,
        revision: u64,
        job: String,
        placements: Vec<NewAllocation>,
    ) -> CommandResult {
        if let Err(reason) = self.check_placements(&job, &placements) {
            return refused(reason);
        }
        let now = self.clock_unix_ms;
        let mut ids = Vec::with_capacity(placements.len());
        let mut added = 0;
        for p in placements {
            let record = self.jobs.get_mut(&job).expect("checked");
            let slot = &mut record.tasks[p.task as usize];
            slot.placements += 1;
            let id = format!("{job}.{}.{}", p.task, slot.placements);
            slot.alloc = Some(id.clone());
            let alloc = Allocation {
                id: id.clone(),
                job: job.clone(),
                task: p.task,
                node: p.node,
                gpus: p.gpus,
                gpu_milli: p.gpu_milli,
                cpu_millicores: p.cpu_millicores,
                memory_mib: p.memory_mib,
                generation: revision,
                desired: DesiredState::Run,
                stop_reason: None,
                state: AllocState::Pending,
                state_since_ms: now,
                exit_code: None,
                restarts: 0,
                reason: String::new(),
                created_at_ms: now,
                rendezvous: p.rendezvous,
            };
            added += alloc_size(&alloc);
            self.usage
                .entry(alloc.node.clone())
                .or_default()
                .add(&alloc);
            self.allocs.insert(id.clone(), alloc);
            ids.push(id);
        }
        self.counted_bytes += added;
        let summary: Vec<String> = ids
            .iter()
            .take(8)
            .map(|id| format!("{id} on {}", self.allocs[id].node))
            .collect();
        let more = ids.len().saturating_sub(summary.len());
        self.job_event(
            &job,
            revision,
            format!(
                "placed {}{}",
                summary.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        );
        self.refresh_job_status(&job);
        CommandResult::AllocationsPlaced {
            allocs: ids,
            revision,
        }
    }

    fn check_placements(&self, job: &str, placements: &[NewAllocation]) -> Result<(), String> {
        let Some(record) = self.jobs.get(job) else {
            return Err(format!("job {job} does not exist"));
        };
        if record.status.is_terminal() {
            return Err(format!("job {job} is {}", record.status.name()));
        }
        if placements.is_empty() || placements.len() > MAX_PLACEMENTS_PER_COMMAND {
            return Err(format!(
                "a plan carries 1 to {MAX_PLACEMENTS_PER_COMMAND} placements, not {}",
                placements.len()
            ));
        }
        let spec = &record.spec;
        let unplaced: std::collections::BTreeSet<u32> =
            record.unplaced_tasks(&self.allocs).collect();
        let mut seen = std::collections::BTreeSet::new();
        for p in placements {
            if !seen.insert(p.task) {
                return Err(format!("task {} is placed twice in one plan", p.task));
            }
            if !unplaced.contains(&p.task) {
                return Err(format!(
                    "task {} of job {job} is already placed or finished",
                    p.task
                ));
            }
            let slot = &record.tasks[p.task as usize];
            if slot.not_before_ms > self.clock_unix_ms {
                return Err(format!(
                    "task {} of job {job} waits until {} (reschedule delay)",
                    p.task, slot.not_before_ms
                ));
            }
        }
        if spec.gang && seen.len() != spec.tasks as usize {
            return Err(format!(
                "job {job} is a gang of {} tasks; a plan places all of them or none, this one places {}",
                spec.tasks,
                seen.len()
            ));
        }
        let r = &spec.resources;
        let (want_gpus, want_milli) = if r.gpus > 0 {
            (r.gpus as usize, 1000u16)
        } else if r.gpu_milli > 0 {
            (1, r.gpu_milli as u16)
        } else {
            (0, 0)
        };
        // What each node holds with the placements before this one in the plan.
        let mut tentative: BTreeMap<&str, NodeUsage> = BTreeMap::new();
        for p in placements {
            let shape_ok = p.gpus.len() == want_gpus
                && (want_gpus == 0 || p.gpu_milli == want_milli)
                && p.cpu_millicores == r.cpu_millicores
                && p.memory_mib == r.memory_mib;
            if !shape_ok {
                return Err(format!(
                    "task {} does not match the job's resources ({} GPUs at {} milli, {} mCPU, {} MiB)",
                    p.task, want_gpus, want_milli, r.cpu_millicores, r.memory_mib
                ));
            }
            let Some(node) = self.nodes.get(&p.node) else {
                return Err(format!("node {} is not registered", p.node));
            };
            if node.health != NodeHealth::Ready {
                return Err(format!("node {} is {}", p.node, node.health.name()));
            }
            let sched = self.node_scheduling.get(&p.node);
            if sched.is_some_and(|s| !s.schedulable()) {
                return Err(format!("node {} is cordoned or draining", p.node));
            }
            if let Some(why) = spec.constraint_refusal(&node.labels) {
                return Err(format!("node {}: {why}", p.node));
            }
            let cap = NodeCapacity::of(&node.inventory);
            let usage = tentative
                .entry(p.node.as_str())
                .or_insert_with(|| self.usage.get(&p.node).cloned().unwrap_or_default());
            let mut distinct = std::collections::BTreeSet::new();
            for g in &p.gpus {
                if !distinct.insert(g) {
                    return Err(format!("GPU {g} is given twice to task {}", p.task));
                }
                if !cap.gpus.contains(g) {
                    return Err(format!("node {} has no GPU {g}", p.node));
                }
                if sched.is_some_and(|s| s.gpu_health(g) == GpuHealth::Failed) {
                    return Err(format!("GPU {g} on node {} has failed", p.node));
                }
                let held = usage.gpu_milli.get(g).copied().unwrap_or(0);
                if held + u32::from(p.gpu_milli) > 1000 {
                    return Err(format!(
                        "GPU {g} on node {} has {} milli free, task {} needs {}",
                        p.node,
                        1000 - held.min(1000),
                        p.task,
                        p.gpu_milli
                    ));
                }
            }
            let over =
                |held: u64, want: u64, cap: u64| held.checked_add(want).is_none_or(|t| t > cap);
            if over(usage.cpu_millicores, p.cpu_millicores, cap.cpu_millicores) {
                return Err(format!(
                    "node {} has {} mCPU free, task {} needs {}",
                    p.node,
                    cap.cpu_millicores.saturating_sub(usage.cpu_millicores),
                    p.task,
                    p.cpu_millicores
                ));
            }
            if over(usage.memory_mib, p.memory_mib, cap.memory_mib) {
                return Err(format!(
                    "node {} has {} MiB free, task {} needs {}",
                    p.node,
                    cap.memory_mib.saturating_sub(usage.memory_mib),
                    p.task,
                    p.memory_mib
                ));
            }
            if usage.allocs >= MAX_ALLOCS_PER_NODE {
                return Err(format!(
                    "node {} runs {MAX_ALLOCS_PER_NODE} allocations, its limit",
                    p.node
                ));
            }
            // Count this placement against the next ones of the plan.
            usage.hold(&p.gpus, p.gpu_milli, p.cpu_millicores, p.memory_mib);
        }
        let grows: u64 = placements
            .iter()
            .map(|p| {
                (p.node.len() + p.gpus.iter().map(String::len).sum::<usize>() + job.len() + 16)
                    as u64
                    + ALLOC_OVERHEAD
            })
            .sum();
        if let Some(CommandResult::StateFull { limit, would_be }) = self.refuse_growth(0, grows) {
            return Err(format!(
                "the cluster state would grow to {would_be} bytes, past its limit of {limit}"
            ));
        }
        Ok(())
    }

    pub(crate) fn stop_allocations(
        &mut self,
        revision: u64,
        stops: Vec<StopAllocation>,
    ) -> CommandResult {
        let mut stopped = 0;
        for s in stops {
            let ok = self.allocs.get(&s.alloc).is_some_and(|a| {
                a.generation == s.generation
                    && !a.state.is_terminal()
                    && a.desired == DesiredState::Run
            });
            if ok {
                let job = self.allocs[&s.alloc].job.clone();
                self.job_event(
                    &job,
                    revision,
                    format!("stopping {}: {}", s.alloc, s.reason.describe()),
                );
                self.ask_stop(&s.alloc, s.reason);
                stopped += 1;
            }
        }
        CommandResult::AllocationsStopped {
            stopped,
            revision: if stopped > 0 { revision } else { revision - 1 },
        }
    }

    pub(crate) fn report_allocations(
        &mut self,
        revision: u64,
        node: String,
        reports: Vec<AllocReport>,
    ) -> CommandResult {
        let (mut applied, mut ignored) = (0u32, 0u32);
        for r in reports {
            let current = self.allocs.get(&r.alloc).filter(|a| {
                a.node == node
                    && a.generation == r.generation
                    && !a.state.is_terminal()
                    && r.state != AllocState::Pending
            });
            let Some(a) = current else {
                ignored += 1;
                continue;
            };
            let unchanged = a.state == r.state
                && a.exit_code == r.exit_code
                && a.restarts == r.restarts
                && a.reason == r.reason;
            if unchanged {
                ignored += 1;
                continue;
            }
            applied += 1;
            let mut state = r.state;
            if state.is_terminal() {
                if let Some(StopReason::Preempted { .. }) = a.stop_reason {
                    if state != AllocState::Complete {
                        state = AllocState::Preempted;
                    }
                } else if a.stop_reason.is_some() && state == AllocState::Failed {
                    // Killed because it was asked to stop: that is a stop, not a failure.
                    state = AllocState::Stopped;
                }
            }
            let (job, restarted) = (a.job.clone(), r.restarts > a.restarts);
            let now = self.clock_unix_ms;
            {
                let a = self.allocs.get_mut(&r.alloc).expect("checked");
                if a.state != state {
                    a.state_since_ms = now;
                }
                a.state = state;
                a.exit_code = r.exit_code;
                a.restarts = r.restarts;
                a.reason = bounded_reason(r.reason);
            }
            if restarted {
                let a = &self.allocs[&r.alloc];
                let msg = format!(
                    "{} restarted in place ({} so far){}",
                    a.id,
                    a.restarts,
                    if a.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", a.reason)
                    }
                );
                self.job_event(&job, revision, msg);
            }
            if state.is_terminal() {
                self.alloc_ended(revision, &r.alloc);
            } else {
                self.refresh_job_status(&job);
            }
        }
        CommandResult::AllocationsReported {
            applied,
            ignored,
            revision: if applied > 0 { revision } else { revision - 1 },
        }
    }

    pub(crate) fn set_node_scheduling(
        &mut self,
        revision: u64,
        node: String,
        cordoned: bool,
        drain_deadline_ms: Option<u64>,
    ) -> CommandResult {
        let Some(health) = self.nodes.get(&node).map(|n| n.health) else {
            return CommandResult::UnknownNode { node };
        };
        let now = self.clock_unix_ms;
        let before = self.node_scheduling.get(&node).cloned().unwrap_or_default();
        let mut after = before.clone();
        after.cordoned = cordoned || drain_deadline_ms.is_some();
        after.drain = match (drain_deadline_ms, &before.drain) {
            (None, _) => None,
            (Some(d), Some(old)) if old.deadline_ms == d.max(old.started_at_ms) => {
                before.drain.clone()
            }
            (Some(d), _) => Some(Drain {
                started_at_ms: now,
                deadline_ms: d.max(now),
                completed_at_ms: None,
            }),
        };
        if after == before {
            return CommandResult::NodeSchedulingSet {
                changed: false,
                revision: revision - 1,
            };
        }
        let reason = match (&after.drain, after.cordoned) {
            (Some(d), _) if d.deadline_ms <= now => {
                "drain started: moving its allocations off now".to_string()
            }
            (Some(d), _) => format!(
                "drain started: allocations stop by cluster time {} ms ({} s from now)",
                d.deadline_ms,
                (d.deadline_ms - now) / 1000
            ),
            (None, true) => "cordoned: no new placements".into(),
            (None, false) => "uncordoned: placements allowed".into(),
        };
        self.node_scheduling.insert(node.clone(), after);
        self.push_event(NodeEvent {
            revision,
            at_unix_ms: now,
            node: node.clone(),
            from: Some(health),
            to: Some(health),
            reason,
        });
        self.drain_due(revision, &node);
        CommandResult::NodeSchedulingSet {
            changed: true,
            revision,
        }
    }

    /// Stops the allocations of a draining node whose deadline has come, and completes the
    /// drain once nothing is left. Called when a drain starts and when an allocation on a
    /// draining node ends; a deadline in the future is the scheduling round's to enforce
    /// (it proposes the stops once the cluster clock passes it).
    pub(crate) fn drain_due(&mut self, revision: u64, node: &str) {
        let Some(drain) = self.node_scheduling.get(node).and_then(|s| s.drain.clone()) else {
            return;
        };
        if drain.completed_at_ms.is_some() {
            return;
        }
        let now = self.clock_unix_ms;
        if drain.deadline_ms <= now {
            for id in self.live_allocs_on(node) {
                if self.allocs[&id].desired == DesiredState::Run {
                    self.ask_stop(&id, StopReason::Drained);
                }
            }
        }
        if self.usage.get(node).is_none_or(NodeUsage::is_empty) {
            let health = self.nodes.get(node).map(|n| n.health);
            if let Some(d) = self
                .node_scheduling
                .get_mut(node)
                .and_then(|s| s.drain.as_mut())
            {
                d.completed_at_ms = Some(now);
            }
            self.push_event(NodeEvent {
                revision,
                at_unix_ms: now,
                node: node.to_string(),
                from: health,
                to: health,
                reason: "drain complete: no allocations left".into(),
            });
        }
    }

    pub(crate) fn transition_gpu_health(
        &mut self,
        revision: u64,
        node: String,
        gpu: String,
        from: GpuHealth,
        to: GpuHealth,
        reason: String,
    ) -> CommandResult {
        let Some(n) = self.nodes.get(&node) else {
            return CommandResult::UnknownNode { node };
        };
        if !n.inventory.gpus.iter().any(|g| g.uuid == gpu) {
            return CommandResult::UnknownGpu { node, gpu };
        }
        let health = n.health;
        let actual = self
            .node_scheduling
            .get(&node)
            .map_or(GpuHealth::Healthy, |s| s.gpu_health(&gpu));
        if actual != from {
            return CommandResult::GpuHealthConflict {
                node,
                gpu,
                expected: from,
                actual,
            };
        }
        if from == to {
            return CommandResult::GpuHealthSet {
                changed: false,
                revision: revision - 1,
            };
        }
        let reason = bounded_reason(reason);
        let sched = self.node_scheduling.entry(node.clone()).or_default();
        if to == GpuHealth::Healthy {
            sched.gpu_health.remove(&gpu);
        } else {
            sched.gpu_health.insert(
                gpu.clone(),
                GpuHealthRecord {
                    health: to,
                    since_revision: revision,
                    reason: reason.clone(),
                },
            );
        }
        self.push_event(NodeEvent {
            revision,
            at_unix_ms: self.clock_unix_ms,
            node: node.clone(),
            from: Some(health),
            to: Some(health),
            reason: format!("GPU {gpu} {} -> {}: {reason}", from.name(), to.name()),
        });
        if to == GpuHealth::Failed {
            let on_gpu: Vec<String> = self
                .live_allocs_on(&node)
                .into_iter()
                .filter(|id| {
                    let a = &self.allocs[id];
                    a.desired == DesiredState::Run && a.gpus.contains(&gpu)
                })
                .collect();
            for id in on_gpu {
                self.ask_stop(&id, StopReason::GpuFailed { gpu: gpu.clone() });
            }
        }
        CommandResult::GpuHealthSet {
            changed: true,
            revision,
        }
    }

    /// Forgets finished jobs (and their allocations): those finished at or before
    /// `finished_before_ms`, and the oldest beyond `keep_at_most` finished ones.
    pub(crate) fn collect_jobs(
        &mut self,
        revision: u64,
        finished_before_ms: u64,
        keep_at_most: u32,
    ) -> CommandResult {
        let mut finished: Vec<(u64, String)> = self
            .jobs
            .values()
            .filter(|j| {
                j.status.is_terminal()
                    && self
                        .all_allocs_of(j)
                        .all(|a| self.allocs.get(&a).is_none_or(|a| a.state.is_terminal()))
            })
            .map(|j| (j.status_since_ms, j.id.clone()))
            .collect();
        finished.sort();
        let excess = finished.len().saturating_sub(keep_at_most as usize);
        let doomed: Vec<String> = finished
            .into_iter()
            .enumerate()
            .filter(|(i, (at, _))| *i < excess || *at <= finished_before_ms)
            .map(|(_, (_, id))| id)
            .collect();
        let (mut jobs, mut allocs) = (0u32, 0u32);
        for id in doomed {
            let job = self.jobs.remove(&id).expect("listed");
            self.counted_bytes = self.counted_bytes.saturating_sub(job_size(&job));
            for a in self.all_allocs_of(&job).collect::<Vec<_>>() {
                if let Some(a) = self.allocs.remove(&a) {
                    self.counted_bytes = self.counted_bytes.saturating_sub(alloc_size(&a));
                    allocs += 1;
                }
            }
            jobs += 1;
        }
        CommandResult::JobsCollected {
            jobs,
            allocs,
            revision: if jobs > 0 { revision } else { revision - 1 },
        }
    }

    /// Every allocation id a job ever had (`JOB.TASK.1` to `JOB.TASK.placements`).
    fn all_allocs_of<'a>(&self, job: &'a JobRecord) -> impl Iterator<Item = String> + 'a {
        job.tasks.iter().enumerate().flat_map(move |(t, slot)| {
            (1..=slot.placements).map(move |n| format!("{}.{t}.{n}", job.id))
        })
    }

    /// The live allocations of `job`.
    fn live_allocs_of(&self, job: &str) -> Vec<String> {
        let Some(record) = self.jobs.get(job) else {
            return Vec::new();
        };
        record
            .tasks
            .iter()
            .filter_map(|t| t.alloc.as_ref())
            .filter(|id| self.allocs.get(*id).is_some_and(|a| !a.state.is_terminal()))
            .cloned()
            .collect()
    }

    /// The live allocations on `node`.
    /// Whether removing `node` now could run its work twice: it is not down (its agent may
    /// still run what it holds) and it holds live allocations, which removal would place
    /// again at once.
    pub fn removal_would_duplicate(&self, node: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.health != crate::node::NodeHealth::Down)
            && self
                .usage
                .get(node)
                .is_some_and(|u| !u.alloc_ids.is_empty())
    }

    pub fn live_allocs_on(&self, node: &str) -> Vec<String> {
        self.usage
            .get(node)
            .map(|u| u.alloc_ids.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Marks `id` as asked to stop (its agent stops it and reports the end).
    fn ask_stop(&mut self, id: &str, reason: StopReason) {
        if let Some(a) = self.allocs.get_mut(id) {
            if a.desired == DesiredState::Run {
                a.desired = DesiredState::Stop;
                a.stop_reason = Some(reason);
            }
        }
    }

    /// The node of these allocations went down or was removed: those that stop when
    /// disconnected are lost (their agent fenced them), the others are kept as unknown.
    pub(crate) fn node_lost(&mut self, revision: u64, node: &str, removed: bool) {
        for id in self.live_allocs_on(node) {
            let keep = !removed
                && self
                    .jobs
                    .get(&self.allocs[&id].job)
                    .is_some_and(|j| j.spec.on_disconnect == crate::job::OnDisconnect::Keep);
            let now = self.clock_unix_ms;
            let a = self.allocs.get_mut(&id).expect("listed");
            if keep {
                if a.state != AllocState::Unknown {
                    a.state = AllocState::Unknown;
                    a.state_since_ms = now;
                    a.reason = "node down; kept running while disconnected".into();
                }
                continue;
            }
            a.state = AllocState::Lost;
            a.state_since_ms = now;
            a.desired = DesiredState::Stop;
            if a.stop_reason.is_none() {
                a.stop_reason = Some(StopReason::Replaced);
            }
            a.reason = if removed {
                "node removed".into()
            } else {
                "node down".into()
            };
            let job = a.job.clone();
            self.job_event(
                &job,
                revision,
                format!(
                    "{id} lost: node {node} {}",
                    if removed { "removed" } else { "down" }
                ),
            );
            self.alloc_ended(revision, &id);
        }
    }

    /// An allocation became terminal: free its capacity and decide what its task does next.
    fn alloc_ended(&mut self, revision: u64, id: &str) {
        let a = self.allocs[id].clone();
        if let Some(u) = self.usage.get_mut(&a.node) {
            u.remove(&a);
            if u.is_empty() {
                self.usage.remove(&a.node);
            }
        }
        let now = self.clock_unix_ms;
        let Some(job) = self.jobs.get(&a.job) else {
            return;
        };
        let is_current = job.tasks[a.task as usize].alloc.as_deref() == Some(id);
        let (gang, policy, cancelled) = (
            job.spec.gang && job.spec.tasks > 1,
            job.spec.reschedule,
            job.status == JobStatus::Cancelled,
        );
        let mut message = format!(
            "{id} {}{}",
            a.state.name(),
            match (&a.stop_reason, a.exit_code) {
                (Some(r), _) if a.state != AllocState::Complete => format!(" ({})", r.describe()),
                (_, Some(code)) if a.reason.is_empty() => format!(" (exit code {code})"),
                (_, Some(code)) => format!(" (exit code {code}: {})", a.reason),
                (_, None) if !a.reason.is_empty() => format!(" ({})", a.reason),
                _ => String::new(),
            }
        );
        if is_current && !cancelled {
            let job = self.jobs.get_mut(&a.job).expect("exists");
            let slot = &mut job.tasks[a.task as usize];
            match (a.state, &a.stop_reason) {
                // Asked to stop for its gang: it runs again with the gang, however it ended.
                (_, Some(StopReason::GangMemberEnded { .. })) => slot.not_before_ms = now,
                (AllocState::Complete, _) => slot.outcome = TaskOutcome::Complete,
                (_, Some(r)) if !r.replaces() => {}
                (AllocState::Failed, None) => {
                    let interval = policy.interval.as_millis() as u64;
                    slot.reschedules
                        .retain(|&t| t.saturating_add(interval) > now);
                    if (slot.reschedules.len() as u32) < policy.attempts {
                        slot.reschedules.push(now);
                        let delay = policy.delay_before(slot.reschedules.len() as u32);
                        slot.not_before_ms = now + delay.as_millis() as u64;
                        message += &format!(
                            "; rescheduling (attempt {} of {} per {}) in {} ms",
                            slot.reschedules.len(),
                            policy.attempts,
                            humantime_serde::re::humantime::format_duration(policy.interval),
                            delay.as_millis()
                        );
                    } else {
                        slot.outcome = TaskOutcome::Failed;
                        message += "; reschedule attempts spent: the task failed";
                    }
                }
                // Lost, stopped for a drain, a failed GPU, a gang member, or preempted:
                // placed again at once, not counted against the reschedule policy.
                _ => slot.not_before_ms = now,
            }
        }
        self.job_event(&a.job, revision, message);
        if gang && !cancelled && a.state != AllocState::Complete {
            // The gang runs again whole: members that already completed run again too.
            if let Some(job) = self.jobs.get_mut(&a.job) {
                for t in job.tasks.iter_mut() {
                    if t.outcome == TaskOutcome::Complete {
                        t.outcome = TaskOutcome::Open;
                    }
                }
            }
            for other in self.live_allocs_of(&a.job) {
                self.ask_stop(
                    &other,
                    StopReason::GangMemberEnded {
                        alloc: id.to_string(),
                    },
                );
            }
            // A member that can never run again fails the whole gang.
            let job = self.jobs.get_mut(&a.job).expect("exists");
            if job.tasks.iter().any(|t| t.outcome == TaskOutcome::Failed) {
                let allocs = &self.allocs;
                for t in job.tasks.iter_mut() {
                    let live = t
                        .alloc
                        .as_ref()
                        .and_then(|x| allocs.get(x))
                        .is_some_and(|x| !x.state.is_terminal());
                    if t.outcome == TaskOutcome::Open && !live {
                        t.outcome = TaskOutcome::Failed;
                    }
                }
            }
        }
        self.refresh_job_status(&a.job);
        if self.node_scheduling.get(&a.node).is_some_and(|s| {
            s.drain
                .as_ref()
                .is_some_and(|d| d.completed_at_ms.is_none())
        }) {
            self.drain_due(revision, &a.node);
        }
    }

    /// Recomputes a job's status from its tasks (a cancelled job stays cancelled).
    fn refresh_job_status(&mut self, job: &str) {
        let Some(record) = self.jobs.get(job) else {
            return;
        };
        if record.status == JobStatus::Cancelled {
            return;
        }
        let open = record
            .tasks
            .iter()
            .filter(|t| t.outcome == TaskOutcome::Open)
            .count();
        let status = if open == 0 {
            if record
                .tasks
                .iter()
                .all(|t| t.outcome == TaskOutcome::Complete)
            {
                JobStatus::Complete
            } else {
                JobStatus::Failed
            }
        } else if record.unplaced_tasks(&self.allocs).next().is_some() {
            JobStatus::Pending
        } else {
            JobStatus::Running
        };
        self.set_job_status(job, status);
    }

    fn set_job_status(&mut self, job: &str, status: JobStatus) {
        let now = self.clock_unix_ms;
        if let Some(j) = self.jobs.get_mut(job) {
            if j.status != status {
                j.status = status;
                j.status_since_ms = now;
                if status != JobStatus::Pending {
                    j.pending_reason.clear();
                }
            }
        }
    }

    fn job_event(&mut self, job: &str, revision: u64, message: String) {
        let at_unix_ms = self.clock_unix_ms;
        if let Some(j) = self.jobs.get_mut(job) {
            if j.events.len() >= MAX_JOB_EVENTS {
                j.events.remove(0);
            }
            j.events.push(JobEvent {
                revision,
                at_unix_ms,
                message: bounded_reason(message),
            });
        }
    }

    /// Rebuilds what every node's live allocations hold (after a decode or a restore).
    pub(crate) fn rebuild_usage(&mut self) {
        self.usage = imbl::OrdMap::new();
        for a in self.allocs.values().filter(|a| a.holds_capacity()) {
            self.usage.entry(a.node.clone()).or_default().add(a);
        }
    }

    /// What the live allocations hold on `node`.
    pub fn node_usage(&self, node: &str) -> Option<&NodeUsage> {
        self.usage.get(node)
    }
}
