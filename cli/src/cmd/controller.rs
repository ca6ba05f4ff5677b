//! `steward controller`: runs one controller until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use steward_controller::{Controller, ControllerConfigFile};

#[derive(clap::Args, Debug, Default)]
pub struct ControllerArgs {
    /// TOML config file; flags and STEWARD_* variables override its keys.
    #[arg(long, env = "STEWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// This controller's id in the group (1, 2, ...).
    #[arg(long, env = "STEWARD_ID")]
    pub id: Option<u64>,
    /// Where the Raft log and state live.
    #[arg(long, env = "STEWARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address of the Raft service (controller to controller).
    #[arg(long, env = "STEWARD_RAFT_ADDR")]
    pub raft_addr: Option<SocketAddr>,
    /// Listen address of the admin and agent APIs.
    #[arg(long, env = "STEWARD_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// The Raft address other controllers reach this one at (default: --raft-addr; needed
    /// when that listens on 0.0.0.0).
    #[arg(long, env = "STEWARD_ADVERTISE_RAFT_ADDR")]
    pub advertise_raft_addr: Option<String>,
    /// The API address agents and operators reach this one at (default: --api-addr; needed
    /// when that listens on 0.0.0.0).
    #[arg(long, env = "STEWARD_ADVERTISE_API_ADDR")]
    pub advertise_api_addr: Option<String>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "STEWARD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Founding members' advertised addresses, identical on every founding controller:
    /// 1=RAFT_ADDR/API_ADDR,2=... (the API part may be left out). Omit when joining an
    /// existing group (after `steward operator raft add-learner`).
    #[arg(long, env = "STEWARD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Name of the cluster (shown in status and snapshots).
    #[arg(long, env = "STEWARD_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
}

impl ControllerArgs {
    /// File, then env and flags (clap already put env under flags).
    pub fn layered(self) -> anyhow::Result<ControllerConfigFile> {
        let mut file = match &self.config {
            Some(path) => ControllerConfigFile::load(path)?,
            None => ControllerConfigFile::default(),
        };
        file.id = self.id.or(file.id);
        file.data_dir = self.data_dir.or(file.data_dir);
        file.raft_addr = self.raft_addr.or(file.raft_addr);
        file.api_addr = self.api_addr.or(file.api_addr);
        file.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        file.advertise_raft_addr = self.advertise_raft_addr.or(file.advertise_raft_addr);
        file.advertise_api_addr = self.advertise_api_addr.or(file.advertise_api_addr);
        file.initial_cluster = self.initial_cluster.or(file.initial_cluster);
        file.cluster_name = self.cluster_name.or(file.cluster_name);
        // --tls-dir and --insecure are global flags (`security`): a TLS dir with a
        // controller certificate for this id.
        let security = crate::security::args();
        file.tls_dir = security.tls_dir.or(file.tls_dir);
        if security.insecure {
            file.insecure = Some(true);
        }
        Ok(file)
    }
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    crate::process::init_tracing("info,openraft=warn");
    let config = args.layered()?.resolve()?;
    steward_controller::arm_failpoints();
    let controller = Controller::start(config)
        .await
        .context("starting the controller")?;
    crate::process::notify_systemd(sd_notify::NotifyState::Ready);
    let code = tokio::select! {
        reason = controller.fatal() => {
            eprintln!("error: {reason}");
            ExitCode::from(2)
        }
        signal = crate::process::shutdown_signal() => {
            signal?;
            ExitCode::SUCCESS
        }
    };
    crate::process::notify_systemd(sd_notify::NotifyState::Stopping);
    controller.shutdown().await;
    Ok(code)
}
