//! `steward agent`: the per-machine agent. This build has its one-shot inventory mode;
//! registration, heartbeats and telemetry streaming arrive with the rest of the agent issue.

use std::process::ExitCode;

use anyhow::Context;
use steward_agent::hardware::{self, simulated::SimulatedGpus, GpuProbe};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Print this machine's hardware inventory (host, GPUs, one telemetry sample) as JSON and exit.
    #[arg(long, required = true)]
    pub print_inventory: bool,
    /// Simulate GPUs instead of reading NVML: "MODEL:COUNT", e.g. "H100:8".
    #[arg(long, env = "STEWARD_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::init_tracing("info");
    let root = std::path::Path::new("/");
    let probe: Box<dyn GpuProbe> = match &args.simulate_gpus {
        Some(spec) => {
            let host = hardware::host::probe(root).hostname.unwrap_or_default();
            Box::new(SimulatedGpus::parse(spec, &host)?)
        }
        None => hardware::detect_gpus(),
    };
    let inventory = hardware::inventory(root, probe.as_ref()).context("reading the inventory")?;
    println!("{}", serde_json::to_string_pretty(&inventory)?);
    Ok(ExitCode::SUCCESS)
}
