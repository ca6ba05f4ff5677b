//! Weighted admission: when the pending jobs do not all fit, choose the set that maximises
//! Σ w_j·x_j under per-model GPU, CPU and memory capacity.
//!
//! Exact (a mixed-integer program solved by good_lp's pure-Rust microlp backend) up to
//! [`AdmissionLimits::exact_max_jobs`] jobs and within a time budget; past either, a greedy
//! by weight density, reported with its gap to the LP-relaxation bound. GPUs of a job may
//! come from any of its allowed models (continuous split variables y_{j,m}; for integral
//! x the transportation constraints always admit an integral split).

use good_lp::{
    constraint, microlp, variable, Expression, ProblemVariables, Solution, SolverModel, Variable,
    WithTimeLimit,
};

/// One pending job as admission sees it (all its tasks together).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionJob {
    pub name: String,
    pub weight: f64,
    /// Whole GPUs needed.
    pub gpus: u32,
    /// Allowed GPU models (bit mask over model ids; 0 = any).
    pub models: u64,
    pub cpu: i64,
    pub mem: i64,
}

/// Free capacity: GPUs per model, CPU (milli) and memory (MiB).
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub gpus_by_model: Vec<(u8, u32)>,
    pub cpu: i64,
    pub mem: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Proven optimal.
    Exact,
    /// Greedy by weight density; see `gap`.
    Greedy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPlan {
    /// Indexes of the admitted jobs, ascending.
    pub admitted: Vec<usize>,
    pub objective: f64,
    pub method: Method,
    /// LP-relaxation bound on the optimum.
    pub upper_bound: f64,
    /// (upper_bound − objective) / upper_bound; 0 when exact.
    pub gap: f64,
}

/// Explicit limits of the exact solve.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub exact_max_jobs: usize,
    pub time_limit_s: f64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            exact_max_jobs: 200,
            time_limit_s: 2.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("job `{0}` has a negative or non-finite weight")]
    BadWeight(String),
    #[error("solver: {0}")]
    Solver(String),
}

fn allowed(job: &AdmissionJob, model: u8) -> bool {
    job.models == 0 || job.models & (1u64 << model) != 0
}

/// Builds and solves the program; `integer` chooses MIP or its LP relaxation.
fn solve(
    jobs: &[AdmissionJob],
    cap: &Capacity,
    integer: bool,
    time_limit_s: f64,
) -> Result<(Vec<f64>, f64), AdmissionError> {
    let mut vars = ProblemVariables::new();
    let x: Vec<Variable> = jobs
        .iter()
        .map(|_| {
            let v = variable().min(0).max(1);
            vars.add(if integer { v.integer() } else { v })
        })
        .collect();
    let mut y: Vec<Vec<(usize, Variable)>> = vec![Vec::new(); jobs.len()];
    for (j, job) in jobs.iter().enumerate() {
        if job.gpus == 0 {
            continue;
        }
        for (m, (model, _)) in cap.gpus_by_model.iter().enumerate() {
            if allowed(job, *model) {
                y[j].push((m, vars.add(variable().min(0))));
            }
        }
    }
    let objective: Expression = jobs.iter().zip(&x).map(|(job, v)| job.weight * *v).sum();
    let mut problem = vars
        .maximise(objective.clone())
        .using(microlp)
        .with_time_limit(time_limit_s);
    for (j, job) in jobs.iter().enumerate() {
        if job.gpus > 0 {
            let split: Expression = y[j].iter().map(|(_, v)| *v).sum();
            problem = problem.with(constraint!(split == (job.gpus as f64) * x[j]));
        }
    }
    for (m, (_, free)) in cap.gpus_by_model.iter().enumerate() {
        let used: Expression = y
            .iter()
            .flat_map(|ys| ys.iter().filter(|(mm, _)| *mm == m).map(|(_, v)| *v))
            .sum();
        problem = problem.with(constraint!(used <= *free as f64));
    }
    let cpu: Expression = jobs
        .iter()
        .zip(&x)
        .map(|(job, v)| job.cpu as f64 * *v)
        .sum();
    let mem: Expression = jobs
        .iter()
        .zip(&x)
        .map(|(job, v)| job.mem as f64 * *v)
        .sum();
    problem = problem.with(constraint!(cpu <= cap.cpu as f64));
    problem = problem.with(constraint!(mem <= cap.mem as f64));
    let solution = problem
        .solve()
        .map_err(|e| AdmissionError::Solver(e.to_string()))?;
    let values: Vec<f64> = x.iter().map(|v| solution.value(*v)).collect();
    Ok((
        values.clone(),
        jobs.iter().zip(&values).map(|(j, v)| j.weight * v).sum(),
    ))
}

