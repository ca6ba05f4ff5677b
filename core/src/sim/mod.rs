//! Trace-driven simulator: replays a GPU-cluster trace (the Alibaba GPU v2023 format used by
//! the FGD paper) through [`crate::scheduler::Scheduler`], following the paper's protocol
//! (`PROTOCOL.md` beside the trace): seeded arrival order, workload tuned to 130 % of GPU
//! capacity with resampled tasks, each task placed at once or dropped, no departures, one
//! sample after every task, discretised by arrival level.
//!
//! Pure: parsing takes text, runs take a seed; the caller reads files and keeps time.

pub mod churn;
pub mod fragmented;
pub mod generate;
mod trace;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use trace::{parse_nodes, parse_tasks, TaskTiming, Trace, TraceError, TraceTask};

use crate::scheduler::frag::{TypicalTasks, TYPICAL_COVERAGE};
use crate::scheduler::{Policy, Scheduler};

/// Arrival levels reported, in % of GPU capacity (0..=130).
pub const CURVE_POINTS: usize = 131;

/// The outcome of one (trace, policy, seed) run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub policy: Policy,
    pub seed: u64,
    pub tasks: usize,
    pub placed: usize,
    pub dropped: usize,
    /// GPU allocation rate (%) at each arrival level 0..=130 (NaN where no sample).
    pub alloc_curve: Vec<f64>,
}

impl RunResult {
    /// Unallocated GPU capacity (%) once arrived demand reached `level` % of capacity.
    pub fn unallocated_at(&self, level: usize) -> f64 {
        100.0 - self.alloc_curve[level]
    }
}

/// The arrival sequence for `seed` (indexes into `trace.tasks`, which are sorted by name)
/// and the tie-break rank of every node.
pub fn arrivals(trace: &Trace, seed: u64, ratio: f64) -> (Vec<usize>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let _ = rng.next_u64();
    let n = trace.tasks.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let capacity: i64 = trace.nodes.iter().map(|nd| nd.gpus as i64 * 1000).sum();
    let target = (ratio * capacity as f64) as i64;
    let mut requested: i64 = order
        .iter()
        .map(|&i| trace.tasks[i].shape.gpu_total())
        .sum();
    if requested < target && n > 0 {
        loop {
            let idx = rng.random_range(0..n);
            let t = &trace.tasks[idx].shape;
            // The paper's check compares per-GPU milli (a quirk kept on purpose).
            if requested + t.gpu_milli as i64 > target {
                break;
            }
            order.push(idx);
            requested += t.gpu_total();
        }
    } else {
        while requested > target && !order.is_empty() {
            let pos = rng.random_range(0..order.len());
            requested -= trace.tasks[order.remove(pos)].shape.gpu_total();
        }
    }
    let mut rank: Vec<u32> = (0..trace.nodes.len() as u32).collect();
    rank.shuffle(&mut rng);
    (order, rank)
}

/// The typical-task distribution of the trace's original tasks.
pub fn typical_tasks(trace: &Trace) -> TypicalTasks {
    let shapes: Vec<_> = trace
        .tasks
        .iter()
        .map(|t| (t.key.clone(), t.shape))
        .collect();
    TypicalTasks::from_workload(&shapes, TYPICAL_COVERAGE)
}

/// Replays the trace with `policy` for `seed`.
pub fn run(
    trace: &Trace,
    typical: &TypicalTasks,
    policy: Policy,
    seed: u64,
    ratio: f64,
) -> RunResult {
    let (order, rank) = arrivals(trace, seed, ratio);
    let mut nodes = trace.nodes.clone();
    let mut scheduler = Scheduler::new(policy, typical.clone(), rank, seed);
    let capacity_gpus: i64 = nodes.iter().map(|n| n.gpus as i64).sum();
    let mut arrived = 0i64;
    let mut used = 0i64;
    let mut samples = Vec::with_capacity(order.len());
    let mut placed = 0;
    for &i in &order {
        let task = &trace.tasks[i].shape;
        arrived += task.gpu_total();
        if let Some(p) = scheduler.place(&nodes, task) {
            nodes[p.node].place(task, &p.gpus);
            scheduler.node_changed(p.node);
            used += task.gpu_total();
            placed += 1;
        }
        samples.push((arrived, used));
    }
    RunResult {
        policy,
        seed,
        tasks: order.len(),
        placed,
        dropped: order.len() - placed,
        alloc_curve: discretise(&samples, capacity_gpus),
    }
}

