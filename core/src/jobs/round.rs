//! One scheduling round: from a committed state to the commands that place waiting tasks,
//! preempt for them, enforce drain deadlines and say why the rest waits. Pure: the
//! controller's scheduler worker calls it on the leader with its `StateView` copy and
//! proposes the commands; a simulator can call it on a simulated clock (time is the
//! state's cluster clock). Every placement it proposes is checked again when it applies,
//! so a round built from a stale view can be refused but never over-commits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::*;
use crate::command::Command;
use crate::job::JobSpec;
use crate::node::NodeHealth;
use crate::scheduler::frag::{TypicalTask, TypicalTasks};
use crate::scheduler::model::{GpuModels, NodeState, TaskShape, GPU_MILLI, MAX_GPUS_PER_NODE};
use crate::scheduler::plan::{self, Decision, PendingJob, RunningTask};
use crate::scheduler::policy::{Policy, Scheduler};
use crate::state::ClusterState;

/// Most jobs one round considers (highest priority first); the rest wait for the next.
pub const MAX_JOBS_PER_ROUND: usize = 2_000;
/// Recent submissions the typical-task distribution is built from.
pub const TYPICAL_WINDOW: usize = 1_000;
/// Smallest priority gap that lets a job preempt another.
pub const DEFAULT_PREEMPTION_GAP: u32 = 1;
/// The first port a gang's rendezvous may use; `MASTER_PORT` is in
/// `RENDEZVOUS_PORT_BASE .. RENDEZVOUS_PORT_BASE + RENDEZVOUS_PORT_SPAN`.
pub const RENDEZVOUS_PORT_BASE: u16 = 29_500;
pub const RENDEZVOUS_PORT_SPAN: u16 = 10_000;

#[derive(Debug, Clone)]
pub struct RoundConfig {
    pub policy: Policy,
    /// A job preempts only tasks at least this much lower in priority.
    pub preemption_gap: u32,
    pub max_jobs: usize,
    /// Job id -> node id -> the share (0 to 1) of the job's input bytes the node already
    /// holds: the scheduler's data-locality preference (the leader measures it from the
    /// agents' chunk reports; absent: no preference).
    pub input_locality: HashMap<String, HashMap<String, f64>>,
}

impl Default for RoundConfig {
    fn default() -> Self {
        RoundConfig {
            policy: Policy::Steward,
            preemption_gap: DEFAULT_PREEMPTION_GAP,
            max_jobs: MAX_JOBS_PER_ROUND,
            input_locality: HashMap::new(),
        }
    }
}

/// What a round decided.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// To propose, in order: placements, stops (preemption, drain deadlines), pending reasons.
    pub commands: Vec<Command>,
    /// Tasks placed by `commands`.
    pub placed: usize,
    /// Allocations asked to stop for a preemption.
    pub preempted: usize,
}

/// The nodes as the scheduler sees them, with their ids and why each one is out (if it is).
pub struct SchedulingView {
    pub nodes: Vec<NodeState>,
    pub ids: Vec<String>,
    /// Why a node takes nothing new (not ready, cordoned, draining), by index.
    pub excluded: Vec<Option<String>>,
    pub models: GpuModels,
}

