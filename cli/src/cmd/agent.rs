//! `steward agent`: the per-machine agent (inventory, telemetry, registration, heartbeats,
//! its own API and `/metrics`), or `--print-inventory` for a one-shot look at the hardware.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use steward_agent::config::AgentConfigFile;
use steward_agent::daemon;
use steward_agent::hardware::{self, simulated::SimulatedGpus, GpuProbe};
use steward_agent::telemetry::{SamplerConfig, Telemetry};

#[derive(clap::Args, Debug, Default)]
pub struct AgentArgs {
    /// Print this machine's hardware inventory and one telemetry reading as JSON, and exit.
    #[arg(long)]
    pub print_inventory: bool,
    /// TOML config file; flags and STEWARD_* variables override its keys.
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the agent keeps its node id.
    #[arg(long, env = "STEWARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Controllers' API addresses, comma separated (any one is enough).
    #[arg(long, env = "STEWARD_CONTROLLERS")]
    pub controllers: Option<String>,
    /// Listen address of the agent API [default: 0.0.0.0:7800].
    #[arg(long, env = "STEWARD_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// Address others reach the agent API at [default: the listen address, with this
    /// machine's hostname when listening on all interfaces].
    #[arg(long, env = "STEWARD_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// A label of this node, KEY=VALUE (repeatable; env: comma separated).
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        env = "STEWARD_LABELS",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,
    /// Heartbeat period [default: 1s].
    #[arg(long, env = "STEWARD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Telemetry sampling period [default: the heartbeat period].
    #[arg(long, env = "STEWARD_TELEMETRY_INTERVAL", value_parser = humantime::parse_duration)]
    pub telemetry_interval: Option<Duration>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "STEWARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Simulate GPUs instead of reading NVML: "MODEL:COUNT", e.g. "H100:8".
    #[arg(long, env = "STEWARD_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
    /// Stop work that must not run disconnected after this long without a heartbeat
    /// acknowledged by a leader [default: half of --controller-down-after].
    #[arg(long, env = "STEWARD_FENCE_AFTER", value_parser = humantime::parse_duration)]
    pub fence_after: Option<Duration>,
    /// The local address connections to the controllers come from [default: the system's].
    #[arg(long, env = "STEWARD_SOURCE_IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// The controllers' liveness.down_after, which fencing must beat [default: 5s].
    #[arg(long, env = "STEWARD_CONTROLLER_DOWN_AFTER", value_parser = humantime::parse_duration)]
    pub controller_down_after: Option<Duration>,
    /// How allocations are isolated: auto, cgroup-v2, cgroup-v1 or process-group
    /// [default: auto, the best the host offers].
    #[arg(long, env = "STEWARD_ISOLATION")]
    pub isolation: Option<steward_agent::jobs::IsolationMode>,
    /// Free space the chunk store's disk keeps; below it new chunks are refused, e.g.
    /// "50GiB" [default: 1GiB].
    #[arg(long, env = "STEWARD_CHUNK_FREE_FLOOR")]
    pub chunk_free_floor: Option<bytesize::ByteSize>,
    /// Time between two scrub passes over every chunk [default: 7d].
    #[arg(long, env = "STEWARD_SCRUB_INTERVAL", value_parser = humantime::parse_duration)]
    pub scrub_interval: Option<Duration>,
    /// Read rate of a scrub pass per second, e.g. "100MiB" [default: 50MiB].
    #[arg(long, env = "STEWARD_SCRUB_RATE")]
    pub scrub_rate: Option<bytesize::ByteSize>,
    /// Only chunks written at least this long ago are garbage-collected [default: 1h].
    #[arg(long, env = "STEWARD_CHUNK_GC_GRACE", value_parser = humantime::parse_duration)]
    pub chunk_gc_grace: Option<Duration>,
    /// Time between garbage collection passes [default: 10m].
    #[arg(long, env = "STEWARD_CHUNK_GC_INTERVAL", value_parser = humantime::parse_duration)]
    pub chunk_gc_interval: Option<Duration>,
}

/// `steward agent-shim`: started by the agent for each allocation.
#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    #[arg(long)]
    pub alloc_dir: PathBuf,
    /// A cgroup's procs file to join before starting the task (repeatable).
    #[arg(long = "cgroup-procs")]
    pub cgroup_procs: Vec<PathBuf>,
    #[arg(long, default_value_t = steward_agent::jobs::shim::DEFAULT_MAX_LOG_BYTES)]
    pub max_log_bytes: u64,
    #[arg(long, default_value_t = steward_agent::jobs::shim::DEFAULT_MAX_LOG_FILES)]
    pub max_log_files: u32,
    /// The agent's fence lease file (fencing of on_disconnect = "stop" work).
    #[arg(long)]
    pub fence_lease: Option<PathBuf>,
    #[arg(long, default_value_t = 2500)]
    pub fence_after_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub fence_grace_ms: u64,
    /// Process-group isolation: the task's resident-memory limit, enforced by the shim.
    #[arg(long)]
    pub memory_limit_mib: Option<u64>,
    /// The task's program and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run_shim(args: &ShimArgs) -> i32 {
    steward_agent::arm_failpoints();
    steward_agent::jobs::shim::run(steward_agent::jobs::shim::ShimArgs {
        alloc_dir: args.alloc_dir.clone(),
        cgroup_procs: args.cgroup_procs.clone(),
        max_log_bytes: args.max_log_bytes,
        max_log_files: args.max_log_files,
        command: args.command.clone(),
        fence_lease: args.fence_lease.clone(),
        fence_after: Duration::from_millis(args.fence_after_ms),
        fence_grace: Duration::from_millis(args.fence_grace_ms),
        memory_limit_mib: args.memory_limit_mib,
    })
}

