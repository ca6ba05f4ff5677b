//! Placement policies and GPU selection.
//!
//! A [`Scheduler`] places one task at a time on a slice of [`NodeState`]s: it filters the
//! feasible nodes, scores them with its policy, takes the best (ties: the node with the
//! lowest tie-break rank, a fixed random priority per run), and picks the GPUs. The paper's
//! policies follow `PROTOCOL.md` (the FGD simulator) exactly, integer truncations included.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use super::frag::{FragCache, TypicalTasks};
use super::model::{NodeState, TaskShape, GPU_MILLI, MAX_GPUS_PER_NODE};

/// Largest node CPU (milli) and GPU (milli) the paper's scores normalise by.
const MAX_SPEC_CPU: f64 = 128_000.0;
const MAX_SPEC_GPU: f64 = 8_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    Random,
    BestFit,
    DotProduct,
    GpuPacking,
    GpuClustering,
    Fgd,
    /// Steward's default: see [`Scheduler::steward_score`].
    Steward,
}

impl Policy {
    pub const ALL: [Policy; 7] = [
        Policy::Random,
        Policy::BestFit,
        Policy::DotProduct,
        Policy::GpuPacking,
        Policy::GpuClustering,
        Policy::Fgd,
        Policy::Steward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::BestFit => "best-fit",
            Policy::DotProduct => "dot-product",
            Policy::GpuPacking => "gpu-packing",
            Policy::GpuClustering => "gpu-clustering",
            Policy::Fgd => "fgd",
            Policy::Steward => "steward",
        }
    }

    /// Whether scoring needs the fragmentation measure.
    fn uses_fragmentation(self) -> bool {
        matches!(self, Policy::Fgd | Policy::Steward)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!("unknown policy `{s}`; choose from {}", names.join(", "))
            })
    }
}

/// Where a task goes: a node and the GPUs (indexes on that node) it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: usize,
    pub gpus: Vec<usize>,
}

/// Whether `task` fits on `node` (CPU, memory, GPU model and GPU capacity).
pub fn fits(node: &NodeState, task: &TaskShape) -> bool {
    if node.cordoned || node.tasks_free == 0 || node.cpu_free < task.cpu || node.mem_free < task.mem
    {
        return false;
    }
    if !task.wants_gpu() {
        return true;
    }
    if node.gpus == 0 || !task.model_allowed(node.model) || node.gpu_mem_mib < task.min_gpu_mem_mib
    {
        return false;
    }
    let need = if task.num_gpu > 1 {
        GPU_MILLI
    } else {
        task.gpu_milli
    };
    node.gpu_free().iter().filter(|&&g| g >= need).count() >= task.num_gpu as usize
}

/// GPU selection "best": a sharing task takes the GPU with the least free milli that fits
/// (lowest index on ties); whole-GPU tasks take the lowest-index fully free GPUs.
fn select_best(node: &NodeState, task: &TaskShape) -> Vec<usize> {
    if !task.wants_gpu() {
        return Vec::new();
    }
    if task.is_sharing() {
        let free = node.gpu_free();
        let mut best: Option<usize> = None;
        for (i, &g) in free.iter().enumerate() {
            if g >= task.gpu_milli && best.is_none_or(|b| g < free[b]) {
                best = Some(i);
            }
        }
        return best.into_iter().collect();
    }
    topology_aware_free(node, task.num_gpu as usize)
}

/// `k` fully free GPUs, inside one topology group when some group has enough (the group
/// with the fewest free GPUs that fits, to keep large groups whole); else the lowest indexes.
fn topology_aware_free(node: &NodeState, k: usize) -> Vec<usize> {
    if k > 1 {
        let mut best: Option<(usize, u8)> = None;
        for group in node.gpu_group[..node.gpus as usize].iter().copied() {
            let free = (0..node.gpus as usize)
                .filter(|&i| node.gpu_group[i] == group && node.gpu_free[i] == GPU_MILLI)
                .count();
            if free >= k && best.is_none_or(|(bf, _)| free < bf) {
                best = Some((free, group));
            }
        }
        if let Some((_, group)) = best {
            return (0..node.gpus as usize)
                .filter(|&i| node.gpu_group[i] == group && node.gpu_free[i] == GPU_MILLI)
                .take(k)
                .collect();
        }
    }
    lowest_free(node, k)
}

