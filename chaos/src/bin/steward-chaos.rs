//! `steward-chaos`: breaks a Steward cluster on purpose and checks its promises.
//!
//! `steward-chaos run SCENARIO.toml [--seed N] [-o text|json] [--bug NAME]` starts a local
//! cluster with every controller in its own network namespace (root), runs the scenario's
//! workloads and fault schedule, checks every invariant and prints the report. Exit status:
//! 0 when every invariant held, 1 when one was violated, 2 when the run could not be made.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use steward_chaos::run::{self, Bug, RunOptions};
use steward_chaos::scenario::Scenario;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run {
            scenario,
            cluster: ClusterKind::Local,
            seed,
            output,
            bug,
            quiet,
        } => {
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
            // Ctrl-C ends the run early: dropping it undoes every fault, stops the
            // processes and removes the namespaces.
            let outcome = runtime.block_on(async {
                tokio::select! {
                    r = run::run_local(&scenario, &options) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            match outcome {
                None => {
                    eprintln!(
                        "steward-chaos: interrupted; faults undone, cluster removed (seed {seed})"
                    );
                    ExitCode::from(130)
                }
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
