//! Scheduling a pending queue: priority order, gangs all-or-nothing, explanations for every
//! placement and every per-node rejection, and preemption planning. Pure functions over a
//! snapshot of the nodes; the controller commits the returned decisions.

use super::model::{GpuModels, NodeState, TaskShape, GPU_MILLI};
use super::policy::{fits, Placement, Scheduler};

/// A job waiting to be placed.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingJob {
    pub name: String,
    pub priority: u32,
    pub weight: f64,
    /// Resources of each task.
    pub task: TaskShape,
    pub count: u32,
    pub gang: bool,
    /// Share of the job's input data each node holds (by node index; may be empty).
    pub locality: Vec<f64>,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Every task placed (or, without gang, the tasks in `placements`).
    Placed {
        job: String,
        placements: Vec<Placement>,
        /// One line per placement: node, GPUs, why.
        explanation: Vec<String>,
        /// Tasks that did not fit (never for a gang).
        unplaced: u32,
    },
    /// Nothing placed.
    Rejected {
        job: String,
        /// Why each node could not take the (first unplaced) task.
        reasons: Vec<(String, String)>,
    },
}

/// The order the queue is served in: priority, then weight (both descending), then as given.
pub fn queue_order(queue: &[PendingJob]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..queue.len()).collect();
    order.sort_by(|&a, &b| {
        queue[b]
            .priority
            .cmp(&queue[a].priority)
            .then(queue[b].weight.total_cmp(&queue[a].weight))
            .then(a.cmp(&b))
    });
    order
}

/// Places the queue on `nodes` (updated in place) in priority order.
pub fn schedule(
    sched: &mut Scheduler,
    nodes: &mut [NodeState],
    queue: &[PendingJob],
    models: &GpuModels,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    for j in queue_order(queue) {
        let job = &queue[j];
        let mut tentative = nodes.to_vec();
        let mut placements = Vec::new();
        let mut explanation = Vec::new();
        let mut failed_at = None;
        for t in 0..job.count {
            let feasible = tentative.iter().filter(|n| fits(n, &job.task)).count();
            match sched.place_near(&tentative, &job.task, &job.locality) {
                Some(p) => {
                    tentative[p.node].place(&job.task, &p.gpus);
                    sched.node_changed(p.node);
                    explanation.push(format!(
                        "task {t} -> {} GPUs {:?}: highest {} score of {feasible} feasible nodes",
                        tentative[p.node].name, p.gpus, sched.policy
                    ));
                    placements.push(p);
                }
                None => {
                    failed_at = Some(t);
                    break;
                }
            }
        }
        let changed: Vec<usize> = placements.iter().map(|p| p.node).collect();
        match failed_at {
            Some(_) if job.gang || placements.is_empty() => {
                // All or nothing: the tentative placements are dropped.
                for i in changed {
                    sched.node_changed(i);
                }
                let reasons = tentative
                    .iter()
                    .map(|n| {
                        (
                            n.name.clone(),
                            explain(n, &job.task, models)
                                .unwrap_or_else(|| "fits, but the gang as a whole does not".into()),
                        )
                    })
                    .collect();
                decisions.push(Decision::Rejected {
                    job: job.name.clone(),
                    reasons,
                });
            }
            failed => {
                nodes.clone_from_slice(&tentative);
                let unplaced = failed.map_or(0, |t| job.count - t);
                decisions.push(Decision::Placed {
                    job: job.name.clone(),
                    placements,
                    explanation,
                    unplaced,
                });
            }
        }
    }
    decisions
}

/// Why `task` cannot go on `node`, or `None` when it fits.
pub fn explain(node: &NodeState, task: &TaskShape, models: &GpuModels) -> Option<String> {
    if node.cordoned {
        return Some("node is cordoned".into());
    }
    if node.tasks_free == 0 {
        return Some("node runs as many tasks as it may".into());
    }
    if task.wants_gpu() {
        if node.gpus == 0 {
            return Some("node has no GPUs".into());
        }
        if !task.model_allowed(node.model) {
            let allowed: Vec<&str> = (0..64u8)
                .filter(|m| task.models & (1u64 << m) != 0)
                .map(|m| models.name(m))
                .collect();
            return Some(format!(
                "gpu model {} not in [{}]",
                models.name(node.model),
                allowed.join(", ")
            ));
        }
        if node.gpu_mem_mib < task.min_gpu_mem_mib {
            return Some(format!(
                "needs GPUs with {} MiB memory, node's have {} MiB",
                task.min_gpu_mem_mib, node.gpu_mem_mib
            ));
        }
        let unhealthy = node.unhealthy.count_ones();
        let sick = if unhealthy > 0 {
            format!(" ({unhealthy} unhealthy)")
        } else {
            String::new()
        };
        if task.num_gpu > 1 || task.gpu_milli == GPU_MILLI {
            let free = node.fully_free_gpus();
            if free < task.num_gpu as usize {
                return Some(format!(
                    "needs {} whole GPUs, {free} free{sick}",
                    task.num_gpu
                ));
            }
        } else {
            let best = node.gpu_free().iter().copied().max().unwrap_or(0);
            if best < task.gpu_milli {
                return Some(format!(
                    "needs {} milli-GPU on one GPU, at most {best} free{sick}",
                    task.gpu_milli
                ));
            }
        }
    }
    if node.cpu_free < task.cpu {
        return Some(format!("needs {} mCPU, {} free", task.cpu, node.cpu_free));
    }
    if node.mem_free < task.mem {
        return Some(format!(
            "needs {} MiB memory, {} free",
            task.mem, node.mem_free
        ));
    }
    None
}

