//! `steward-chaos`: breaks a Steward cluster on purpose and checks its promises.
//!
//! `steward-chaos run SCENARIO.toml [--seed N] [-o text|json] [--bug NAME]` starts a local
//! cluster with every controller in its own network namespace (root), runs the scenario's
//! workloads and fault schedule, checks every invariant and prints the report. With
//! `--inventory staging.toml` it drives running staging nodes instead, through their units
//! over SSH (chaos/README.md, "Staging mode"). Exit status: 0 when every invariant held, 1
//! when one was violated, 2 when the run could not be made.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use steward_chaos::run::{self, Bug, RunOptions};
use steward_chaos::scenario::Scenario;
use steward_chaos::staging::{self, Inventory};

#[derive(Parser)]
#[command(
    name = "steward-chaos",
    version,
    about = "Breaks a Steward cluster on purpose and checks its promises"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ClusterKind {
    /// Controllers started here, each in its own network namespace (needs root).
    Local,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one scenario file (chaos/scenarios/*.toml; the schema is in chaos/README.md).
    Run {
        scenario: PathBuf,
        /// Where the cluster comes from.
        #[arg(long, value_enum, default_value = "local")]
        cluster: ClusterKind,
        /// Drives the staging cluster this inventory file describes instead (its units
        /// over SSH; chaos/README.md, "Staging mode").
        #[arg(long, conflicts_with = "cluster")]
        inventory: Option<PathBuf>,
        /// Seeds every random choice; a run is repeated with the seed its report prints.
        /// Default: drawn at random.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
        /// Reintroduces a known bug through a fail point of the test build of `steward`
        /// (read-skip-barrier), to see the harness catch it.
        #[arg(long)]
        bug: Option<String>,
        /// Say nothing while running (the report is still printed).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Runs every scenario file of a directory (`make chaos`), one after another, each
    /// report as it ends, then one table of them all. Exit 1 if any failed.
    RunAll {
        /// A directory of scenario files (chaos/scenarios).
        dir: PathBuf,
        /// The seed of every run (default: each drawn at random, and printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Runs only the scenarios whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Runs them on the staging cluster this inventory file describes; scenarios it
        /// does not allow are shown as errors.
        #[arg(long)]
        inventory: Option<PathBuf>,
    },
    /// Deterministic simulation of the control plane: controllers running openraft over an
    /// in-memory store and a simulated network on a simulated clock, random faults drawn
    /// by the seed, the same checkers. A seed replays exactly (its trace digest repeats).
    Sim {
        /// One seed; its full report is printed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// A range of seeds, `FIRST..END` (END excluded) or a count `N` (0..N): one line per
        /// failing seed and a summary.
        #[arg(long)]
        seeds: Option<String>,
        /// Controllers (default: 5 for every third seed, else 3).
        #[arg(long)]
        controllers: Option<u64>,
        /// Simulated time with faults, before healing and checking.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Reintroduces a known bug in the simulation (ack-before-sync), to see it caught.
        #[arg(long)]
        bug: Option<String>,
        /// Threads running seeds side by side (a range only).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Loads the inventory at `path`, if one is given; the error, printed, exits 2.
fn load_inventory(path: Option<&std::path::Path>) -> Result<Option<Inventory>, ExitCode> {
    match path.map(Inventory::load).transpose() {
        Ok(i) => Ok(i),
        Err(e) => {
            eprintln!("steward-chaos: {e:#}");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs `scenario` locally, or on the staging cluster `inventory` describes; `None`
/// when Ctrl-C, SIGTERM or SIGHUP (the operator's session gone) ended it first. The
/// faults of an ended run are undone when the runtime is dropped ([`undo_and_exit`]).
async fn run_one(
    scenario: &Scenario,
    options: &RunOptions,
    inventory: Option<&Inventory>,
) -> Option<anyhow::Result<run::Report>> {
    let run = async {
        match inventory {
            Some(inv) => staging::run_staging(scenario, inv, options).await,
            None => run::run_local(scenario, options).await,
        }
    };
    tokio::select! {
        r = run => Some(r),
        _ = interrupted() => None,
    }
}

/// Returns at the first SIGINT, SIGTERM or SIGHUP.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let wait = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Not watched: this one does not end the run.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = wait(SignalKind::interrupt()) => {}
        _ = wait(SignalKind::terminate()) => {}
        _ = wait(SignalKind::hangup()) => {}
    }
}

/// After an interrupted run: drops the runtime, which ends the run's tasks and with them
/// its guard, which undoes every fault still in effect (and removes a local cluster).
fn undo_and_exit(runtime: tokio::runtime::Runtime, seed: u64) -> ExitCode {
    eprintln!("steward-chaos: interrupted (seed {seed}); undoing the faults in effect");
    drop(runtime);
    eprintln!("steward-chaos: faults undone (any that could not be are named above)");
    ExitCode::from(130)
}

fn run_all(
    dir: &std::path::Path,
    seed: Option<u64>,
    only: Option<&str>,
    inventory: Option<&std::path::Path>,
) -> ExitCode {
    let inventory = match load_inventory(inventory) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(e) => {
            eprintln!("steward-chaos: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    files.sort();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("steward-chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    for file in files {
        let scenario = match Scenario::load(&file) {
            Ok(s) => s,
            Err(e) => {
                rows.push((file.display().to_string(), Err(e.to_string())));
                continue;
            }
        };
        if only.is_some_and(|o| !scenario.name.contains(o)) {
            continue;
        }
        let seed = seed.unwrap_or_else(rand::random);
        eprintln!("steward-chaos: scenario {} with seed {seed}", scenario.name);
        let options = RunOptions {
            seed,
            bug: None,
            progress: false,
        };
        let outcome = runtime.block_on(run_one(&scenario, &options, inventory.as_ref()));
        match outcome {
            None => return undo_and_exit(runtime, seed),
            Some(Err(e)) => {
                eprintln!(
                    "steward-chaos: {}: the run could not be made (seed {seed}): {e:#}",
                    scenario.name
                );
                rows.push((scenario.name.clone(), Err(format!("{e:#}"))));
            }
            Some(Ok(report)) => {
                print!("{}", run::render_text(&report));
                println!();
                rows.push((scenario.name.clone(), Ok(report)));
            }
        }
    }
    print!("{}", run::render_table(&rows));
    let failed = rows
        .iter()
        .any(|(_, r)| r.as_ref().map_or(true, |r| !r.passed()));
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_seeds(s: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("--seeds takes FIRST..END or a count, not `{s}`");
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            if a >= b {
                return Err(format!("--seeds {s}: the range is empty"));
            }
            Ok(a..b)
        }
        None => Ok(0..s.trim().parse().map_err(|_| bad())?),
    }
}

fn simulate(
    seed: Option<u64>,
    seeds: Option<String>,
    controllers: Option<u64>,
    duration: std::time::Duration,
    bug: Option<String>,
    jobs: usize,
    output: Output,
) -> ExitCode {
    use steward_chaos::sim::{self, SimBug, SimOptions};
    let bug = match bug.as_deref().map(SimBug::parse).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("steward-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let options = |seed: u64| {
        let mut o = SimOptions::new(seed);
        if let Some(c) = controllers {
            o.controllers = c;
        }
        o.duration = duration;
        o.bug = bug;
        o
    };
    let range = match seeds.as_deref().map(parse_seeds).transpose() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("steward-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(range) = range else {
        let seed = seed.unwrap_or_else(rand::random);
        eprintln!("steward-chaos: simulation with seed {seed}");
        return match sim::run_seed(&options(seed)) {
            Err(e) => {
                eprintln!("steward-chaos: {e}");
                ExitCode::from(2)
            }
            Ok(report) => {
                match output {
                    Output::Text => print!("{}", sim::render_text(&report)),
                    Output::Json => match serde_json::to_string_pretty(&report) {
                        Ok(j) => println!("{j}"),
                        Err(e) => eprintln!("steward-chaos: {e}"),
                    },
                }
                if report.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
        };
    };
    let started = std::time::Instant::now();
    let summary = sim::run_seeds(range.clone(), jobs.max(1), options);
    match output {
        Output::Text => print!("{}", sim::render_summary(&summary)),
        Output::Json => match serde_json::to_string_pretty(&summary) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("steward-chaos: {e}"),
        },
    }
    eprintln!(
        "steward-chaos: {} seeds ({}..{}) in {:.1} s",
        range.end - range.start,
        range.start,
        range.end,
        started.elapsed().as_secs_f64()
    );
    if summary.errors.is_empty() && summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else if summary.failed.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::RunAll {
            dir,
            seed,
            only,
            inventory,
        } => run_all(&dir, seed, only.as_deref(), inventory.as_deref()),
        Cmd::Sim {
            seed,
            seeds,
            controllers,
            duration,
            bug,
            jobs,
            output,
        } => simulate(seed, seeds, controllers, duration, bug, jobs, output),
        Cmd::Run {
            scenario,
            cluster: ClusterKind::Local,
            inventory,
            seed,
            output,
            bug,
            quiet,
        } => {
            let inventory = match load_inventory(inventory.as_deref()) {
                Ok(i) => i,
                Err(code) => return code,
            };
            let scenario = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("steward-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            let bug = match bug.as_deref().map(Bug::parse).transpose() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("steward-chaos: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let seed = seed.unwrap_or_else(rand::random);
            eprintln!("steward-chaos: scenario {} with seed {seed}", scenario.name);
            let options = RunOptions {
                seed,
                bug,
                progress: !quiet,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("steward-chaos: starting the runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            // Ctrl-C ends the run early: dropping it undoes every fault (and stops a
            // local cluster's processes and removes its namespaces).
            let outcome = runtime.block_on(run_one(&scenario, &options, inventory.as_ref()));
            match outcome {
                None => undo_and_exit(runtime, seed),
                Some(Err(e)) => {
                    eprintln!("steward-chaos: the run could not be made (seed {seed}): {e:#}");
                    ExitCode::from(2)
                }
                Some(Ok(report)) => {
                    match output {
                        Output::Text => print!("{}", run::render_text(&report)),
                        Output::Json => match serde_json::to_string_pretty(&report) {
                            Ok(j) => println!("{j}"),
                            Err(e) => eprintln!("steward-chaos: {e}"),
                        },
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
            }
        }
    }
}
