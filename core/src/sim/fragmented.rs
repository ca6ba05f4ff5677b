//! Weighted admission on a fragmented cluster. The weighted-admission program
//! ([`crate::scheduler::admission`]) sees free capacity as pools of GPUs per model; a
//! cluster holds it in nodes, partly taken, and a task needs its GPUs on one node. This
//! compares, for gang jobs on a given cluster state:
//! - the pool optimum (the program on the summed free GPUs) and whether its set can be
//!   placed at all;
//! - the exact optimum on the nodes (every subset, with an exact packing check);
//! - what the controller's scheduling round admits (its real code on a committed state),
//!   and its gap to the exact optimum.

use std::collections::BTreeMap;

use crate::command::{Command, CommandResult};
use crate::inventory::{GpuInfo, Inventory};
use crate::job::JobSpec;
use crate::jobs::round::{schedule_round, RoundConfig};
use crate::jobs::NewAllocation;
use crate::scheduler::admission::{admit, AdmissionError, AdmissionJob, AdmissionLimits, Capacity};
use crate::state::ClusterState;

/// Most jobs the exact search takes (it tries every subset).
pub const MAX_EXACT_JOBS: usize = 16;
/// Most nodes a checked cluster may have.
pub const MAX_NODES: usize = 256;

/// A gang job: `tasks` tasks of `gpus_per_task` whole GPUs, all placed or none.
#[derive(Debug, Clone, PartialEq)]
pub struct GangJob {
    pub name: String,
    pub weight: f64,
    pub tasks: u32,
    pub gpus_per_task: u32,
}

/// Nodes of one GPU model: their GPUs and how many are taken.
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentedCluster {
    pub gpus_per_node: Vec<u32>,
    pub taken_per_node: Vec<u32>,
}

impl FragmentedCluster {
    pub fn free(&self) -> Vec<u32> {
        self.gpus_per_node
            .iter()
            .zip(&self.taken_per_node)
            .map(|(g, t)| g.saturating_sub(*t))
            .collect()
    }
}

/// A chosen set of jobs (indexes, ascending) and its total weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub jobs: Vec<usize>,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionCheck {
    /// The program's optimum over the pooled free GPUs.
    pub pool: Chosen,
    /// Whether the pool optimum's jobs can all be placed on the nodes.
    pub pool_fits: bool,
    /// The best set that can be placed.
    pub exact: Chosen,
    /// The set the scheduling round placed.
    pub round: Chosen,
    /// (exact − round) / exact; 0 when the round admits an optimal set.
    pub gap: f64,
}

/// Whether tasks of `sizes` GPUs each fit into nodes with `free` GPUs (exact search).
pub fn packs(sizes: &[u32], free: &[u32]) -> bool {
    let mut sizes: Vec<u32> = sizes.iter().copied().filter(|&s| s > 0).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    if sizes.iter().map(|&s| u64::from(s)).sum::<u64>() > free.iter().map(|&f| u64::from(f)).sum() {
        return false;
    }
    let mut bins = free.to_vec();
    fn place(i: usize, sizes: &[u32], bins: &mut [u32]) -> bool {
        if i == sizes.len() {
            return true;
        }
        let mut tried: Vec<u32> = Vec::new();
        for b in 0..bins.len() {
            // Bins with the same room are interchangeable: try one of them.
            if bins[b] < sizes[i] || tried.contains(&bins[b]) {
                continue;
            }
            tried.push(bins[b]);
            bins[b] -= sizes[i];
            if place(i + 1, sizes, bins) {
                return true;
            }
            bins[b] += sizes[i];
        }
        false
    }
    place(0, &sizes, &mut bins)
}

fn task_sizes(jobs: &[GangJob], set: &[usize]) -> Vec<u32> {
    set.iter()
        .flat_map(|&j| std::iter::repeat_n(jobs[j].gpus_per_task, jobs[j].tasks as usize))
        .collect()
}

fn chosen(jobs: &[GangJob], mut set: Vec<usize>) -> Chosen {
    set.sort_unstable();
    Chosen {
        weight: set.iter().map(|&j| jobs[j].weight).sum(),
        jobs: set,
    }
}

/// The best placeable set, by trying every subset (heaviest first, packing checked only
/// for a subset that would improve on the best so far).
pub fn exact_on_nodes(jobs: &[GangJob], free: &[u32]) -> Result<Chosen, String> {
    if jobs.len() > MAX_EXACT_JOBS {
        return Err(format!(
            "{} jobs: the exact search takes at most {MAX_EXACT_JOBS}",
            jobs.len()
        ));
    }
    let mut subsets: Vec<(f64, u32)> = (0u32..(1 << jobs.len()))
        .map(|mask| {
            let w = (0..jobs.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| jobs[i].weight)
                .sum();
            (w, mask)
        })
        .collect();
    subsets.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, mask) in subsets {
        let set: Vec<usize> = (0..jobs.len()).filter(|i| mask & (1 << i) != 0).collect();
        if packs(&task_sizes(jobs, &set), free) {
            return Ok(chosen(jobs, set));
        }
    }
    Ok(chosen(jobs, Vec::new()))
}