impl AgentArgs {
    /// File, then env and flags (clap already put env under flags).
    fn layered(&self) -> anyhow::Result<AgentConfigFile> {
        let mut file = match &self.config {
            Some(path) => AgentConfigFile::load(path)?,
            None => AgentConfigFile::default(),
        };
        if self.data_dir.is_some() {
            file.data_dir = self.data_dir.clone();
        }
        if let Some(c) = &self.controllers {
            file.controllers = Some(crate::client::parse_addrs(c).context(
                "--controllers (or STEWARD_CONTROLLERS) lists the controllers' API addresses",
            )?);
        }
        file.api_addr = self.api_addr.or(file.api_addr);
        file.advertise_addr = self.advertise_addr.clone().or(file.advertise_addr);
        file.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        file.heartbeat_interval = self.heartbeat_interval.or(file.heartbeat_interval);
        file.telemetry_interval = self.telemetry_interval.or(file.telemetry_interval);
        file.simulate_gpus = self.simulate_gpus.clone().or(file.simulate_gpus);
        file.fence_after = self.fence_after.or(file.fence_after);
        file.source_ip = self.source_ip.or(file.source_ip);
        file.controller_down_after = self.controller_down_after.or(file.controller_down_after);
        file.isolation = self.isolation.or(file.isolation);
        file.chunk_free_floor = self.chunk_free_floor.or(file.chunk_free_floor);
        file.scrub_interval = self.scrub_interval.or(file.scrub_interval);
        file.scrub_rate = self.scrub_rate.or(file.scrub_rate);
        file.chunk_gc_grace = self.chunk_gc_grace.or(file.chunk_gc_grace);
        file.chunk_gc_interval = self.chunk_gc_interval.or(file.chunk_gc_interval);
        // --tls-dir and --insecure are global flags (`security`): a TLS dir with an agent
        // certificate, whose node becomes this agent's node id.
        let security = crate::security::args();
        file.tls_dir = security.tls_dir.or(file.tls_dir);
        if security.insecure {
            file.insecure = Some(true);
        }
        for l in self.labels.iter().filter(|l| !l.trim().is_empty()) {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label `{l}` is not KEY=VALUE"))?;
            file.labels
                .insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(file)
    }
}

fn probe(simulate: Option<&str>, data_dir: Option<&Path>) -> anyhow::Result<Box<dyn GpuProbe>> {
    Ok(match simulate {
        Some(spec) => {
            let host = hardware::host::probe(Path::new("/"), None)
                .hostname
                .unwrap_or_default();
            let seed = match data_dir {
                Some(d) => format!("{host}:{}", d.display()),
                None => host,
            };
            Box::new(SimulatedGpus::parse(spec, &seed)?)
        }
        None => hardware::detect_gpus(),
    })
}

/// The inventory with one telemetry reading, as `--print-inventory` shows it.
fn print_inventory(gpus: Box<dyn GpuProbe>, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let gpus: Arc<dyn GpuProbe> = Arc::from(gpus);
    let inventory = hardware::inventory(Path::new("/"), gpus.as_ref(), data_dir)
        .context("reading the inventory")?;
    let telemetry = Telemetry::start(
        gpus,
        inventory.gpus.clone(),
        SamplerConfig {
            root: "/".into(),
            data_dir: data_dir.map(Path::to_path_buf),
            interval: steward_agent::telemetry::MAX_INTERVAL,
        },
    )
    .context("starting the telemetry sampler")?;
    let mut doc = serde_json::to_value(&inventory)?;
    doc["telemetry"] = serde_json::to_value(&*telemetry.latest())?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::process::init_tracing("info");
    steward_agent::arm_failpoints();
    let file = args.layered()?;
    let gpus = probe(file.simulate_gpus.as_deref(), file.data_dir.as_deref())?;
    if args.print_inventory {
        let data_dir = file.data_dir.clone();
        tokio::task::spawn_blocking(move || print_inventory(gpus, data_dir.as_deref())).await??;
        return Ok(ExitCode::SUCCESS);
    }
    let hostname = hardware::host::probe(Path::new("/"), None)
        .hostname
        .unwrap_or_else(|| "localhost".into());
    let config = file.resolve(&hostname)?;
    let ready = || crate::process::notify_systemd(sd_notify::NotifyState::Ready);
    daemon::run(config, gpus, ready, async {
        if let Err(e) = crate::process::shutdown_signal().await {
            tracing::error!(error = %e, "signal handling");
        }
        crate::process::notify_systemd(sd_notify::NotifyState::Stopping);
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