fn lowest_free(node: &NodeState, k: usize) -> Vec<usize> {
    node.gpu_free()
        .iter()
        .enumerate()
        .filter(|(_, &g)| g == GPU_MILLI)
        .map(|(i, _)| i)
        .take(k)
        .collect()
}

fn sigmoid_score(delta_f: f64) -> i64 {
    // int64(100 · sigmoid((F0 − F')/1000))
    (100.0 / (1.0 + (delta_f / 1000.0).exp())) as i64
}

/// A stateful scheduler for one run: policy, typical tasks, fragmentation memo, random
/// source and tie-break ranks.
pub struct Scheduler {
    pub policy: Policy,
    typical: TypicalTasks,
    cache: FragCache,
    rng: ChaCha8Rng,
    /// Tie-break rank of each node (lower wins).
    rank: Vec<u32>,
    /// F_n(M) of each node, until it changes.
    node_frag: Vec<Option<f64>>,
    /// Change counter of each node (starts at 1; 0 marks "not memoised").
    version: Vec<u32>,
    /// Score of each node for a task shape, valid while the node's version matches: task
    /// shapes repeat, and one placement changes one node.
    score_memo: FxHashMap<TaskShape, Vec<(u32, Score)>>,
    /// The typical tasks' CPU per milli-GPU on each GPU model, counting only the tasks
    /// that may use that model (Steward's stranded-capacity term).
    cpu_per_gpu_on: Vec<f64>,
    /// How contested each GPU model's capacity is ([`contested_share`]), computed from the
    /// first node list the scheduler sees (Steward's policy).
    contested: Option<Vec<f64>>,
}

