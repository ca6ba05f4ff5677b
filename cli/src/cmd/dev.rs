//! `steward dev`: three controllers in one process on 127.0.0.1, with their data under one
//! directory, so a new user has a cluster with one command. Restarting it reuses the data.
//!
//! It is secure like a production cluster: a dev CA under `DATA_DIR/tls/ca` (made once),
//! and certificates for its controllers, its agents and an admin client, issued afresh at
//! every start. Admin commands find the client certificate by themselves
//! (`crate::security`). `--insecure` runs it in plaintext instead, with a warning.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use steward_agent::daemon::{self, AgentConfig};
use steward_agent::hardware::simulated::SimulatedGpus;
use steward_controller::{Controller, ControllerConfigFile};
use steward_core::identity::{Identity, Principal, Role};
use steward_runtime::tls::{issue, Tls};

/// Agents `steward dev` runs, and the GPUs each simulates.
const DEV_AGENTS: usize = 3;
const DEV_GPUS: &str = "H100:8";

/// Offset from the first API port to the first Raft port.
const RAFT_PORT_OFFSET: u16 = 10;
/// Offset from the first API port to the first agent's API port.
const AGENT_PORT_OFFSET: u16 = 20;

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the three controllers keep their data.
    #[arg(long, env = "STEWARD_DEV_DIR", default_value = crate::security::DEV_DATA_DIR)]
    pub data_dir: PathBuf,
    /// First admin API port; the controllers use P, P+1, P+2 (Raft: P+10..P+12), the
    /// agents' APIs P+20..P+22.
    #[arg(long, default_value_t = 7700)]
    pub api_port: u16,
}

/// The dev cluster's name (its certificates name it).
const DEV_CLUSTER: &str = "steward-dev";

/// The dev CA (made on first start, kept) and fresh certificates for every member.
struct DevTls {
    controllers: Vec<Tls>,
    agents: Vec<Tls>,
}

