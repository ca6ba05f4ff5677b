//! `steward sim generate` (a workload family's trace from the default one) and `steward sim
//! sweep` (every policy over every family at its levels, mean ± sd over seeds, one SVG per
//! family).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use steward_core::scheduler::Policy;
use steward_core::sim::generate::{self, Family, TaskClass, TaskList, TraceStats};
use steward_core::sim::{self, mean_sd, Trace};

use super::sim::read;
use crate::output::{print_json, table, Output};

const DEFAULT_NODES: &str = "tests/data/alibaba-gpu-v2023/openb_node_list_gpu_node.csv";
const DEFAULT_PODS: &str = "tests/data/alibaba-gpu-v2023/openb_pod_list_default.csv";
/// Arrived demand (% of GPU capacity) the sweep reads unallocated capacity at, as the
/// paper's bar charts do.
const SWEEP_LEVEL: usize = 100;

#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Write a workload family's trace, derived from the default trace (deterministic by
    /// seed), and print its statistics beside the default's.
    Generate(GenerateArgs),
    /// Run policies over workload families at several levels: unallocated GPU % at 100 %
    /// arrived demand, mean ± sd over seeds; one SVG per family.
    Sweep(SweepArgs),
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// gpuspec, multigpu, gpushare or cpu.
    #[arg(long)]
    pub family: String,
    /// The family's level: % of GPU tasks constrained (gpuspec), % of GPU demand
    /// (multigpu, gpushare), % of the CPU-only reference demand (cpu).
    #[arg(long)]
    pub level: u32,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The trace the family is derived from.
    #[arg(long, default_value = DEFAULT_PODS)]
    pub pods: PathBuf,
    /// The node list (its GPU models bound the constraints drawn).
    #[arg(long, default_value = DEFAULT_NODES)]
    pub nodes: PathBuf,
    /// Where to write the task list (CSV).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub run: super::sim::RunArgs,
    /// Families, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpuspec,multigpu,gpushare,cpu"
    )]
    pub families: Vec<String>,
    /// Only the lowest and the highest level of each family (the CI sweep).
    #[arg(long)]
    pub reduced: bool,
    /// Seed of the generated traces (one trace per family and level).
    #[arg(long, default_value_t = 42)]
    pub trace_seed: u64,
    /// Write `sweep-FAMILY.svg` files here.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