/// The set the controller's scheduling round admits: the cluster as a committed state
/// (one model, the taken GPUs held by running allocations), the jobs submitted as gangs
/// of equal priority, one round.
pub fn round_on_nodes(jobs: &[GangJob], cluster: &FragmentedCluster) -> Result<Chosen, String> {
    let mut state = ClusterState::default();
    state.apply(Command::SetClusterLevel { level: 3 });
    let node_id = |n: usize| format!("node-{n:03}");
    let gpu_id = |n: usize, g: usize| format!("GPU-{n:03}-{g}");
    let mut commands = Vec::new();
    for (n, &gpus) in cluster.gpus_per_node.iter().enumerate() {
        let mut inv = Inventory::default();
        inv.host.cpu.threads = 256;
        inv.host.memory_total_bytes = Some(2048 * 1024 * 1024 * 1024);
        inv.gpus = (0..gpus as usize)
            .map(|g| GpuInfo {
                index: g as u32,
                uuid: gpu_id(n, g),
                name: "GPU".into(),
                ..Default::default()
            })
            .collect();
        commands.push(Command::RegisterNodeTyped {
            node: node_id(n),
            hostname: node_id(n),
            labels: BTreeMap::new(),
            inventory: Box::new(inv),
            registration_digest: String::new(),
        });
    }
    state.apply(Command::Stamped {
        at_unix_ms: 1_000_000,
        commands,
    });
    let spec = |name: &str, tasks: u32, gpus: u32, weight: f64| -> Result<JobSpec, String> {
        let mut s = JobSpec::from_toml(&format!(
            "name = \"{name}\"\ncommand = \"simulated\"\n[resources]\ncpu_millicores = 1000\nmemory_mib = 1024\n"
        ))
        .map_err(|e| e.to_string())?;
        s.tasks = tasks;
        s.gang = tasks > 1;
        s.weight = weight;
        s.resources.gpus = gpus;
        s.validate().map_err(|e| format!("job {name}: {e}"))?;
        Ok(s)
    };
    let submit = |state: &mut ClusterState, s: JobSpec| -> Result<String, String> {
        match state.apply(Command::SubmitJob { spec: Box::new(s) }) {
            CommandResult::JobSubmitted { job, .. } => Ok(job),
            other => Err(format!("submitting: {other:?}")),
        }
    };
    // The taken GPUs: one running allocation per node that has any.
    for (n, &taken) in cluster.taken_per_node.iter().enumerate() {
        if taken == 0 {
            continue;
        }
        let job = submit(&mut state, spec(&format!("running-{n}"), 1, taken, 1.0)?)?;
        let placed = state.apply(Command::PlaceAllocations {
            job: job.clone(),
            placements: vec![NewAllocation {
                task: 0,
                node: node_id(n),
                gpus: (0..taken as usize).map(|g| gpu_id(n, g)).collect(),
                gpu_milli: 1000,
                cpu_millicores: 1000,
                memory_mib: 1024,
                rendezvous: None,
            }],
        });
        if !matches!(placed, CommandResult::AllocationsPlaced { .. }) {
            return Err(format!("holding node {n}'s taken GPUs: {placed:?}"));
        }
    }
    let mut ids = Vec::with_capacity(jobs.len());
    for j in jobs {
        ids.push(submit(
            &mut state,
            spec(&j.name, j.tasks, j.gpus_per_task, j.weight)?,
        )?);
    }
    let round = schedule_round(&state, &RoundConfig::default());
    let mut admitted = Vec::new();
    for c in round.commands {
        if let Command::PlaceAllocations { job, .. } = &c {
            if let Some(i) = ids.iter().position(|id| id == job) {
                if !admitted.contains(&i) {
                    admitted.push(i);
                }
            }
        }
    }
    Ok(chosen(jobs, admitted))
}