/// A running task, as preemption sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTask {
    pub id: String,
    pub node: usize,
    pub gpus: Vec<usize>,
    pub shape: TaskShape,
    pub priority: u32,
    pub preemptible: bool,
}

/// Evict these (indexes into the running list) on `node` to make room.
#[derive(Debug, Clone, PartialEq)]
pub struct PreemptionPlan {
    pub node: usize,
    pub victims: Vec<usize>,
}

/// Most victims one plan may evict.
pub const MAX_VICTIMS: usize = 4;
/// Most eviction candidates considered per node (lowest priorities first).
pub const MAX_CANDIDATES_PER_NODE: usize = 12;

/// The fewest preemptible tasks, each at least `min_gap` below `priority`, whose eviction
/// lets `task` fit on one node (ties: lowest total victim priority, then lowest node index).
pub fn plan_preemption(
    nodes: &[NodeState],
    running: &[RunningTask],
    task: &TaskShape,
    priority: u32,
    min_gap: u32,
) -> Option<PreemptionPlan> {
    let mut best: Option<(usize, u64, PreemptionPlan)> = None;
    // The evictable tasks of each node, in running-list order.
    let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (r, t) in running.iter().enumerate() {
        if t.node < nodes.len() && t.preemptible && t.priority.saturating_add(min_gap) <= priority {
            by_node[t.node].push(r);
        }
    }
    for (n, node) in nodes.iter().enumerate() {
        if node.cordoned || (task.wants_gpu() && !task.model_allowed(node.model)) {
            continue;
        }
        // A node with no candidates still counts: the task may fit with no eviction
        // (room freed for an earlier task of the same job, or free already).
        let mut candidates = std::mem::take(&mut by_node[n]);
        candidates.sort_by_key(|&r| {
            (
                running[r].priority,
                std::cmp::Reverse(running[r].shape.gpu_total()),
            )
        });
        candidates.truncate(MAX_CANDIDATES_PER_NODE);
        // No subset can make room if evicting every candidate does not.
        let mut emptied = node.clone();
        for &v in &candidates {
            emptied.remove(&running[v].shape, &running[v].gpus);
        }
        if !fits(&emptied, task) {
            continue;
        }
        for k in 0..=candidates.len().min(MAX_VICTIMS) {
            if best.as_ref().is_some_and(|(bk, _, _)| k > *bk) {
                break;
            }
            let mut found: Option<(u64, Vec<usize>)> = None;
            for_each_combination(candidates.len(), k, &mut |combo| {
                let victims: Vec<usize> = combo.iter().map(|&c| candidates[c]).collect();
                let mut after = node.clone();
                for &v in &victims {
                    after.remove(&running[v].shape, &running[v].gpus);
                }
                if fits(&after, task) {
                    let cost: u64 = victims.iter().map(|&v| running[v].priority as u64).sum();
                    if found.as_ref().is_none_or(|(fc, _)| cost < *fc) {
                        found = Some((cost, victims));
                    }
                }
            });
            if let Some((cost, victims)) = found {
                if best
                    .as_ref()
                    .is_none_or(|(bk, bc, _)| k < *bk || (k == *bk && cost < *bc))
                {
                    best = Some((k, cost, PreemptionPlan { node: n, victims }));
                }
                break;
            }
        }
    }
    best.map(|(_, _, plan)| plan)
}

fn for_each_combination(n: usize, k: usize, f: &mut impl FnMut(&[usize])) {
    fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, f: &mut impl FnMut(&[usize])) {
        if cur.len() == k {
            f(cur);
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, k, cur, f);
            cur.pop();
        }
    }
    rec(0, n, k, &mut Vec::with_capacity(k), f);
}

#[cfg(test)]
mod tests;