/// For each GPU model, the share of a GPU of that model that expected demand with no other
/// choice lays claim to: `max(0, 1 − P̄ / P_m)`, where a typical task's GPU demand
/// `p·g` is spread evenly over the GPUs of the models it may use, `P_m` is the demand per
/// GPU that lands on model `m` that way, and `P̄` the cluster's mean demand per GPU. With
/// no model constraints every `P_m` equals `P̄` and every share is 0; a model that
/// constrained tasks crowd onto (because it is rare, or wanted) gets a share near 1.
pub fn contested_share(typical: &TypicalTasks, nodes: &[NodeState]) -> Vec<f64> {
    let mut capacity = [0f64; 64];
    for n in nodes {
        capacity[n.model as usize] += n.gpus as f64;
    }
    let total: f64 = capacity.iter().sum();
    let mut pressure = [0f64; 64];
    let mut demand = 0.0;
    for t in typical.tasks.iter().filter(|t| t.shape.wants_gpu()) {
        let d = t.p * t.shape.gpu_total() as f64;
        let eligible: f64 = (0..64u8)
            .filter(|&m| t.shape.model_allowed(m))
            .map(|m| capacity[m as usize])
            .sum();
        if eligible <= 0.0 {
            continue;
        }
        demand += d;
        for m in (0..64u8).filter(|&m| t.shape.model_allowed(m)) {
            pressure[m as usize] += d / eligible;
        }
    }
    let mean = if total > 0.0 { demand / total } else { 0.0 };
    pressure
        .iter()
        .map(|&p| {
            if p > 0.0 {
                (1.0 - mean / p).max(0.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// Task shapes whose scores are memoised before the memo starts over.
const SCORE_MEMO_SHAPES: usize = 4096;

/// Most score a node gains for holding all of a task's inputs (below one point).
const LOCALITY_BONUS: f64 = 0.99;

/// A candidate's score: larger is better.
type Score = f64;

impl Scheduler {
    /// `rank[i]` is node i's tie-break rank; `seed` drives the random policy.
    pub fn new(policy: Policy, typical: TypicalTasks, rank: Vec<u32>, seed: u64) -> Self {
        Scheduler {
            policy,
            cache: FragCache::default(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5c4e_d01e),
            rank,
            node_frag: Vec::new(),
            version: Vec::new(),
            score_memo: FxHashMap::default(),
            cpu_per_gpu_on: (0..64u8).map(|m| typical.cpu_per_gpu_milli_on(m)).collect(),
            contested: None,
            typical,
        }
    }

    pub fn typical(&self) -> &TypicalTasks {
        &self.typical
    }

    /// Tells the scheduler that node `i` changed (a task was placed or removed).
    pub fn node_changed(&mut self, i: usize) {
        if let Some(f) = self.node_frag.get_mut(i) {
            *f = None;
        }
        if let Some(v) = self.version.get_mut(i) {
            *v = v.wrapping_add(1).max(1);
        }
    }

    /// The policy's score of node `i` for `task`, memoised per task shape.
    fn memo_score(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> Score {
        if self.version.len() <= i {
            self.version.resize(i + 1, 1);
        }
        let version = self.version[i];
        if let Some(&(v, s)) = self.score_memo.get(task).and_then(|m| m.get(i)) {
            if v == version {
                return s;
            }
        }
        let s = self.score(i, node, task);
        if self.score_memo.len() >= SCORE_MEMO_SHAPES && !self.score_memo.contains_key(task) {
            self.score_memo.clear();
        }
        let memo = self.score_memo.entry(*task).or_default();
        if memo.len() <= i {
            memo.resize(i + 1, (0, 0.0));
        }
        memo[i] = (version, s);
        s
    }

    fn node_fragment(&mut self, i: usize, node: &NodeState) -> f64 {
        if self.node_frag.len() <= i {
            self.node_frag.resize(i + 1, None);
        }
        if let Some(f) = self.node_frag[i] {
            return f;
        }
        let f = self.cache.node(&self.typical, node);
        self.node_frag[i] = Some(f);
        f
    }

    /// Chooses a node and GPUs for `task`, or `None` when no node can host it.
    pub fn place(&mut self, nodes: &[NodeState], task: &TaskShape) -> Option<Placement> {
        self.place_near(nodes, task, &[])
    }

    /// Like [`Scheduler::place`], preferring nodes that hold the task's input data:
    /// `locality[i]` in [0, 1] is the share of the inputs node i holds. It adds under one
    /// score point, so it decides between otherwise equal nodes and never overrides the policy.
    pub fn place_near(
        &mut self,
        nodes: &[NodeState],
        task: &TaskShape,
        locality: &[f64],
    ) -> Option<Placement> {
        if self.policy == Policy::Steward && self.contested.is_none() {
            self.contested = Some(contested_share(&self.typical, nodes));
        }
        let feasible: Vec<usize> = (0..nodes.len())
            .filter(|&i| fits(&nodes[i], task))
            .collect();
        let node = match feasible.len() {
            0 => return None,
            1 => feasible[0],
            n if self.policy == Policy::Random => feasible[self.rng.random_range(0..n)],
            _ => {
                let mut best: Option<(Score, u32, usize)> = None;
                for &i in &feasible {
                    let near = locality.get(i).copied().unwrap_or(0.0).clamp(0.0, 1.0);
                    let s = self.memo_score(i, &nodes[i], task) + LOCALITY_BONUS * near;
                    let r = self.rank.get(i).copied().unwrap_or(u32::MAX);
                    if best.is_none_or(|(bs, br, _)| s > bs || (s == bs && r < br)) {
                        best = Some((s, r, i));
                    }
                }
                best?.2
            }
        };
        let gpus = self.select_gpus(node, &nodes[node], task);
        Some(Placement { node, gpus })
    }

    fn score(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> Score {
        match self.policy {
            Policy::Random => 0.0,
            Policy::BestFit => best_fit_score(node, task) as f64,
            Policy::DotProduct => dot_product_score(node, task) as f64,
            Policy::GpuPacking => packing_score(node, task) as f64,
            Policy::GpuClustering => clustering_score(node, task) as f64,
            Policy::Fgd => self.fgd(i, node, task).0 as f64,
            Policy::Steward => self.steward_score(i, node, task),
        }
    }

    fn select_gpus(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> Vec<usize> {
        match self.policy {
            Policy::Random if task.is_sharing() => {
                let fitting: Vec<usize> = node
                    .gpu_free()
                    .iter()
                    .enumerate()
                    .filter(|(_, &g)| g >= task.gpu_milli)
                    .map(|(i, _)| i)
                    .collect();
                match fitting.len() {
                    0 => Vec::new(),
                    n => vec![fitting[self.rng.random_range(0..n)]],
                }
            }
            p if p.uses_fragmentation() && task.is_sharing() => self.fgd(i, node, task).1,
            _ => select_best(node, task),
        }
    }

    /// Fragmentation after hypothetically placing `task` on `gpu` (sharing) or on the
    /// lowest fully free GPUs (whole), with the node's CPU reduced.
    fn frag_after(&mut self, node: &NodeState, task: &TaskShape, gpu: Option<usize>) -> f64 {
        let mut free = [0u16; MAX_GPUS_PER_NODE];
        let n = node.gpus as usize;
        free[..n].copy_from_slice(node.gpu_free());
        match gpu {
            Some(i) => free[i] -= task.gpu_milli,
            None if task.wants_gpu() => {
                for i in lowest_free(node, task.num_gpu as usize) {
                    free[i] -= task.gpu_milli;
                }
            }
            None => {}
        }
        self.cache.fragment(
            &self.typical,
            node.model,
            node.cpu_free - task.cpu,
            &free[..n],
        )
    }

    /// FGD's node score and GPU choice (PROTOCOL.md §3.6).
    fn fgd(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> (i64, Vec<usize>) {
        let f0 = self.node_fragment(i, node);
        if task.is_sharing() {
            let mut best: Option<(i64, usize)> = None;
            for g in 0..node.gpus as usize {
                if node.gpu_free[g] >= task.gpu_milli {
                    let s = sigmoid_score(self.frag_after(node, task, Some(g)) - f0);
                    if best.is_none_or(|(bs, _)| s > bs) {
                        best = Some((s, g));
                    }
                }
            }
            return best.map_or((0, Vec::new()), |(s, g)| (s, vec![g]));
        }
        let s = sigmoid_score(self.frag_after(node, task, None) - f0);
        (s, topology_aware_free(node, task.num_gpu as usize))
    }

    /// Steward's default score, to maximise: FGD's gradient step on an extended measure,
    /// fragmentation F plus the GPU capacity *stranded for lack of CPU* S (free GPU milli
    /// the node's free CPU cannot feed at the typical tasks' CPU-per-GPU ratio):
    /// `int(100 · sigmoid(−(ΔF + ΔS)/1000))`.
    ///
    /// FGD's F already counts a node's GPUs as lost to a typical task that lacks CPU there,
    /// but only task by task; as CPU-heavy tasks land on GPU nodes, S grows smoothly before
    /// any typical task flips class, and that is the fragmentation FGD leaves behind (its
    /// final state is mostly nodes with idle GPUs and no CPU). Keeping FGD's coarse integer
    /// score (ties go to the random per-run node rank) spreads load the way FGD does; exact
    /// ΔF ordering packs too eagerly and does worse.
    pub fn steward_score(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> Score {
        let delta_f = self.steward_best(i, node, task);
        let stranded_before = self.stranded(node.model, node.cpu_free, node.gpu_free_total());
        let stranded_after = self.stranded(
            node.model,
            node.cpu_free - task.cpu,
            node.gpu_free_total() - task.gpu_total(),
        );
        // Taking GPUs of a contested model takes them from demand that has no other choice.
        let contested = self
            .contested
            .as_ref()
            .and_then(|c| c.get(node.model as usize))
            .copied()
            .unwrap_or(0.0);
        let claimed = task.gpu_total() as f64 * contested;
        sigmoid_score(delta_f + stranded_after - stranded_before + claimed) as f64
    }

    /// GPU milli a node of `model` with `cpu` free CPU and `gpu` free milli-GPU cannot use
    /// for lack of CPU, at the CPU-per-GPU ratio of the typical tasks that may use it.
    fn stranded(&self, model: u8, cpu: i64, gpu: i64) -> f64 {
        let r = self
            .cpu_per_gpu_on
            .get(model as usize)
            .copied()
            .unwrap_or(0.0);
        if r <= 0.0 {
            return 0.0;
        }
        (gpu as f64 - cpu.max(0) as f64 / r).max(0.0)
    }

    /// Fragmentation increase of the best GPU choice for `task` on node `i`.
    fn steward_best(&mut self, i: usize, node: &NodeState, task: &TaskShape) -> f64 {
        let f0 = self.node_fragment(i, node);
        if task.is_sharing() {
            let mut best = f64::INFINITY;
            for g in 0..node.gpus as usize {
                if node.gpu_free[g] >= task.gpu_milli {
                    best = best.min(self.frag_after(node, task, Some(g)) - f0);
                }
            }
            best
        } else {
            self.frag_after(node, task, None) - f0
        }
    }
}

/// Best-fit (PROTOCOL.md §3.2).
pub fn best_fit_score(node: &NodeState, task: &TaskShape) -> i64 {
    let s = 0.5 * (node.cpu_free - task.cpu) as f64 / MAX_SPEC_CPU
        + 0.5 * (node.gpu_free_total() - task.gpu_total()) as f64 / MAX_SPEC_GPU;
    ((1.0 - s) * 100.0) as i64
}

/// Dot-product (PROTOCOL.md §3.3): the smallest dot product wins.
pub fn dot_product_score(node: &NodeState, task: &TaskShape) -> i64 {
    if node.cpu_free < task.cpu {
        return 0;
    }
    let dot = (node.cpu_free as f64 / MAX_SPEC_CPU) * (task.cpu as f64 / MAX_SPEC_CPU)
        + (node.gpu_free_total() as f64 / MAX_SPEC_GPU) * (task.gpu_total() as f64 / MAX_SPEC_GPU);
    (100.0 * (1.0 - dot / 2.0)) as i64
}

/// GPU packing (PROTOCOL.md §3.4).
pub fn packing_score(node: &NodeState, task: &TaskShape) -> i64 {
    if !task.wants_gpu() {
        return 0;
    }
    let k = node.gpus as i64;
    let ff = node.fully_free_gpus() as i64;
    if ff == k {
        return (33 - ff).max(ff);
    }
    let mut order: Vec<usize> = (0..node.gpus as usize).collect();
    order.sort_by_key(|&i| node.gpu_free[i]);
    let need = task.gpu_milli;
    let picked: Vec<u16> = order
        .into_iter()
        .map(|i| node.gpu_free[i])
        .filter(|&g| g >= need)
        .take(task.num_gpu as usize)
        .collect();
    let untouched = picked.iter().filter(|&&g| g == GPU_MILLI).count() as i64;
    if untouched > 0 {
        (50 - untouched).max(33)
    } else {
        let used: i64 = picked.iter().map(|&g| g as i64 * 100 / 1000).sum();
        (100 - used / 10).max(50)
    }
}

/// GPU clustering (PROTOCOL.md §3.5).
pub fn clustering_score(node: &NodeState, task: &TaskShape) -> i64 {
    let Some(tag) = task.affinity_bit() else {
        return 0;
    };
    let base = 25 * (8000 - node.gpu_free_total()) / 8000;
    let tags = node.affinity.count_ones();
    if node.affinity & tag != 0 {
        if tags == 1 {
            75 + base
        } else {
            50 + base
        }
    } else if tags == 0 {
        25 + base
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(free: &[u16]) -> NodeState {
        let mut n = NodeState::new("n".into(), 0, free.len() as u8, 64_000, 256_000).expect("node");
        n.gpu_free[..free.len()].copy_from_slice(free);
        n
    }

    fn task(num_gpu: u8, milli: u16) -> TaskShape {
        TaskShape {
            min_gpu_mem_mib: 0,
            cpu: 1000,
            mem: 1000,
            num_gpu,
            gpu_milli: milli,
            models: 0,
        }
    }

    #[test]
    fn packing_unit_tests_from_the_paper() {
        assert_eq!(
            packing_score(&node(&[200, 1000, 1000, 500]), &task(2, 1000)),
            48
        );
        assert_eq!(packing_score(&node(&[1000; 4]), &task(1, 500)), 29);
        assert_eq!(packing_score(&node(&[1000; 8]), &task(1, 500)), 25);
        assert_eq!(
            packing_score(&node(&[200, 1000, 1000, 500]), &task(2, 200)),
            93
        );
    }

    #[test]
    fn feasibility_and_gpu_selection() {
        let n = node(&[200, 1000, 1000, 500]);
        assert!(fits(&n, &task(2, 1000)));
        assert!(!fits(&n, &task(3, 1000)));
        assert!(fits(&n, &task(1, 450)));
        assert_eq!(
            select_best(&n, &task(1, 450)),
            vec![3],
            "tightest GPU that fits"
        );
        assert_eq!(select_best(&n, &task(2, 1000)), vec![1, 2]);
        let mut typed = task(1, 100);
        typed.models = 1 << 3;
        assert!(!fits(&n, &typed), "model 0 is not allowed");
        let mut hungry = task(0, 0);
        hungry.cpu = 65_000;
        assert!(!fits(&n, &hungry));
    }

    #[test]
    fn ties_go_to_the_lowest_rank() {
        let nodes = vec![node(&[1000; 2]), node(&[1000; 2]), node(&[1000; 2])];
        let mut s = Scheduler::new(Policy::BestFit, TypicalTasks::default(), vec![2, 0, 1], 1);
        assert_eq!(s.place(&nodes, &task(1, 1000)).map(|p| p.node), Some(1));
    }
}