fn dev_tls(data_dir: &std::path::Path, agent_nodes: &[String]) -> anyhow::Result<DevTls> {
    let root = data_dir.join(crate::security::DEV_TLS_SUBDIR);
    let ca_dir = root.join("ca");
    let ca = if ca_dir.join(issue::CA_KEY_FILE).exists() {
        issue::read_ca(&ca_dir)?
    } else {
        let ca = issue::create_ca(DEV_CLUSTER, issue::CA_VALIDITY_DAYS)?;
        issue::write_ca(&ca_dir, &ca)?;
        ca
    };
    let issue_to = |name: &str, principal: Principal| -> anyhow::Result<Tls> {
        let dir = root.join(name);
        let identity = Identity::new(DEV_CLUSTER, principal)?;
        let cert = issue::create_cert(&ca, &identity, issue::CERT_VALIDITY_DAYS, 1)?;
        issue::write_cert(&dir, &cert, true)?;
        Ok(Tls::load(&dir)?)
    };
    let controllers = (1..=3u64)
        .map(|id| issue_to(&format!("controller-{id}"), Principal::Controller(id)))
        .collect::<anyhow::Result<_>>()?;
    let agents = agent_nodes
        .iter()
        .enumerate()
        .map(|(i, node)| issue_to(&format!("agent-{}", i + 1), Principal::Agent(node.clone())))
        .collect::<anyhow::Result<_>>()?;
    issue_to(
        crate::security::DEV_CLIENT,
        Principal::Client {
            name: "dev-admin".into(),
            role: Role::Admin,
        },
    )?;
    Ok(DevTls {
        controllers,
        agents,
    })
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    crate::process::init_tracing("warn,openraft=off");
    let insecure = crate::security::args().insecure;
    let agent_nodes = (1..=DEV_AGENTS)
        .map(|i| daemon::node_id(&args.data_dir.join(format!("agent-{i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match insecure {
        true => {
            steward_runtime::tls::warn_insecure("the dev cluster");
            None
        }
        false => {
            Some(dev_tls(&args.data_dir, &agent_nodes).context("making the dev certificates")?)
        }
    };
    let p = args.api_port;
    if p.checked_add(AGENT_PORT_OFFSET + DEV_AGENTS as u16)
        .is_none()
    {
        anyhow::bail!("--api-port {p} is too high: the dev cluster needs ports up to P+22");
    }
    let initial: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{}=127.0.0.1:{}/127.0.0.1:{}",
                i + 1,
                p + RAFT_PORT_OFFSET + i,
                p + i
            )
        })
        .collect();
    let mut controllers = Vec::new();
    for i in 0..3u16 {
        let file = ControllerConfigFile {
            id: Some(u64::from(i) + 1),
            data_dir: Some(args.data_dir.join(format!("controller-{}", i + 1))),
            raft_addr: Some(format!("127.0.0.1:{}", p + RAFT_PORT_OFFSET + i).parse()?),
            api_addr: Some(format!("127.0.0.1:{}", p + i).parse()?),
            initial_cluster: Some(initial.join(",")),
            cluster_name: Some(DEV_CLUSTER.into()),
            tls_dir: tls
                .as_ref()
                .map(|t| t.controllers[i as usize].dir().to_path_buf()),
            insecure: Some(insecure),
            ..Default::default()
        };
        let c = Controller::start(file.resolve()?)
            .await
            .with_context(|| format!("starting dev controller {}", i + 1))?;
        controllers.push(c);
    }
    let addrs = format!("127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}", p, p + 1, p + 2);
    // Three agents with simulated GPUs, each with its own data dir (and so its own node id).
    let agent_stop = tokio_util::sync::CancellationToken::new();
    let mut agents = Vec::new();
    for i in 1..=DEV_AGENTS {
        let data_dir = args.data_dir.join(format!("agent-{i}"));
        let gpus =
            SimulatedGpus::parse(DEV_GPUS, &format!("dev-agent-{i}:{}", data_dir.display()))?;
        let api = format!("127.0.0.1:{}", p + AGENT_PORT_OFFSET + i as u16 - 1);
        let config = AgentConfig {
            data_dir,
            controllers: addrs.split(',').map(str::to_string).collect(),
            labels: [("dev".to_string(), format!("agent-{i}"))].into(),
            heartbeat_interval: std::time::Duration::from_secs(1),
            telemetry_interval: std::time::Duration::from_secs(1),
            api_addr: api.parse()?,
            advertise_addr: api,
            metrics_addr: None,
            fence_after: steward_agent::config::DEFAULT_CONTROLLER_DOWN_AFTER / 2,
            shim_exe: std::env::current_exe()?,
            source_ip: None,
            isolation: steward_agent::jobs::IsolationMode::Auto,
            chunk_free_floor_bytes: steward_agent::config::DEFAULT_CHUNK_FREE_FLOOR_BYTES,
            scrub: Default::default(),
            gc: Default::default(),
            tls: tls.as_ref().map(|t| t.agents[i - 1].clone()),
            metrics_tls: false,
        };
        let stop = agent_stop.clone();
        agents.push(tokio::spawn(async move {
            if let Err(e) = daemon::run(config, Box::new(gpus), || {}, stop.cancelled_owned()).await
            {
                tracing::error!(error = %e, "dev agent {i} stopped");
            }
        }));
    }
    let addr_flag = if p == 7700 {
        String::new()
    } else {
        format!(" --addr {addrs}")
    };
    println!(
        "steward dev cluster: 3 controllers and {DEV_AGENTS} agents ({DEV_GPUS} simulated GPUs each), data in {}",
        args.data_dir.display()
    );
    println!("admin API: {addrs}");
    match &tls {
        Some(_) => println!(
            "mutual TLS: CA and certificates in {}; admin commands run from this directory use {} by themselves",
            args.data_dir.join(crate::security::DEV_TLS_SUBDIR).display(),
            crate::security::dev_client_dir(&args.data_dir).display()
        ),
        None => println!("PLAINTEXT (--insecure): admin commands need --insecure too"),
    }
    println!();
    println!("try, in another terminal:");
    println!("  steward status{addr_flag}");
    println!("  steward kv put greeting hello{addr_flag}");
    println!("  steward kv get greeting{addr_flag} -o json");
    println!("  steward operator raft list-peers{addr_flag}");
    println!("  steward node list{addr_flag}");
    println!("  steward node show NODE{addr_flag}");
    println!("  steward node load NODE --gpu 0 --util 90{addr_flag}");
    println!("  steward node fault NODE --gpu 1 xid 79{addr_flag}");
    println!();
    println!("Ctrl-C stops the cluster; running `steward dev` again resumes on the same data.");

    let mut code = ExitCode::SUCCESS;
    tokio::select! {
        r = crate::process::shutdown_signal() => r?,
        reason = async {
            let futs: Vec<_> = controllers.iter().map(|c| Box::pin(c.fatal())).collect();
            futures::future::select_all(futs).await.0
        } => {
            eprintln!("error: {reason}");
            code = ExitCode::from(2);
        }
    }
    agent_stop.cancel();
    for a in agents {
        let _ = a.await;
    }
    for c in controllers {
        c.shutdown().await;
    }
    Ok(code)
}
