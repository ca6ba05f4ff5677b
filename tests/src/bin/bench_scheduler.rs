//! `make bench-scheduler`: placements/s of the pure scheduler on one core, on the Alibaba
//! trace's 1,213-node cluster (default trace, seed 42), for each policy; and the weighted
//! admission solve time for 10, 100 and 1,000 pending jobs (median of 5).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use steward_core::scheduler::admission::{admit, AdmissionJob, AdmissionLimits, Capacity};
use steward_core::scheduler::Policy;
use steward_core::sim::{self, Trace};

fn main() -> anyhow::Result<()> {
    let dir = steward_tests::tests_dir().join("data/alibaba-gpu-v2023");
    let trace = Trace::parse(
        &std::fs::read_to_string(dir.join("openb_node_list_gpu_node.csv"))?,
        &std::fs::read_to_string(dir.join("openb_pod_list_default.csv"))?,
    )?;
    let typical = sim::typical_tasks(&trace);
    println!(
        "bench-scheduler: {} nodes, {} GPUs, default trace tuned to 130 %, seed 42, one core",
        trace.nodes.len(),
        trace.gpu_capacity()
    );
    println!(
        "{:>16} {:>14} {:>16}",
        "policy", "placements/s", "unallocated@100"
    );
    for policy in Policy::ALL {
        let started = Instant::now();
        let r = sim::run(&trace, &typical, policy, 42, 1.3);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:>16} {:>14.0} {:>15.2}%",
            policy.name(),
            r.tasks as f64 / secs,
            r.unallocated_at(100)
        );
    }

    println!("weighted admission (GPU, CPU, memory; 4 GPU models; capacity = 40 % of demand):");
    println!(
        "{:>8} {:>10} {:>12} {:>10}",
        "jobs", "method", "median ms", "LP gap"
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for n in [10usize, 100, 1000] {
        let jobs: Vec<AdmissionJob> = (0..n)
            .map(|i| AdmissionJob {
                name: format!("j{i}"),
                weight: rng.random_range(1.0..100.0),
                gpus: rng.random_range(1..=16),
                models: if rng.random_bool(0.3) {
                    1 << rng.random_range(0..4)
                } else {
                    0
                },
                cpu: rng.random_range(1_000..64_000),
                mem: rng.random_range(1_000..256_000),
            })
            .collect();
        let demand_gpus: u32 = jobs.iter().map(|j| j.gpus).sum();
        let cap = Capacity {
            gpus_by_model: (0..4).map(|m| (m, demand_gpus * 4 / 10 / 4)).collect(),
            cpu: jobs.iter().map(|j| j.cpu).sum::<i64>() * 4 / 10,
            mem: jobs.iter().map(|j| j.mem).sum::<i64>() * 4 / 10,
        };
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let t = Instant::now();
            last = Some(admit(&jobs, &cap, AdmissionLimits::default())?);
            times.push(t.elapsed());
        }
        times.sort();
        let plan = last.expect("ran");
        let median: Duration = times[times.len() / 2];
        println!(
            "{n:>8} {:>10} {:>12.2} {:>9.2}%",
            format!("{:?}", plan.method),
            median.as_secs_f64() * 1e3,
            plan.gap * 100.0
        );
    }
    Ok(())
}
