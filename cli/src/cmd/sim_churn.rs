//! `steward sim --churn`: the trace's arrivals and departures replayed through the
//! controller's scheduling round on a simulated clock, every policy side by side: GPU
//! allocation over time, queueing delay by priority class, preemptions, and the free
//! capacity that fragmentation leaves idle while tasks wait.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;
use steward_core::scheduler::Policy;
use steward_core::sim::churn::{self, ChurnResult, ChurnSettings, ChurnWorkload, Pace, QosClass};
use steward_core::sim::{self, Trace};

use crate::output::{print_json, table, Output};

/// `--load`: `trace` (the trace's own times) or a share of GPU capacity (0.9, or 90 %).
pub fn parse_pace(s: &str) -> anyhow::Result<Pace> {
    let s = s.trim();
    if s == "trace" {
        return Ok(Pace::Trace);
    }
    let (number, scale) = match s.strip_suffix('%') {
        Some(p) => (p.trim(), 100.0),
        None => (s, 1.0),
    };
    let load: f64 = number
        .parse()
        .with_context(|| format!("--load `{s}` is not `trace`, a share (0.9) or a % (90%)"))?;
    let load = load / scale;
    if !(load > 0.0 && load <= 5.0) {
        bail!("--load `{s}` must be above 0 and at most 5 (500 % of GPU capacity)");
    }
    Ok(Pace::Load(load))
}

struct PolicyRun {
    result: ChurnResult,
    seconds: f64,
}