impl SchedulingView {
    /// Builds the nodes from the committed state: capacity from the inventory, minus what
    /// the live allocations hold; failed GPUs withdrawn; nodes that are not ready, cordoned
    /// or draining excluded (kept, to explain).
    pub fn of(state: &ClusterState) -> Self {
        let mut view = SchedulingView {
            nodes: Vec::new(),
            ids: Vec::new(),
            excluded: Vec::new(),
            models: GpuModels::default(),
        };
        for (id, rec) in &state.nodes {
            let inv = &rec.inventory;
            let cap = NodeCapacity::of(inv);
            if inv.gpus.len() > MAX_GPUS_PER_NODE {
                continue;
            }
            let model_name = inv.gpus.first().map_or("", |g| g.name.as_str());
            let Ok(model) = view.models.intern(model_name) else {
                continue;
            };
            let Ok(mut node) = NodeState::new(
                id.clone(),
                model,
                inv.gpus.len() as u8,
                cap.cpu_millicores as i64,
                cap.memory_mib as i64,
            ) else {
                continue;
            };
            node.gpu_mem_mib = inv
                .gpus
                .iter()
                .filter_map(|g| g.memory_total_mib)
                .min()
                .unwrap_or(0)
                .min(u32::MAX as u64) as u32;
            for (i, g) in inv.gpus.iter().enumerate() {
                node.gpu_group[i] = g.numa_node.unwrap_or(0).min(255) as u8;
            }
            if let Some(u) = state.node_usage(id) {
                node.cpu_free -= u.cpu_millicores as i64;
                node.mem_free -= u.memory_mib as i64;
                for (i, g) in inv.gpus.iter().enumerate() {
                    let held = u.gpu_milli.get(&g.uuid).copied().unwrap_or(0);
                    node.gpu_free[i] = GPU_MILLI.saturating_sub(held.min(1000) as u16);
                }
            }
            let sched = state.node_scheduling.get(id);
            if let Some(s) = sched {
                for (i, g) in inv.gpus.iter().enumerate() {
                    if s.gpu_health(&g.uuid) == GpuHealth::Failed {
                        node.mark_unhealthy(i);
                    }
                }
            }
            // `apply` refuses a node's allocation past MAX_ALLOCS_PER_NODE: the planner
            // counts them too (its own placements in this round included).
            let slots =
                MAX_ALLOCS_PER_NODE.saturating_sub(state.node_usage(id).map_or(0, |u| u.allocs));
            node.tasks_free = slots as u32;
            let full = slots == 0;
            let excluded = if rec.health != NodeHealth::Ready {
                Some(format!("node is {}", rec.health.name()))
            } else if sched.is_some_and(|s| s.drain.is_some()) {
                Some("node is draining".to_string())
            } else if sched.is_some_and(|s| s.cordoned) {
                Some("node is cordoned".to_string())
            } else if full {
                Some(format!(
                    "node runs {MAX_ALLOCS_PER_NODE} allocations, its limit"
                ))
            } else {
                None
            };
            node.cordoned = excluded.is_some();
            view.nodes.push(node);
            view.ids.push(id.clone());
            view.excluded.push(excluded);
        }
        view
    }

    /// The bit mask of node GPU models a job's `gpu_models` allows: a listed name matches
    /// a model it equals or is a part of, ignoring case ("H100" matches "NVIDIA H100 80GB
    /// HBM3"). `None` when the job names models and no node has any of them.
    pub fn model_mask(&self, spec: &JobSpec) -> Option<u64> {
        let wanted = &spec.resources.gpu_models;
        if wanted.is_empty() {
            return Some(0);
        }
        let mut mask = 0u64;
        for node in &self.nodes {
            let name = self.models.name(node.model).to_ascii_lowercase();
            if wanted
                .iter()
                .any(|w| !w.is_empty() && name.contains(&w.to_ascii_lowercase()))
            {
                mask |= 1u64 << node.model;
            }
        }
        (mask != 0).then_some(mask)
    }

    /// The scheduler's shape of one task of `spec` (`None`: no node has an allowed model).
    pub fn task_shape(&self, spec: &JobSpec) -> Option<TaskShape> {
        let r = &spec.resources;
        let (num_gpu, gpu_milli) = if r.gpus > 0 {
            (r.gpus as u8, GPU_MILLI)
        } else if r.gpu_milli > 0 {
            (1, r.gpu_milli as u16)
        } else {
            (0, 0)
        };
        Some(TaskShape {
            cpu: i64::try_from(r.cpu_millicores).ok()?,
            mem: i64::try_from(r.memory_mib).ok()?,
            num_gpu,
            gpu_milli,
            models: self.model_mask(spec)?,
            min_gpu_mem_mib: r.min_gpu_memory_mib.min(u32::MAX as u64) as u32,
        })
    }

