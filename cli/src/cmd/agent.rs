//! `steward agent`: the per-machine agent (registration and heartbeats to the leader), or
//! `--print-inventory` for a one-shot look at the hardware.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use steward_agent::daemon::{self, AgentConfig};
use steward_agent::hardware::{self, simulated::SimulatedGpus, GpuProbe};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Print this machine's hardware inventory (host, GPUs, one telemetry sample) as JSON and exit.
    #[arg(long)]
    pub print_inventory: bool,
    /// Where the agent keeps its node id.
    #[arg(long, env = "STEWARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Controllers' API addresses, comma separated (any one is enough).
    #[arg(long, env = "STEWARD_CONTROLLERS")]
    pub controllers: Option<String>,
    /// A label of this node, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Heartbeat period.
    #[arg(long, env = "STEWARD_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "STEWARD_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Simulate GPUs instead of reading NVML: "MODEL:COUNT", e.g. "H100:8".
    #[arg(long, env = "STEWARD_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
}

fn probe(args: &AgentArgs) -> anyhow::Result<Box<dyn GpuProbe>> {
    Ok(match &args.simulate_gpus {
        Some(spec) => {
            let host = hardware::host::probe(std::path::Path::new("/"))
                .hostname
                .unwrap_or_default();
            let seed = match &args.data_dir {
                Some(d) => format!("{host}:{}", d.display()),
                None => host,
            };
            Box::new(SimulatedGpus::parse(spec, &seed)?)
        }
        None => hardware::detect_gpus(),
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::init_tracing("info");
    let gpus = probe(&args)?;
    if args.print_inventory {
        let inventory = hardware::inventory(std::path::Path::new("/"), gpus.as_ref())
            .context("reading the inventory")?;
        println!("{}", serde_json::to_string_pretty(&inventory)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("--data-dir (or STEWARD_DATA_DIR) is required to run the agent");
    };
    let controllers = crate::client::parse_addrs(args.controllers.as_deref().unwrap_or(""))
        .context("--controllers (or STEWARD_CONTROLLERS) lists the controllers' API addresses")?;
    if args.heartbeat_interval < Duration::from_millis(50)
        || args.heartbeat_interval > Duration::from_secs(60)
    {
        bail!("--heartbeat-interval must be between 50ms and 60s");
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("--label `{l}` is not KEY=VALUE"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let config = AgentConfig {
        data_dir,
        controllers,
        labels,
        heartbeat_interval: args.heartbeat_interval,
        metrics_addr: args.metrics_addr,
    };
    crate::notify_systemd(sd_notify::NotifyState::Ready);
    daemon::run(config, gpus, async {
        if let Err(e) = super::controller::shutdown_signal().await {
            tracing::error!(error = %e, "signal handling");
        }
        crate::notify_systemd(sd_notify::NotifyState::Stopping);
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