/// Runs every policy over one workload, on up to `threads` threads.
fn run_policies(
    trace: &Trace,
    workload: &ChurnWorkload,
    policies: &[Policy],
    threads: usize,
) -> anyhow::Result<Vec<PolicyRun>> {
    let typical = sim::typical_tasks(trace);
    let mut out = Vec::with_capacity(policies.len());
    for chunk in policies.chunks(threads.max(1)) {
        let results: Vec<anyhow::Result<PolicyRun>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&policy| {
                    let typical = &typical;
                    s.spawn(move || {
                        let started = Instant::now();
                        let result =
                            churn::run(trace, workload, typical, &ChurnSettings::new(policy))
                                .map_err(anyhow::Error::msg)?;
                        Ok(PolicyRun {
                            result,
                            seconds: started.elapsed().as_secs_f64(),
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        for r in results {
            out.push(r?);
        }
    }
    Ok(out)
}

fn duration(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else if s < 86_400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

pub fn churn_cmd(
    output: Output,
    nodes: &PathBuf,
    pods: &PathBuf,
    policies: &[Policy],
    loads: &[String],
    threads: usize,
    plot: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    let paces = loads
        .iter()
        .map(|l| parse_pace(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trace = Trace::parse(&super::sim::read(nodes)?, &super::sim::read(pods)?)?;
    let mut all = Vec::new();
    for &pace in &paces {
        let workload = churn::workload(&trace, pace).map_err(anyhow::Error::msg)?;
        let runs = run_policies(&trace, &workload, policies, threads)?;
        all.push((pace, workload, runs));
    }
    if let Some(path) = plot {
        plot_churn(path, &all).with_context(|| format!("writing the plot {}", path.display()))?;
    }
    match output {
        Output::Json => {
            let loads: Vec<_> = all
                .iter()
                .map(|(pace, w, runs)| {
                    json!({
                        "pace": pace.label(),
                        "speedup": w.speedup,
                        "offered_load_pct": w.offered_load * 100.0,
                        "window_ms": [w.window_ms.0, w.window_ms.1],
                        "cycles": w.cycles,
                        "tasks": w.tasks.len(),
                        "policies": runs.iter().map(|r| {
                            let c = &r.result;
                            json!({
                                "policy": c.policy.name(),
                                "alloc_pct": c.alloc_pct,
                                "frag_pct": c.frag_pct,
                                "idle_while_queued_pct": c.idle_while_queued_pct,
                                "preemptions": c.preemptions,
                                "started": c.started,
                                "never_started": c.never_started,
                                "rounds": c.rounds,
                                "refused": c.refused,
                                "seconds": r.seconds,
                                "delays": c.delays.iter().map(|d| json!({
                                    "class": d.class.name(),
                                    "tasks": d.tasks,
                                    "p50_ms": d.p50_ms,
                                    "p99_ms": d.p99_ms,
                                    "never_started": d.never_started,
                                })).collect::<Vec<_>>(),
                                "timeline": c.timeline.iter().map(|s| json!({
                                    "at_ms": s.at_ms,
                                    "alloc_pct": s.alloc_pct,
                                    "frag_pct": s.frag_pct,
                                    "idle_while_queued_pct": s.idle_while_queued_pct,
                                    "queued": s.queued,
                                })).collect::<Vec<_>>(),
                            })
                        }).collect::<Vec<_>>(),
                    })
                })
                .collect();
            print_json(&json!({"loads": loads}))?;
        }
        Output::Table => {
            for (pace, w, runs) in &all {
                println!(
                    "churn at {}: {} tasks ({} cop{} of the trace, the first warming up), \
                     arrivals {:.0}x the trace's pace, offered GPU demand {:.1} % of capacity \
                     over a {} window",
                    pace.label(),
                    w.tasks.len(),
                    w.cycles,
                    if w.cycles == 1 { "y" } else { "ies" },
                    w.speedup,
                    w.offered_load * 100.0,
                    duration(w.window_ms.1 - w.window_ms.0)
                );
                let classes: Vec<QosClass> = QosClass::ALL
                    .into_iter()
                    .filter(|c| {
                        runs.iter()
                            .any(|r| r.result.delays.iter().any(|d| d.class == *c))
                    })
                    .collect();
                let mut header: Vec<String> = [
                    "POLICY",
                    "GPU ALLOC %",
                    "FRAG %",
                    "IDLE WHILE QUEUED %",
                    "PREEMPTIONS",
                ]
                .map(String::from)
                .to_vec();
                for c in &classes {
                    header.push(format!("{} WAIT p50 / p99", c.name()));
                }
                header.extend(["NEVER STARTED", "ROUNDS", "SECONDS"].map(String::from));
                let mut t = table([]);
                t.set_header(header);
                for r in runs {
                    let c = &r.result;
                    let mut row = vec![
                        c.policy.name().to_string(),
                        format!("{:.2}", c.alloc_pct),
                        format!("{:.2}", c.frag_pct),
                        format!("{:.2}", c.idle_while_queued_pct),
                        c.preemptions.to_string(),
                    ];
                    for class in &classes {
                        row.push(match c.delays.iter().find(|d| d.class == *class) {
                            Some(d) => format!("{} / {}", duration(d.p50_ms), duration(d.p99_ms)),
                            None => "-".into(),
                        });
                    }
                    row.extend([
                        c.never_started.to_string(),
                        c.rounds.to_string(),
                        format!("{:.1}", r.seconds),
                    ]);
                    t.add_row(row);
                }
                println!("{t}");
            }
            if let Some(p) = plot {
                println!("plot: {}", p.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One panel per load: GPU allocation % over the window, one line per policy.
fn plot_churn(path: &PathBuf, all: &[(Pace, ChurnWorkload, Vec<PolicyRun>)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let height = 420 * all.len().max(1) as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((all.len().max(1), 1));
    for ((pace, w, runs), area) in all.iter().zip(panels.iter()) {
        let hours = (w.window_ms.1 - w.window_ms.0) as f64 / 3_600_000.0;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "Churn at {}: GPU allocation % over time (offered {:.0} %)",
                    pace.label(),
                    w.offered_load * 100.0
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..hours.max(1e-6), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("simulated hours into the window")
            .y_desc("GPU allocated (%)")
            .draw()?;
        for (i, r) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = r
                .result
                .timeline
                .iter()
                .map(|s| (s.at_ms as f64 / 3_600_000.0, s.alloc_pct))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(r.result.policy.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse() {
        assert_eq!(parse_pace("trace").expect("trace"), Pace::Trace);
        assert_eq!(parse_pace("0.9").expect("share"), Pace::Load(0.9));
        assert_eq!(parse_pace("90%").expect("percent"), Pace::Load(0.9));
        assert!(parse_pace("0").is_err());
        assert!(parse_pace("fast").is_err());
    }
}