    /// Why node `i` cannot take one task of `spec` now (`None`: it can).
    pub fn explain(
        &self,
        state: &ClusterState,
        i: usize,
        spec: &JobSpec,
        shape: &TaskShape,
    ) -> Option<String> {
        if let Some(why) = &self.excluded[i] {
            return Some(why.clone());
        }
        if let Some(why) = state
            .nodes
            .get(&self.ids[i])
            .and_then(|n| spec.constraint_refusal(&n.labels))
        {
            return Some(why);
        }
        plan::explain(&self.nodes[i], shape, &self.models)
    }
}

/// The typical-task distribution of the fragmentation measure: the shapes of the last
/// [`TYPICAL_WINDOW`] submitted jobs, weighted by their task counts; until there are any,
/// [`default_typical`].
pub fn typical_tasks(state: &ClusterState, view: &SchedulingView) -> TypicalTasks {
    let mut recent: Vec<&JobRecord> = state.jobs.values().collect();
    if recent.len() > TYPICAL_WINDOW {
        recent.select_nth_unstable_by_key(TYPICAL_WINDOW, |j| {
            std::cmp::Reverse(j.submitted_revision)
        });
        recent.truncate(TYPICAL_WINDOW);
    }
    let mut counts: BTreeMap<(i64, u8, u16), f64> = BTreeMap::new();
    for j in recent {
        if let Some(s) = view.task_shape(&j.spec) {
            *counts.entry((s.cpu, s.num_gpu, s.gpu_milli)).or_default() += f64::from(j.spec.tasks);
        }
    }
    if counts.is_empty() {
        return default_typical();
    }
    let total: f64 = counts.values().sum();
    TypicalTasks::new(
        counts
            .into_iter()
            .map(|((cpu, num_gpu, gpu_milli), n)| TypicalTask {
                shape: TaskShape {
                    cpu,
                    mem: 0,
                    num_gpu,
                    gpu_milli,
                    models: 0,
                    min_gpu_mem_mib: 0,
                },
                p: n / total,
            })
            .collect(),
    )
}

/// The distribution used before any job was submitted, after the shares of the Alibaba
/// 2023 trace (`tests/data/alibaba-gpu-v2023`): most tasks take one whole GPU or a share
/// of one, few take 2, 4 or 8.
pub fn default_typical() -> TypicalTasks {
    let shape = |cpu: i64, num_gpu: u8, gpu_milli: u16| TaskShape {
        cpu,
        mem: 0,
        num_gpu,
        gpu_milli,
        models: 0,
        min_gpu_mem_mib: 0,
    };
    TypicalTasks::new(vec![
        TypicalTask {
            shape: shape(8_000, 1, 1000),
            p: 0.40,
        },
        TypicalTask {
            shape: shape(4_000, 1, 500),
            p: 0.25,
        },
        TypicalTask {
            shape: shape(2_000, 1, 250),
            p: 0.10,
        },
        TypicalTask {
            shape: shape(16_000, 2, 1000),
            p: 0.08,
        },
        TypicalTask {
            shape: shape(32_000, 4, 1000),
            p: 0.07,
        },
        TypicalTask {
            shape: shape(64_000, 8, 1000),
            p: 0.05,
        },
        TypicalTask {
            shape: shape(4_000, 0, 0),
            p: 0.05,
        },
    ])
}

/// A job the round may place now: tasks waiting and eligible.
struct Candidate<'a> {
    job: &'a JobRecord,
    tasks: Vec<u32>,
}

/// The jobs with tasks to place now, highest priority first (then weight, then oldest).
fn candidates(state: &ClusterState, max_jobs: usize) -> Vec<Candidate<'_>> {
    let now = state.clock_unix_ms;
    let mut out: Vec<Candidate<'_>> = Vec::new();
    for job in state.jobs.values().filter(|j| !j.status.is_terminal()) {
        let unplaced: Vec<u32> = job.unplaced_tasks(&state.allocs).collect();
        if unplaced.is_empty() {
            continue;
        }
        let due = |t: &u32| job.tasks[*t as usize].not_before_ms <= now;
        let tasks: Vec<u32> = if job.spec.gang && job.spec.tasks > 1 {
            // A gang is placed whole: every task waits (no member still stopping) and due.
            if unplaced.len() != job.tasks.len() || !unplaced.iter().all(due) {
                continue;
            }
            unplaced
        } else {
            unplaced.into_iter().filter(due).collect()
        };
        if !tasks.is_empty() {
            out.push(Candidate { job, tasks });
        }
    }
    out.sort_by(|a, b| {
        b.job
            .spec
            .priority
            .cmp(&a.job.spec.priority)
            .then(b.job.spec.weight.total_cmp(&a.job.spec.weight))
            .then(a.job.submitted_revision.cmp(&b.job.submitted_revision))
    });
    out.truncate(max_jobs);
    out
}