/// The GPU models of a node list (its `model` column).
fn node_models(nodes_csv: &str) -> anyhow::Result<Vec<String>> {
    let mut models = steward_core::scheduler::model::GpuModels::default();
    let nodes = sim::parse_nodes(nodes_csv, &mut models)?;
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| n.gpus > 0)
        .map(|n| models.name(n.model).to_string())
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn stats_rows(s: &TraceStats) -> Vec<(String, String)> {
    let mut rows = vec![
        ("tasks".to_string(), s.tasks.to_string()),
        (
            "GPU demand (milli-GPU)".to_string(),
            s.gpu_demand.to_string(),
        ),
    ];
    for (i, c) in TaskClass::ALL.iter().enumerate() {
        rows.push((
            format!("{} tasks: % of tasks / % of GPU demand", c.name()),
            format!("{:.2} / {:.2}", s.task_share[i], s.demand_share[i]),
        ));
    }
    rows.push((
        "CPU-only CPU / GPU tasks' CPU".to_string(),
        format!("{:.3}", s.cpu_only_ratio),
    ));
    rows.push((
        "GPU tasks with a model constraint %".to_string(),
        format!("{:.2}", s.constrained),
    ));
    rows.push((
        "models in the constraints %".to_string(),
        s.model_mix
            .iter()
            .map(|(m, p)| format!("{m} {p:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    rows
}

fn stats_json(s: &TraceStats) -> serde_json::Value {
    json!({
        "tasks": s.tasks,
        "gpu_demand": s.gpu_demand,
        "classes": TaskClass::ALL.iter().enumerate().map(|(i, c)| json!({
            "class": c.name(), "task_pct": s.task_share[i], "demand_pct": s.demand_share[i]
        })).collect::<Vec<_>>(),
        "cpu_only_ratio": s.cpu_only_ratio,
        "constrained_pct": s.constrained,
        "model_mix_pct": s.model_mix.iter().map(|(m, p)| json!({"model": m, "pct": p})).collect::<Vec<_>>(),
    })
}

pub fn generate_cmd(output: Output, args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let family: Family = args.family.parse().map_err(anyhow::Error::msg)?;
    let base = generate::parse_task_list(&read(&args.pods)?).map_err(anyhow::Error::msg)?;
    let models = node_models(&read(&args.nodes)?)?;
    let list = generate::generate(&base, &models, family, args.level, args.seed)
        .map_err(anyhow::Error::msg)?;
    std::fs::write(&args.out, list.to_csv())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let (b, g) = (generate::stats(&base), generate::stats(&list));
    match output {
        Output::Json => print_json(&json!({
            "family": family.name(), "level": args.level, "seed": args.seed,
            "out": args.out.display().to_string(),
            "base": stats_json(&b), "generated": stats_json(&g),
        }))?,
        Output::Table => {
            let mut t = table([
                "FIGURE",
                "BASE TRACE",
                &format!("{}{}", family.name(), args.level),
            ]);
            for ((name, base), (_, gen)) in stats_rows(&b).into_iter().zip(stats_rows(&g)) {
                t.add_row(vec![name, base, gen]);
            }
            println!("{t}");
            println!("wrote {}", args.out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One (family, level, policy) point of the sweep.
struct Point {
    family: Family,
    level: u32,
    policy: Policy,
    values: Vec<f64>,
}

impl Point {
    fn mean_sd(&self) -> (f64, f64) {
        mean_sd(&self.values)
    }
}

pub fn sweep_cmd(output: Output, args: SweepArgs) -> anyhow::Result<ExitCode> {
    let families: Vec<Family> = args
        .families
        .iter()
        .map(|f| f.parse::<Family>())
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let super::sim::RunSettings {
        policies,
        seeds,
        ratio,
        threads,
    } = args.run.check()?;
    let nodes_csv = read(&args.run.nodes)?;
    let base = generate::parse_task_list(&read(&args.run.pods)?).map_err(anyhow::Error::msg)?;
    let models = node_models(&nodes_csv)?;
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    for &family in &families {
        let all = family.levels();
        let levels: Vec<u32> = if args.reduced {
            vec![all[0], all[all.len() - 1]]
        } else {
            all.to_vec()
        };
        for level in levels {
            let list: TaskList = generate::generate(&base, &models, family, level, args.trace_seed)
                .map_err(anyhow::Error::msg)?;
            let trace = Trace::parse(&nodes_csv, &list.to_csv())?;
            let typical = sim::typical_tasks(&trace);
            for &policy in &policies {
                let runs = sim::run_seeds(&trace, &typical, policy, &seeds, ratio, threads);
                let values = runs
                    .iter()
                    .map(|r| r.unallocated_at(SWEEP_LEVEL))
                    .filter(|v| !v.is_nan())
                    .collect();
                points.push(Point {
                    family,
                    level,
                    policy,
                    values,
                });
            }
            if output == Output::Table {
                eprintln!(
                    "{}{level}: done ({:.0} s so far)",
                    family.name(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for &family in &families {
            let path = dir.join(format!("sweep-{}.svg", family.name()));
            plot_family(&path, family, &points, &policies)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    // Steward's margin over FGD at each point (negative: Steward leaves less unallocated).
    let margin = |family: Family, level: u32| {
        let find = |p: Policy| {
            points
                .iter()
                .find(|x| x.family == family && x.level == level && x.policy == p)
                .map(Point::mean_sd)
        };
        match (find(Policy::Steward), find(Policy::Fgd)) {
            (Some((s, s_sd)), Some((f, f_sd))) => Some((s - f, s_sd.max(f_sd))),
            _ => None,
        }
    };
    match output {
        Output::Json => print_json(&json!({
            "seeds": seeds, "ratio": ratio, "trace_seed": args.trace_seed,
            "points": points.iter().map(|p| {
                let (mean, sd) = p.mean_sd();
                json!({"family": p.family.name(), "level": p.level, "policy": p.policy.name(),
                       "unallocated_pct_at_100": {"mean": mean, "sd": sd}, "runs": p.values})
            }).collect::<Vec<_>>(),
        }))?,
        Output::Table => {
            let mut header = vec!["FAMILY".to_string(), "LEVEL".to_string()];
            header.extend(policies.iter().map(|p| p.name().to_string()));
            header.push("STEWARD - FGD".into());
            let mut t = table([]);
            t.set_header(header);
            for &family in &families {
                let mut levels: Vec<u32> = points
                    .iter()
                    .filter(|p| p.family == family)
                    .map(|p| p.level)
                    .collect();
                levels.dedup();
                for level in levels {
                    let mut row = vec![family.name().to_string(), level.to_string()];
                    for &policy in &policies {
                        let cell = points
                            .iter()
                            .find(|p| p.family == family && p.level == level && p.policy == policy)
                            .map(|p| {
                                let (m, sd) = p.mean_sd();
                                format!("{m:.2} ± {sd:.2}")
                            })
                            .unwrap_or_default();
                        row.push(cell);
                    }
                    row.push(
                        margin(family, level)
                            .map_or(String::new(), |(d, sd)| format!("{d:+.2} (sd {sd:.2})")),
                    );
                    t.add_row(row);
                }
            }
            println!(
                "unallocated GPU % at {SWEEP_LEVEL} % arrived demand, mean ± sd over seeds {}..{} ({:.0} s)",
                seeds[0],
                seeds[seeds.len() - 1],
                started.elapsed().as_secs_f64()
            );
            println!("{t}");
            if let Some(dir) = &args.plot_dir {
                println!("plots: {}/sweep-<family>.svg", dir.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn plot_family(
    path: &PathBuf,
    family: Family,
    points: &[Point],
    policies: &[Policy],
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mine: Vec<&Point> = points.iter().filter(|p| p.family == family).collect();
    let levels: Vec<u32> = {
        let mut l: Vec<u32> = mine.iter().map(|p| p.level).collect();
        l.sort();
        l.dedup();
        l
    };
    let (lo, hi) = (
        *levels.first().unwrap_or(&0) as f64,
        *levels.last().unwrap_or(&100) as f64,
    );
    let pad = ((hi - lo) * 0.05).max(1.0);
    let y_max = mine
        .iter()
        .map(|p| {
            let (m, sd) = p.mean_sd();
            m + sd
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: unallocated GPU % at 100 % arrived demand (mean ± sd over seeds)",
                family.name()
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc(format!("{} level", family.name()))
        .y_desc("unallocated GPU (%)")
        .draw()?;
    for (i, &policy) in policies.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series: Vec<(f64, f64, f64)> = levels
            .iter()
            .filter_map(|&l| {
                mine.iter()
                    .find(|p| p.level == l && p.policy == policy)
                    .map(|p| {
                        let (m, sd) = p.mean_sd();
                        (l as f64, m, sd)
                    })
            })
            .collect();
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|&(x, m, _)| (x, m)),
                color.stroke_width(2),
            ))?
            .label(policy.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(series.iter().map(|&(x, m, sd)| {
            PathElement::new(vec![(x, m - sd), (x, m + sd)], color.stroke_width(1))
        }))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
