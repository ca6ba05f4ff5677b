//! `steward sim`: replays a GPU-cluster trace through the scheduler with each policy and
//! reports unallocated GPU capacity by arrived demand (the FGD paper's experiment).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use steward_core::scheduler::Policy;
use steward_core::sim::{self, mean_sd, RunResult, Trace, CURVE_POINTS};

use crate::output::{print_json, table, Output};

/// Arrived demand, in % of GPU capacity, that the headline figure is read at.
const HEADLINE_LEVEL: usize = 100;

/// The trace files and the runs' settings, shared by `steward sim` and `steward sim sweep`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Node list CSV (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(
        long,
        default_value = "tests/data/alibaba-gpu-v2023/openb_node_list_gpu_node.csv"
    )]
    pub nodes: PathBuf,
    /// Task list CSV (name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,...); for a
    /// sweep, the default trace the families are derived from.
    #[arg(
        long,
        default_value = "tests/data/alibaba-gpu-v2023/openb_pod_list_default.csv"
    )]
    pub pods: PathBuf,
    /// Policies, comma separated: random, best-fit, dot-product, gpu-packing, gpu-clustering, fgd, steward.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "random,best-fit,dot-product,gpu-packing,gpu-clustering,fgd,steward"
    )]
    pub policy: Vec<String>,
    /// Seeds, as FIRST..LAST (inclusive) or one number.
    #[arg(long, default_value = "42..51")]
    pub seeds: String,
    /// Workload tuned to this multiple of GPU capacity.
    #[arg(long, default_value_t = 1.3)]
    pub ratio: f64,
    /// Worker threads (runs are independent).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// [`RunArgs`] checked.
pub struct RunSettings {
    pub policies: Vec<Policy>,
    pub seeds: Vec<u64>,
    pub ratio: f64,
    pub threads: usize,
}

impl RunArgs {
    pub fn check(&self) -> anyhow::Result<RunSettings> {
        let policies = self
            .policy
            .iter()
            .map(|p| p.parse::<Policy>())
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        if !(self.ratio > 0.0 && self.ratio <= 10.0) {
            bail!("--ratio {} must be in (0, 10]", self.ratio);
        }
        Ok(RunSettings {
            policies,
            seeds: parse_seeds(&self.seeds)?,
            ratio: self.ratio,
            threads: self.threads.clamp(1, 64),
        })
    }
}