/// One round over `state` (see the module).
pub fn schedule_round(state: &ClusterState, cfg: &RoundConfig) -> Round {
    let mut round = Round::default();
    let mut view = SchedulingView::of(state);
    let typical = typical_tasks(state, &view);
    let rank: Vec<u32> = (0..view.nodes.len() as u32).collect();
    let mut sched = Scheduler::new(cfg.policy, typical, rank, state.revision);
    // Jobs already waiting on preemptions they caused: no second eviction for them.
    let mut preempting: BTreeSet<&str> = BTreeSet::new();
    for a in state.allocs.values() {
        if let (false, Some(StopReason::Preempted { by })) = (a.state.is_terminal(), &a.stop_reason)
        {
            preempting.insert(by.as_str());
        }
    }
    let mut stops = Vec::new();
    // Capacity only shrinks within a round (a stop frees nothing until its process is
    // gone), so a job like one that found no room finds none either: it waits for the
    // same reason without a second search. Queues of many like jobs cost one search.
    let mut no_room: HashMap<LikeJobs, String> = HashMap::new();
    let mut no_victims: HashSet<(LikeJobs, u32)> = HashSet::new();
    let mut evictable = Evictable::default();
    for c in candidates(state, cfg.max_jobs) {
        let spec = &c.job.spec;
        let Some(shape) = view.task_shape(spec) else {
            let reason = format!(
                "no node has a GPU of model [{}]",
                spec.resources.gpu_models.join(", ")
            );
            pend(&mut round, c.job, reason);
            continue;
        };
        let like = LikeJobs {
            shape,
            count: c.tasks.len() as u32,
            gang: spec.gang && spec.tasks > 1,
            constraints: if spec.constraints.is_empty() {
                String::new()
            } else {
                format!("{:?}", spec.constraints)
            },
        };
        let known = no_room.get(&like).cloned();
        if known.is_none() {
            // Nodes this job may not use (constraints) are held out for its turn only.
            let held_out: Vec<usize> = (0..view.nodes.len())
                .filter(|&i| {
                    !view.nodes[i].cordoned
                        && state
                            .nodes
                            .get(&view.ids[i])
                            .is_some_and(|n| spec.constraint_refusal(&n.labels).is_some())
                })
                .collect();
            for &i in &held_out {
                view.nodes[i].cordoned = true;
            }
            let pending = PendingJob {
                name: c.job.id.clone(),
                priority: spec.priority,
                weight: spec.weight,
                task: shape,
                count: c.tasks.len() as u32,
                gang: like.gang,
                locality: cfg
                    .input_locality
                    .get(&c.job.id)
                    .map(|near| {
                        view.ids
                            .iter()
                            .map(|n| near.get(n).copied().unwrap_or(0.0))
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let decisions = plan::schedule(&mut sched, &mut view.nodes, &[pending], &view.models);
            for &i in &held_out {
                view.nodes[i].cordoned = false;
            }
            if let Some(Decision::Placed {
                placements,
                unplaced,
                ..
            }) = decisions.into_iter().next()
            {
                let news = new_allocations(state, &view, c.job, &c.tasks, &placements);
                round.placed += news.len();
                // A gang goes in one command (all or nothing; validation caps its size);
                // other jobs in commands of at most MAX_PLACEMENTS_PER_COMMAND.
                let chunk = if spec.gang {
                    news.len().max(1)
                } else {
                    MAX_PLACEMENTS_PER_COMMAND
                };
                for part in news.chunks(chunk) {
                    round.commands.push(Command::PlaceAllocations {
                        job: c.job.id.clone(),
                        placements: part.to_vec(),
                    });
                }
                if unplaced > 0 {
                    let why = why_pending(state, &view, spec, &shape);
                    no_room.insert(like, why.clone());
                    pend(&mut round, c.job, format!("{unplaced} tasks wait: {why}"));
                }
                continue;
            }
        }
        // No room for it (found now, or for a like job earlier in this round): evict
        // lower-priority work if that makes room, else say why it waits.
        let evicting = spec.priority > 0
            && !preempting.contains(c.job.id.as_str())
            && !no_victims.contains(&(like.clone(), spec.priority));
        if evicting {
            let victims = plan_evictions(
                state,
                &view,
                c.job,
                &shape,
                c.tasks.len(),
                cfg,
                &mut evictable,
            );
            if !victims.is_empty() {
                round.preempted += victims.len();
                evictable
                    .chosen
                    .extend(victims.iter().map(|v| v.alloc.clone()));
                stops.extend(victims);
                pend(
                    &mut round,
                    c.job,
                    "waiting for preempted lower-priority tasks to stop".into(),
                );
                continue;
            }
            no_victims.insert((like.clone(), spec.priority));
        }
        let why = match known {
            Some(why) => why,
            None => {
                let why = why_pending(state, &view, spec, &shape);
                no_room.insert(like, why.clone());
                why
            }
        };
        pend(&mut round, c.job, why);
    }
    // Drains whose deadline has passed: stop what still runs there.
    let now = state.clock_unix_ms;
    for (node, s) in &state.node_scheduling {
        if s.drain
            .as_ref()
            .is_some_and(|d| d.deadline_ms <= now && d.completed_at_ms.is_none())
        {
            for id in state.live_allocs_on(node) {
                let a = &state.allocs[&id];
                if a.desired == DesiredState::Run {
                    stops.push(StopAllocation {
                        alloc: id,
                        generation: a.generation,
                        reason: StopReason::Drained,
                    });
                }
            }
        }
    }
    if !stops.is_empty() {
        round.commands.push(Command::StopAllocations { stops });
    }
    round
}

/// Jobs that, within one round, find room together or not at all: the same task shape,
/// task count, gang and constraints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LikeJobs {
    shape: TaskShape,
    count: u32,
    gang: bool,
    /// The constraints, spelled out (empty: none).
    constraints: String,
}

/// Records why `job` waits, when that is news.
fn pend(round: &mut Round, job: &JobRecord, reason: String) {
    let reason = bounded_reason(reason);
    if job.pending_reason != reason {
        round.commands.push(Command::SetJobPendingReason {
            job: job.id.clone(),
            reason,
        });
    }
}

/// Turns the scheduler's placements (node and GPU indexes) into allocations to commit.
fn new_allocations(
    state: &ClusterState,
    view: &SchedulingView,
    job: &JobRecord,
    tasks: &[u32],
    placements: &[crate::scheduler::Placement],
) -> Vec<NewAllocation> {
    let spec = &job.spec;
    let r = &spec.resources;
    let gpu_milli = if r.gpus > 0 { 1000 } else { r.gpu_milli as u16 };
    let gang = spec.gang && spec.tasks > 1;
    let master = placements.first().map(|p| &view.ids[p.node]);
    let master_addr = master
        .and_then(|id| state.nodes.get(id))
        .map(|n| {
            n.inventory
                .agent
                .api_addr
                .as_deref()
                .and_then(|a| {
                    a.rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                })
                .unwrap_or_else(|| n.hostname.clone())
        })
        .unwrap_or_default();
    let port = RENDEZVOUS_PORT_BASE
        + (blake3::hash(job.id.as_bytes()).as_bytes()[0] as u16 * 256
            + blake3::hash(job.id.as_bytes()).as_bytes()[1] as u16)
            % RENDEZVOUS_PORT_SPAN;
    let mut per_node: BTreeMap<usize, u32> = BTreeMap::new();
    tasks
        .iter()
        .zip(placements)
        .map(|(&task, p)| {
            let node = &state.nodes[&view.ids[p.node]];
            let local = per_node.entry(p.node).or_default();
            let rendezvous = gang.then(|| Rendezvous {
                master_addr: master_addr.clone(),
                master_port: port,
                rank: task,
                world_size: spec.tasks,
                local_rank: *local,
            });
            *local += 1;
            NewAllocation {
                task,
                node: view.ids[p.node].clone(),
                gpus: p
                    .gpus
                    .iter()
                    .map(|&g| node.inventory.gpus[g].uuid.clone())
                    .collect(),
                gpu_milli: if r.gpus > 0 || r.gpu_milli > 0 {
                    gpu_milli
                } else {
                    0
                },
                cpu_millicores: r.cpu_millicores,
                memory_mib: r.memory_mib,
                rendezvous,
            }
        })
        .collect()
}

/// Why no node takes a task of `spec` now, summarised over the nodes: "4 nodes: needs 8
/// whole GPUs, 2 free (1 unhealthy); 1 node: node is cordoned". When no node could take it
/// even empty, it says so first ("no node can ever run it: ...").
pub fn why_pending(
    state: &ClusterState,
    view: &SchedulingView,
    spec: &JobSpec,
    shape: &TaskShape,
) -> String {
    if view.nodes.is_empty() {
        return "no nodes are registered".into();
    }
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..view.nodes.len() {
        let why = view
            .explain(state, i, spec, shape)
            .unwrap_or_else(|| "fits, but not all the tasks do".into());
        *by_reason.entry(why).or_default() += 1;
    }
    let mut reasons: Vec<(String, usize)> = by_reason.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let summary: Vec<String> = reasons
        .iter()
        .map(|(why, n)| format!("{n} node{}: {why}", if *n == 1 { "" } else { "s" }))
        .collect();
    // Could any node take it when empty and healthy?
    let ever = view.nodes.iter().any(|n| {
        let mut empty = n.clone();
        empty.cordoned = false;
        empty.cpu_free = empty.cpu_total;
        empty.mem_free = empty.mem_total;
        for g in 0..empty.gpus as usize {
            empty.gpu_free[g] = GPU_MILLI;
        }
        plan::explain(&empty, shape, &view.models).is_none()
    });
    if ever {
        summary.join("; ")
    } else {
        let r = &spec.resources;
        let what = if r.gpus > 0 {
            format!(
                "{} GPUs{}",
                r.gpus,
                if r.gpu_models.is_empty() {
                    String::new()
                } else {
                    format!(" of model [{}]", r.gpu_models.join(", "))
                }
            )
        } else {
            format!("{} mCPU and {} MiB", r.cpu_millicores, r.memory_mib)
        };
        format!(
            "no node has {what} (it can never run as specified): {}",
            summary.join("; ")
        )
    }
}

/// What a round may still evict: the preemptible allocations (built when a job first
/// needs room) and those already chosen for another job's room this round.
#[derive(Default)]
struct Evictable {
    pool: Option<Vec<RunningTask>>,
    chosen: HashSet<String>,
}

/// The allocations a round may evict: live, running (not already stopping) and of
/// preemptible jobs. Built once per round, when a job first needs room; found from the
/// preemptible jobs' task slots, so the rest of the state costs no lookups.
fn preemptible_tasks(state: &ClusterState, view: &SchedulingView) -> Vec<RunningTask> {
    let index: HashMap<&str, usize> = view
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for job in state.jobs.values() {
        if !job.spec.preemptible || job.status.is_terminal() {
            continue;
        }
        let Some(mut vshape) = view.task_shape(&job.spec) else {
            continue;
        };
        vshape.models = 0;
        for slot in &job.tasks {
            let Some(a) = slot.alloc.as_ref().and_then(|id| state.allocs.get(id)) else {
                continue;
            };
            if a.state.is_terminal() || a.desired != DesiredState::Run {
                continue;
            }
            let (Some(&n), Some(node)) = (index.get(a.node.as_str()), state.nodes.get(&a.node))
            else {
                continue;
            };
            let gpus: Vec<usize> = a
                .gpus
                .iter()
                .filter_map(|u| node.inventory.gpus.iter().position(|g| &g.uuid == u))
                .collect();
            out.push(RunningTask {
                id: a.id.clone(),
                node: n,
                gpus,
                shape: vshape,
                priority: job.spec.priority,
                preemptible: true,
            });
        }
    }
    // The order plans tie-break on: by allocation id, as the state lists them.
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Preemptible allocations to evict so that `count` tasks of `job` fit (all of them, for a
/// gang; nothing when they cannot all be made room for).
fn plan_evictions(
    state: &ClusterState,
    view: &SchedulingView,
    job: &JobRecord,
    shape: &TaskShape,
    count: usize,
    cfg: &RoundConfig,
    evictable: &mut Evictable,
) -> Vec<StopAllocation> {
    let Evictable {
        pool,
        chosen: already,
    } = evictable;
    let pool = pool.get_or_insert_with(|| preemptible_tasks(state, view));
    // Chosen for another job's room this round, or not low enough in priority.
    let mut running: Vec<RunningTask> = pool
        .iter()
        .filter(|t| {
            !already.contains(&t.id)
                && t.priority.saturating_add(cfg.preemption_gap) <= job.spec.priority
        })
        .cloned()
        .collect();
    if running.is_empty() {
        return Vec::new();
    }
    let mut nodes = view.nodes.clone();
    // Constraint-refused nodes cannot host it however much is evicted.
    for (i, n) in nodes.iter_mut().enumerate() {
        if state
            .nodes
            .get(&view.ids[i])
            .is_some_and(|r| job.spec.constraint_refusal(&r.labels).is_some())
        {
            n.cordoned = true;
        }
    }
    let mut chosen: Vec<String> = Vec::new();
    for _ in 0..count {
        let Some(p) = plan::plan_preemption(
            &nodes,
            &running,
            shape,
            job.spec.priority,
            cfg.preemption_gap,
        ) else {
            return Vec::new();
        };
        let mut victims = p.victims.clone();
        victims.sort_unstable_by(|a, b| b.cmp(a));
        for v in victims {
            let t = running.remove(v);
            nodes[p.node].remove(&t.shape, &t.gpus);
            chosen.push(t.id);
        }
        // Reserve the room for this task so that the next one needs room of its own (GPUs
        // chosen by a one-node scheduler: the round's own memoises by node index).
        let single = [nodes[p.node].clone()];
        let mut one = Scheduler::new(Policy::BestFit, TypicalTasks::default(), vec![0], 0);
        match one.place(&single, shape) {
            Some(place) => nodes[p.node].place(shape, &place.gpus),
            None => return Vec::new(),
        }
    }
    chosen
        .into_iter()
        .map(|id| StopAllocation {
            generation: state.allocs[&id].generation,
            alloc: id,
            reason: StopReason::Preempted { by: job.id.clone() },
        })
        .collect()
}

/// The earliest cluster time after the current one at which a round would decide
/// something new: a reschedule delay ending, or a drain deadline. The cluster clock moves
/// only with stamped entries, so the leader proposes an empty one when its clock passes
/// this (the scheduler worker's clock tick).
pub fn next_due_ms(state: &ClusterState) -> Option<u64> {
    let now = state.clock_unix_ms;
    let slots = state
        .jobs
        .values()
        .filter(|j| !j.status.is_terminal())
        .flat_map(|j| j.tasks.iter())
        .filter(|t| t.outcome == TaskOutcome::Open && t.not_before_ms > now)
        .map(|t| t.not_before_ms);
    let drains = state
        .node_scheduling
        .values()
        .filter_map(|s| s.drain.as_ref())
        .filter(|d| d.completed_at_ms.is_none() && d.deadline_ms > now)
        .map(|d| d.deadline_ms);
    slots.chain(drains).min()
}

/// Whether finished jobs are due for collection: more than `keep` of them, or one that
/// finished at or before `finished_before_ms`.
pub fn collection_due(state: &ClusterState, finished_before_ms: u64, keep: u32) -> bool {
    let mut finished = 0usize;
    for j in state.jobs.values().filter(|j| j.status.is_terminal()) {
        if j.status_since_ms <= finished_before_ms {
            return true;
        }
        finished += 1;
    }
    finished > keep as usize
}