/// Greedy by weight per unit of (normalised) resources; GPUs taken from the allowed model
/// with the most free GPUs.
pub fn greedy(jobs: &[AdmissionJob], cap: &Capacity) -> (Vec<usize>, f64) {
    let total_gpus: f64 = cap
        .gpus_by_model
        .iter()
        .map(|(_, n)| *n as f64)
        .sum::<f64>()
        .max(1.0);
    let density = |j: &AdmissionJob| {
        let size = j.gpus as f64 / total_gpus
            + j.cpu as f64 / (cap.cpu.max(1) as f64)
            + j.mem as f64 / (cap.mem.max(1) as f64);
        j.weight / size.max(1e-9)
    };
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by(|&a, &b| {
        density(&jobs[b])
            .total_cmp(&density(&jobs[a]))
            .then(a.cmp(&b))
    });
    let mut free: Vec<(u8, u32)> = cap.gpus_by_model.clone();
    let (mut cpu, mut mem) = (cap.cpu, cap.mem);
    let mut admitted = Vec::new();
    for j in order {
        let job = &jobs[j];
        if job.cpu > cpu || job.mem > mem {
            continue;
        }
        let mut take: Vec<(usize, u32)> = Vec::new();
        let mut need = job.gpus;
        let mut pools: Vec<usize> = (0..free.len())
            .filter(|&m| allowed(job, free[m].0))
            .collect();
        pools.sort_by(|&a, &b| free[b].1.cmp(&free[a].1));
        for m in pools {
            if need == 0 {
                break;
            }
            let t = need.min(free[m].1);
            if t > 0 {
                take.push((m, t));
                need -= t;
            }
        }
        if need > 0 {
            continue;
        }
        for (m, t) in take {
            free[m].1 -= t;
        }
        cpu -= job.cpu;
        mem -= job.mem;
        admitted.push(j);
    }
    admitted.sort_unstable();
    let objective = admitted.iter().map(|&j| jobs[j].weight).sum();
    (admitted, objective)
}

/// Chooses the jobs to admit.
pub fn admit(
    jobs: &[AdmissionJob],
    cap: &Capacity,
    limits: AdmissionLimits,
) -> Result<AdmissionPlan, AdmissionError> {
    if let Some(j) = jobs
        .iter()
        .find(|j| !(j.weight.is_finite() && j.weight >= 0.0))
    {
        return Err(AdmissionError::BadWeight(j.name.clone()));
    }
    let (_, bound) = solve(jobs, cap, false, limits.time_limit_s)?;
    if jobs.len() <= limits.exact_max_jobs {
        if let Ok((x, objective)) = solve(jobs, cap, true, limits.time_limit_s) {
            let admitted: Vec<usize> = x
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.5)
                .map(|(i, _)| i)
                .collect();
            return Ok(AdmissionPlan {
                admitted,
                objective,
                method: Method::Exact,
                upper_bound: bound,
                gap: 0.0,
            });
        }
    }
    let (admitted, objective) = greedy(jobs, cap);
    let gap = if bound > 0.0 {
        ((bound - objective) / bound).max(0.0)
    } else {
        0.0
    };
    Ok(AdmissionPlan {
        admitted,
        objective,
        method: Method::Greedy,
        upper_bound: bound,
        gap,
    })
}