pub(crate) fn read(p: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: Option<super::sim_sweep::SimCommand>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Write an SVG plot of unallocated GPU % against arrived GPU demand.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead of the trace: solve the weighted-admission example (100 GPUs, 10 training
    /// jobs of 8 to 80 GPUs with weights) exactly and greedily, side by side.
    #[arg(long)]
    pub admission_example: bool,
    /// Instead of the placement replay: arrivals and departures at the trace's times
    /// through the controller's scheduling round, on a simulated clock (needs the task
    /// list's creation_time, deletion_time and qos columns).
    #[arg(long)]
    pub churn: bool,
    /// With --churn: the paces, comma separated: `trace` (the trace's own times) or the
    /// GPU demand to offer, as a share of capacity (arrivals compressed, lifetimes kept).
    #[arg(long, value_delimiter = ',', default_value = "trace,0.8")]
    pub load: Vec<String>,
}

fn admission_example(output: Output) -> anyhow::Result<ExitCode> {
    use steward_core::scheduler::admission::{admit, greedy, seed_example, AdmissionLimits};
    let (jobs, cap) = seed_example();
    let plan = admit(&jobs, &cap, AdmissionLimits::default())?;
    let (greedy_set, greedy_obj) = greedy(&jobs, &cap);
    let names = |set: &[usize]| {
        set.iter()
            .map(|&j| jobs[j].name.clone())
            .collect::<Vec<_>>()
    };
    let gpus = |set: &[usize]| set.iter().map(|&j| jobs[j].gpus).sum::<u32>();
    match output {
        Output::Json => print_json(&json!({
            "capacity_gpus": 100,
            "jobs": jobs.iter().map(|j| json!({"name": j.name, "gpus": j.gpus, "weight": j.weight})).collect::<Vec<_>>(),
            "optimal": {"jobs": names(&plan.admitted), "gpus": gpus(&plan.admitted), "objective": plan.objective, "method": format!("{:?}", plan.method)},
            "greedy": {"jobs": names(&greedy_set), "gpus": gpus(&greedy_set), "objective": greedy_obj},
            "lp_bound": plan.upper_bound,
        }))?,
        Output::Table => {
            let mut t = table(["JOB", "GPUS", "WEIGHT", "OPTIMAL", "GREEDY"]);
            for (i, j) in jobs.iter().enumerate() {
                let mark = |set: &[usize]| if set.contains(&i) { "admit" } else { "-" }.to_string();
                t.add_row(vec![
                    j.name.clone(),
                    j.gpus.to_string(),
                    j.weight.to_string(),
                    mark(&plan.admitted),
                    mark(&greedy_set),
                ]);
            }
            println!("{t}");
            println!(
                "optimal ({:?}): objective {:.1} on {} GPUs; greedy: objective {:.1} on {} GPUs; LP bound {:.2}",
                plan.method, plan.objective, gpus(&plan.admitted), greedy_obj, gpus(&greedy_set), plan.upper_bound
            );
        }
    }
    fragmented_example(output)?;
    Ok(ExitCode::SUCCESS)
}

/// The same jobs on a real cluster state: gangs of 8-GPU tasks on 16 eight-GPU nodes
/// with 100 GPUs free in fragments (only 10 whole nodes).
fn fragmented_example(output: Output) -> anyhow::Result<()> {
    use steward_core::sim::fragmented::{check, seed_example_fragmented};
    let (jobs, cluster) = seed_example_fragmented();
    let c = check(&jobs, &cluster).map_err(anyhow::Error::msg)?;
    let names = |set: &[usize]| {
        set.iter()
            .map(|&j| jobs[j].name.clone())
            .collect::<Vec<_>>()
    };
    match output {
        Output::Json => print_json(&json!({
            "fragmented": {
                "free_gpus_per_node": cluster.free(),
                "pool_optimum": {"jobs": names(&c.pool.jobs), "weight": c.pool.weight, "placeable": c.pool_fits},
                "exact_on_nodes": {"jobs": names(&c.exact.jobs), "weight": c.exact.weight},
                "scheduling_round": {"jobs": names(&c.round.jobs), "weight": c.round.weight},
                "gap": c.gap,
            }
        }))?,
        Output::Table => {
            println!(
                "\non a fragmented cluster (16 nodes of 8 GPUs, free per node {:?}: 100 GPUs, 10 whole nodes), each job k tasks of 8 GPUs as a gang:",
                cluster.free()
            );
            let mut t = table(["SET", "JOBS", "WEIGHT", "PLACEABLE"]);
            t.add_row(vec![
                "pool optimum (100 GPUs as one pool)".to_string(),
                names(&c.pool.jobs).join(" "),
                format!("{:.1}", c.pool.weight),
                if c.pool_fits { "yes" } else { "no" }.to_string(),
            ]);
            t.add_row(vec![
                "exact optimum on the nodes".to_string(),
                names(&c.exact.jobs).join(" "),
                format!("{:.1}", c.exact.weight),
                "yes".to_string(),
            ]);
            t.add_row(vec![
                "the scheduling round (priority, then weight)".to_string(),
                names(&c.round.jobs).join(" "),
                format!("{:.1}", c.round.weight),
                "yes".to_string(),
            ]);
            println!("{t}");
            println!(
                "the round's gap to the exact optimum on the nodes: {:.1} %",
                c.gap * 100.0
            );
        }
    }
    Ok(())
}

pub(crate) fn parse_seeds(s: &str) -> anyhow::Result<Vec<u64>> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once("..") {
        let a: u64 = a
            .trim()
            .parse()
            .with_context(|| format!("--seeds `{s}`: bad first seed"))?;
        let b: u64 = b
            .trim()
            .trim_start_matches('=')
            .parse()
            .with_context(|| format!("--seeds `{s}`: bad last seed"))?;
        if b < a || b - a > 10_000 {
            bail!("--seeds `{s}`: need FIRST <= LAST and at most 10,001 seeds");
        }
        return Ok((a..=b).collect());
    }
    Ok(vec![s.parse().with_context(|| {
        format!("--seeds `{s}` is not FIRST..LAST or a number")
    })?])
}

struct PolicySummary {
    policy: Policy,
    runs: Vec<RunResult>,
    placements_per_s: f64,
}

impl PolicySummary {
    fn unallocated_at(&self, level: usize) -> (f64, f64) {
        let v: Vec<f64> = self
            .runs
            .iter()
            .map(|r| r.unallocated_at(level))
            .filter(|v| !v.is_nan())
            .collect();
        mean_sd(&v)
    }
}