/// Replays the trace with `policy` once per seed, on up to `threads` threads (the runs
/// are independent); results in seed order.
pub fn run_seeds(
    trace: &Trace,
    typical: &TypicalTasks,
    policy: Policy,
    seeds: &[u64],
    ratio: f64,
    threads: usize,
) -> Vec<RunResult> {
    let mut runs = Vec::with_capacity(seeds.len());
    for chunk in seeds.chunks(threads.max(1)) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&seed| s.spawn(move || run(trace, typical, policy, seed, ratio)))
                .collect();
            // A panicking run is a bug in the simulator: let it propagate.
            runs.extend(handles.into_iter().map(|h| match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }));
        });
    }
    runs
}

/// The paper's discretisation: value(X) = mean allocation rate (%) over samples whose
/// arrival level rounds to X; with none, over samples within X±1.
pub fn discretise(samples: &[(i64, i64)], capacity_gpus: i64) -> Vec<f64> {
    let cap = capacity_gpus as f64;
    let points: Vec<(i64, f64)> = samples
        .iter()
        .map(|&(a, u)| {
            let level = (a as f64 / cap / 10.0).round_ties_even() as i64;
            let alloc = (u as f64 / cap / 10.0 * 100.0).round_ties_even() / 100.0;
            (level, alloc)
        })
        .collect();
    let mut sums = vec![(0.0f64, 0usize); CURVE_POINTS + 2];
    for &(level, alloc) in &points {
        if (0..(CURVE_POINTS as i64 + 1)).contains(&level) {
            let s = &mut sums[level as usize];
            s.0 += alloc;
            s.1 += 1;
        }
    }
    (0..CURVE_POINTS)
        .map(|x| {
            let (s, n) = sums[x];
            if n > 0 {
                return s / n as f64;
            }
            let lo = x.saturating_sub(1);
            let (s, n) =
                (lo..=x + 1).fold((0.0, 0), |acc, i| (acc.0 + sums[i].0, acc.1 + sums[i].1));
            if n > 0 {
                s / n as f64
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// Mean and sample standard deviation.
pub fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str =
        "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,65536,2,T4\nn1,32000,65536,4,T4\n";
    const TASKS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
        p0,4000,1024,1,500,,LS,Running,0,0,0\n\
        p1,4000,1024,2,1000,,LS,Running,0,0,0\n\
        p2,1000,1024,0,0,,BE,Running,0,0,0\n\
        p3,4000,1024,1,1000,T4,LS,Running,0,0,0\n";

    #[test]
    fn tuning_reaches_the_ratio_and_runs_are_deterministic() {
        let trace = Trace::parse(NODES, TASKS).expect("trace");
        let (order, rank) = arrivals(&trace, 42, 1.3);
        let total: i64 = order
            .iter()
            .map(|&i| trace.tasks[i].shape.gpu_total())
            .sum();
        assert!(
            total <= 7800 && total > 7800 - 1000,
            "tuned to 130 % of 6000: {total}"
        );
        assert_eq!(rank.len(), 2);
        let typical = typical_tasks(&trace);
        let a = run(&trace, &typical, Policy::Fgd, 42, 1.3);
        let b = run(&trace, &typical, Policy::Fgd, 42, 1.3);
        assert_eq!(a.alloc_curve.len(), CURVE_POINTS);
        assert_eq!((a.placed, a.dropped), (b.placed, b.dropped));
        assert!(
            a.placed > 0 && a.dropped > 0,
            "over-subscribed: some tasks drop"
        );
        assert!(a
            .alloc_curve
            .iter()
            .filter(|v| !v.is_nan())
            .all(|v| (0.0..=100.0).contains(v)));
    }

    #[test]
    fn discretise_averages_by_level() {
        // capacity 10 GPUs: level = arrived/100 (%), alloc = used/100 (%).
        let samples = [(4_000, 3_000), (5_000, 4_000), (5_040, 5_000)];
        let c = discretise(&samples, 10);
        assert_eq!(c[40], 30.0);
        assert_eq!(c[50], 45.0);
        assert!(c[45].is_nan(), "no sample within 44..=46");
        assert_eq!(c[41], 30.0, "an empty level falls back to its neighbours");
    }
}