/// The seed's example: 100 GPUs and 10 training jobs needing 1 to 10 eight-GPU nodes'
/// worth of GPUs (8 … 80), with weights.
pub fn seed_example() -> (Vec<AdmissionJob>, Capacity) {
    let weights = [3.0, 5.0, 8.0, 9.0, 12.0, 13.0, 17.0, 18.0, 20.0, 22.0];
    let jobs = (1..=10u32)
        .map(|k| AdmissionJob {
            name: format!("train-{k}"),
            weight: weights[k as usize - 1],
            gpus: 8 * k,
            models: 0,
            cpu: 0,
            mem: 0,
        })
        .collect();
    (
        jobs,
        Capacity {
            gpus_by_model: vec![(0, 100)],
            cpu: i64::MAX / 4,
            mem: i64::MAX / 4,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Optimum by enumeration (single GPU pool).
    fn brute_force(jobs: &[AdmissionJob], cap: &Capacity) -> f64 {
        let gpus: u32 = cap.gpus_by_model.iter().map(|(_, n)| n).sum();
        let mut best = 0.0f64;
        for mask in 0u32..(1 << jobs.len()) {
            let chosen = jobs
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0);
            let (g, c, m, w) = chosen.fold((0u32, 0i64, 0i64, 0.0), |acc, (_, j)| {
                (
                    acc.0 + j.gpus,
                    acc.1 + j.cpu,
                    acc.2 + j.mem,
                    acc.3 + j.weight,
                )
            });
            if g <= gpus && c <= cap.cpu && m <= cap.mem {
                best = best.max(w);
            }
        }
        best
    }

    #[test]
    fn seed_example_is_optimal_and_beats_greedy() {
        let (jobs, cap) = seed_example();
        let plan = admit(&jobs, &cap, AdmissionLimits::default()).expect("solves");
        assert_eq!(plan.method, Method::Exact);
        let best = brute_force(&jobs, &cap);
        assert!(
            (plan.objective - best).abs() < 1e-6,
            "{} vs {best}",
            plan.objective
        );
        let used: u32 = plan.admitted.iter().map(|&j| jobs[j].gpus).sum();
        assert!(used <= 100);
        let (_, greedy_obj) = greedy(&jobs, &cap);
        assert!(greedy_obj <= best + 1e-9);
        assert!(plan.upper_bound + 1e-6 >= best);
    }

    #[test]
    fn greedy_fallback_reports_its_gap() {
        let (jobs, cap) = seed_example();
        let plan = admit(
            &jobs,
            &cap,
            AdmissionLimits {
                exact_max_jobs: 0,
                time_limit_s: 1.0,
            },
        )
        .expect("solves");
        assert_eq!(plan.method, Method::Greedy);
        assert!(plan.gap >= 0.0 && plan.objective <= plan.upper_bound + 1e-9);
    }

    #[test]
    fn model_constraints_are_respected() {
        let jobs = vec![
            AdmissionJob {
                name: "a".into(),
                weight: 5.0,
                gpus: 4,
                models: 1 << 1,
                cpu: 0,
                mem: 0,
            },
            AdmissionJob {
                name: "b".into(),
                weight: 4.0,
                gpus: 4,
                models: 0,
                cpu: 0,
                mem: 0,
            },
            AdmissionJob {
                name: "c".into(),
                weight: 3.0,
                gpus: 4,
                models: 1 << 1,
                cpu: 0,
                mem: 0,
            },
        ];
        // 4 GPUs of model 0, 4 of model 1: a and c compete for model 1; b can take model 0.
        let cap = Capacity {
            gpus_by_model: vec![(0, 4), (1, 4)],
            cpu: 100,
            mem: 100,
        };
        let plan = admit(&jobs, &cap, AdmissionLimits::default()).expect("solves");
        assert_eq!(plan.admitted, vec![0, 1]);
        assert!((plan.objective - 9.0).abs() < 1e-6);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn exact_equals_brute_force(
            specs in proptest::collection::vec((1u32..12, 0i64..8, 0.0f64..20.0), 1..9),
            gpus in 1u32..40,
            cpu in 0i64..20,
        ) {
            let jobs: Vec<AdmissionJob> = specs.iter().enumerate().map(|(i, (g, c, w))| AdmissionJob {
                name: format!("j{i}"), weight: (*w * 4.0).round() / 4.0, gpus: *g, models: 0, cpu: *c, mem: 0,
            }).collect();
            let cap = Capacity { gpus_by_model: vec![(0, gpus)], cpu, mem: 0 };
            let plan = admit(&jobs, &cap, AdmissionLimits::default()).expect("solves");
            let best = brute_force(&jobs, &cap);
            prop_assert!((plan.objective - best).abs() < 1e-6, "solver {} brute force {}", plan.objective, best);
            let used: u32 = plan.admitted.iter().map(|&j| jobs[j].gpus).sum();
            prop_assert!(used <= gpus);
        }
    }
}