pub fn run(output: Output, args: SimArgs) -> anyhow::Result<ExitCode> {
    use super::sim_sweep::{generate_cmd, sweep_cmd, SimCommand};
    match args.command {
        Some(SimCommand::Generate(a)) => return generate_cmd(output, a),
        Some(SimCommand::Sweep(a)) => return sweep_cmd(output, a),
        None => {}
    }
    if args.admission_example {
        return admission_example(output);
    }
    if args.churn {
        let settings = args.run.check()?;
        return super::sim_churn::churn_cmd(
            output,
            &args.run.nodes,
            &args.run.pods,
            &settings.policies,
            &args.load,
            settings.threads,
            args.plot.as_ref(),
        );
    }
    let RunSettings {
        policies,
        seeds,
        ratio,
        threads,
    } = args.run.check()?;
    let trace = Trace::parse(&read(&args.run.nodes)?, &read(&args.run.pods)?)?;
    let typical = sim::typical_tasks(&trace);
    if output == Output::Table {
        println!(
            "trace: {} nodes, {} GPUs, {} tasks; {} typical task shapes; seeds {}..{}; workload {}% of GPU capacity",
            trace.nodes.len(),
            trace.gpu_capacity(),
            trace.tasks.len(),
            typical.tasks.len(),
            seeds[0],
            seeds[seeds.len() - 1],
            ratio * 100.0
        );
    }
    let mut summaries = Vec::new();
    for policy in policies {
        let started = Instant::now();
        let runs = sim::run_seeds(&trace, &typical, policy, &seeds, ratio, threads);
        let cpu_secs = started.elapsed().as_secs_f64() * threads.min(seeds.len()) as f64;
        let tasks: usize = runs.iter().map(|r| r.tasks).sum();
        summaries.push(PolicySummary {
            policy,
            placements_per_s: tasks as f64 / cpu_secs,
            runs,
        });
    }

    if let Some(path) = &args.plot {
        plot(path, &summaries).with_context(|| format!("writing the plot {}", path.display()))?;
    }
    match output {
        Output::Json => {
            let policies: Vec<_> = summaries
                .iter()
                .map(|s| {
                    let (mean, sd) = s.unallocated_at(HEADLINE_LEVEL);
                    let curve: Vec<serde_json::Value> = (0..CURVE_POINTS)
                        .map(|x| {
                            let (m, _) = s.unallocated_at(x);
                            json!({"arrived_pct": x, "unallocated_pct": if m.is_nan() { None } else { Some(m) }})
                        })
                        .collect();
                    json!({
                        "policy": s.policy.name(),
                        "unallocated_pct_at_100": {"mean": mean, "sd": sd},
                        "curve": curve,
                        "placements_per_s": s.placements_per_s,
                        "seeds": s.runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
                        "placed": s.runs.iter().map(|r| r.placed).sum::<usize>(),
                        "dropped": s.runs.iter().map(|r| r.dropped).sum::<usize>(),
                    })
                })
                .collect();
            print_json(&json!({"policies": policies}))?;
        }
        Output::Table => {
            let mut t = table([
                "POLICY",
                "UNALLOCATED GPU % AT 100% ARRIVED",
                "AT 90%",
                "AT 120%",
                "PLACED",
                "DROPPED",
                "PLACEMENTS/S (1 CORE)",
            ]);
            for s in &summaries {
                let cell = |level| {
                    let (m, sd) = s.unallocated_at(level);
                    format!("{m:.2} ± {sd:.2}")
                };
                t.add_row(vec![
                    s.policy.name().to_string(),
                    cell(HEADLINE_LEVEL),
                    cell(90),
                    cell(120),
                    s.runs.iter().map(|r| r.placed).sum::<usize>().to_string(),
                    s.runs.iter().map(|r| r.dropped).sum::<usize>().to_string(),
                    format!("{:.0}", s.placements_per_s),
                ]);
            }
            println!("{t}");
            if let Some(p) = &args.plot {
                println!("plot: {}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plot(path: &PathBuf, summaries: &[PolicySummary]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Unallocated GPU capacity by arrived GPU demand (mean over seeds)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..130f64, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("arrived GPU demand (% of capacity)")
        .y_desc("unallocated GPU (%)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 100.0), (100.0, 0.0)],
            BLACK.mix(0.3),
        ))?
        .label("ideal")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (i, s) in summaries.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = (0..CURVE_POINTS)
            .filter_map(|x| {
                let (m, _) = s.unallocated_at(x);
                (!m.is_nan()).then_some((x as f64, m))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(s.policy.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_seeds;

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seeds("42..51").expect("range").len(), 10);
        assert_eq!(parse_seeds("7").expect("one"), vec![7]);
        assert!(parse_seeds("9..3").is_err());
        assert!(parse_seeds("x").is_err());
    }
}