/// The whole comparison (see the module).
pub fn check(jobs: &[GangJob], cluster: &FragmentedCluster) -> Result<AdmissionCheck, String> {
    if cluster.gpus_per_node.len() != cluster.taken_per_node.len() {
        return Err("one taken count per node is needed".into());
    }
    if cluster.gpus_per_node.len() > MAX_NODES {
        return Err(format!("at most {MAX_NODES} nodes"));
    }
    let free = cluster.free();
    let pool_jobs: Vec<AdmissionJob> = jobs
        .iter()
        .map(|j| AdmissionJob {
            name: j.name.clone(),
            weight: j.weight,
            gpus: j.tasks * j.gpus_per_task,
            models: 0,
            cpu: 0,
            mem: 0,
        })
        .collect();
    let cap = Capacity {
        gpus_by_model: vec![(0, free.iter().sum())],
        cpu: i64::MAX / 4,
        mem: i64::MAX / 4,
    };
    let plan = admit(&pool_jobs, &cap, AdmissionLimits::default())
        .map_err(|e: AdmissionError| e.to_string())?;
    let pool = chosen(jobs, plan.admitted);
    let pool_fits = packs(&task_sizes(jobs, &pool.jobs), &free);
    let exact = exact_on_nodes(jobs, &free)?;
    let round = round_on_nodes(jobs, cluster)?;
    let gap = if exact.weight > 0.0 {
        ((exact.weight - round.weight) / exact.weight).max(0.0)
    } else {
        0.0
    };
    Ok(AdmissionCheck {
        pool,
        pool_fits,
        exact,
        round,
        gap,
    })
}

/// The seed's ten training jobs (`train-k`: k tasks of 8 GPUs, weights 3 … 22) on 16
/// eight-GPU nodes with 28 GPUs taken in fragments: 100 GPUs free, as in the seed's pool,
/// but only 10 whole nodes.
pub fn seed_example_fragmented() -> (Vec<GangJob>, FragmentedCluster) {
    let (seed, _) = crate::scheduler::admission::seed_example();
    let jobs = seed
        .into_iter()
        .map(|j| GangJob {
            name: j.name,
            weight: j.weight,
            tasks: j.gpus / 8,
            gpus_per_task: 8,
        })
        .collect();
    let mut taken = vec![0u32; 10];
    taken.extend([4, 4, 5, 5, 5, 5]);
    (
        jobs,
        FragmentedCluster {
            gpus_per_node: vec![8; 16],
            taken_per_node: taken,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The best weight with at most `nodes` whole free nodes, for jobs of one task size
    /// that fills a node (a 0/1 knapsack by dynamic programming: an independent check).
    fn knapsack(jobs: &[GangJob], nodes: usize) -> f64 {
        let mut best = vec![0.0f64; nodes + 1];
        for j in jobs {
            let k = j.tasks as usize;
            for c in (k..=nodes).rev() {
                best[c] = best[c].max(best[c - k] + j.weight);
            }
        }
        best[nodes]
    }

    #[test]
    fn the_seed_example_on_fragments_reports_the_rounds_gap() {
        let (jobs, cluster) = seed_example_fragmented();
        let free = cluster.free();
        assert_eq!(
            free.iter().sum::<u32>(),
            100,
            "the seed's 100 GPUs, in fragments"
        );
        let c = check(&jobs, &cluster).expect("checks");
        // The pool optimum needs 12 whole nodes; there are 10.
        assert!((c.pool.weight - 30.0).abs() < 1e-9, "{:?}", c.pool);
        assert!(!c.pool_fits);
        assert!((c.exact.weight - knapsack(&jobs, 10)).abs() < 1e-9);
        assert!(packs(&task_sizes(&jobs, &c.exact.jobs), &free));
        // The round admits by weight: train-10 takes the 10 whole nodes.
        assert_eq!(c.round.jobs, vec![9]);
        assert!((c.gap - (c.exact.weight - 22.0) / c.exact.weight).abs() < 1e-9);
    }

    #[test]
    fn packing_is_exact() {
        assert!(packs(&[4, 4, 2, 2], &[6, 6]));
        assert!(
            !packs(&[4, 4, 4], &[6, 6]),
            "12 GPUs of 12 free, but not in 4s"
        );
        assert!(packs(&[], &[]));
        assert!(!packs(&[1], &[]));
    }

    #[test]
    fn the_round_never_beats_the_exact_optimum_and_what_it_admits_packs() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..40 {
            let nodes = rng.random_range(2..10usize);
            let cluster = FragmentedCluster {
                gpus_per_node: vec![8; nodes],
                taken_per_node: (0..nodes).map(|_| rng.random_range(0..=8)).collect(),
            };
            let jobs: Vec<GangJob> = (0..rng.random_range(1..8))
                .map(|i| GangJob {
                    name: format!("j{i}"),
                    weight: f64::from(rng.random_range(1..20u32)),
                    tasks: rng.random_range(1..4),
                    gpus_per_task: [1, 2, 4, 8][rng.random_range(0..4usize)],
                })
                .collect();
            let c = check(&jobs, &cluster).expect("checks");
            let free = cluster.free();
            assert!(c.round.weight <= c.exact.weight + 1e-9, "{c:?}");
            assert!(c.exact.weight <= c.pool.weight + 1e-9, "{c:?}");
            assert!(packs(&task_sizes(&jobs, &c.round.jobs), &free), "{c:?}");
            assert!(c.gap >= 0.0 && c.gap <= 1.0);
        }
    }
}
