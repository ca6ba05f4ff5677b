//! Assembles and runs one controller: storage, Raft, the two gRPC servers, workers, and
//! the ordered shutdown.
//!
//! Start: bind the listeners -> open RocksDB -> restore the state machine -> start Raft ->
//! initialize the group if this is a founding member on a fresh data dir -> start the
//! workers (proposer, Raft upkeep, the leader's control loops) -> serve Raft and API.
//! Stop (SIGTERM, or a fatal condition): stop the APIs, stop the workers,
//! `raft.shutdown()`, flush the DB.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_runtime::transport::{self, BindError};
use steward_runtime::{CancellationToken, WorkerSet};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{AdminService, AgentControlService, ApiContext};
use crate::config::ControllerConfig;
use crate::control::liveness::LivenessTracker;
use crate::raft::elections::{ElectionHolds, HoldsWorker};
use crate::raft::network::{NetworkFactory, PeerShared, RaftServer};
use crate::raft::proposer::Proposer;
use crate::raft::store::{open_stores, Db, StoreError};
use crate::raft::timings::WriteTimings;
use crate::raft::typ::{ControllerNode, Raft};
use crate::raft::workers::{LeadershipLog, LeaseWatch, RegisterSelf, SplitVoteBreaker};
use crate::raft::{LeaseClock, RaftHandle};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running controller.
pub struct Controller {
    pub id: u64,
    pub raft: Raft,
    pub api_addr: std::net::SocketAddr,
    pub raft_addr: std::net::SocketAddr,
    /// Stops the listeners (first in the shutdown order).
    stop_servers: CancellationToken,
    fatal: watch::Receiver<Option<String>>,
    servers: Vec<JoinHandle<()>>,
    workers: WorkerSet,
    db: Db,
}

impl Controller {
    /// Starts a controller and returns once its listeners are bound.
    pub async fn start(config: ControllerConfig) -> Result<Controller, ControllerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ControllerError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        // Bind first: a taken port is the most common start-up error.
        let raft_listener = transport::bind("raft address", config.raft_addr).await?;
        let api_listener = transport::bind("api address", config.api_addr).await?;
        let local = |l: &tokio::net::TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| BindError { what, addr, source })
        };
        let raft_addr = local(&raft_listener, "raft address", config.raft_addr)?;
        let api_addr = local(&api_listener, "api address", config.api_addr)?;
        let metrics_listener = match config.metrics_addr {
            None => None,
            Some(addr) => Some(transport::bind("metrics address", addr).await?),
        };

        let db = Db::open(&config.data_dir.join("raft"))?;
        let (incarnation, fresh) = db.identity(&config.data_dir, config.id)?;
        tracing::info!(
            id = config.id,
            incarnation = format_args!("{incarnation:#x}"),
            fresh,
            "opened data dir"
        );
        let timings = Arc::new(WriteTimings::default());
        let (log_store, sm) = open_stores(&db, timings.clone()).await?;
        let view = sm.view();

        let (fatal_tx, fatal_rx) = watch::channel(None);
        let peers = PeerShared::new(
            config.id,
            incarnation,
            view.clone(),
            raft_addr.ip(),
            config.tls.clone(),
            fatal_tx,
            timings.clone(),
        );
        let raft_config = Arc::new(config.raft.to_openraft(&config.cluster_name)?);
        let raft = Raft::new(
            config.id,
            raft_config,
            NetworkFactory::new(peers.clone()),
            log_store,
            sm,
        )
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
        initialize_if_founding(&raft, &config).await?;

        let workers = WorkerSet::default();
        let holds = ElectionHolds::new(raft.clone());
        let (proposer, proposer_worker) =
            Proposer::new(config.id, raft.clone(), view.clone(), timings);
        let lease = Arc::new(LeaseClock::default());
        let handle = RaftHandle::new(
            raft.clone(),
            view.clone(),
            peers.clone(),
            config.raft.clone(),
            proposer,
            holds.clone(),
            lease.clone(),
        );
        let liveness = LivenessTracker::new(config.liveness);
        workers.spawn(proposer_worker, None);
        workers.spawn(HoldsWorker(holds.clone()), Some(holds.changed()));
        workers.spawn(
            SplitVoteBreaker::new(&raft, holds.clone(), config.raft.clone()),
            None,
        );
        workers.spawn(LeadershipLog::new(&raft), None);
        workers.spawn(LeaseWatch::new(&raft, lease), None);
        workers.spawn(
            RegisterSelf::new(
                raft.clone(),
                peers.clone(),
                advertised(&config.advertise_api_addr, api_addr),
            ),
            None,
        );
        let replicas: Arc<crate::control::replicas::ReplicaTracker> = Default::default();
        let repair = crate::control::start(
            &workers,
            &handle,
            &liveness,
            &replicas,
            &config.jobs,
            config.storage.repair_tuning(),
        );

        // Bearer tokens are checked against this controller's applied state (`api::acl`);
        // the Raft service takes none.
        let tokens: Arc<dyn steward_runtime::access::TokenRoles> =
            Arc::new(crate::api::acl::StateTokens(view.clone()));
        let security =
            |tokens: Option<Arc<dyn steward_runtime::access::TokenRoles>>| match &config.tls {
                Some(tls) => transport::ServerSecurity::mutual_tls(tls.clone(), tokens),
                None => transport::ServerSecurity::insecure(),
            };
        if config.tls.is_none() {
            steward_runtime::tls::warn_insecure(&format!("controller {}", config.id));
        }
        let (raft_security, api_security) = (security(None), security(Some(tokens)));
        let stop_servers = CancellationToken::new();
        let ctx = Arc::new(ApiContext {
            security: vec![
                ("raft", raft_security.clone()),
                ("api", api_security.clone()),
            ],
            stopping: stop_servers.clone(),
            raft: handle,
            cluster_name: config.cluster_name.clone(),
            liveness,
            workers: workers.clone(),
            digest_cache: Default::default(),
            replicas,
            repair,
            repair_delay: config.storage.repair_delay,
        });

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<steward_proto::v1::admin_server::AdminServer<AdminService>>()
            .await;
        health_reporter
            .set_serving::<steward_proto::v1::raft_service_server::RaftServiceServer<RaftServer>>()
            .await;
        let (reflection, reflection_alpha) = transport::reflection()
            .map_err(|e| ControllerError::Raft(format!("reflection: {e}")))?;

        let raft_router = transport::grpc_server(&raft_security)
            .add_service(transport::raft_server(RaftServer::new(
                raft.clone(),
                peers.clone(),
                holds.clone(),
                config.raft.election_timeout_max,
            )))
            .add_service(health_service.clone());
        let api_router = transport::grpc_server(&api_security)
            .add_service(transport::admin_server(AdminService::new(ctx.clone())))
            .add_service(transport::agent_control_server(AgentControlService::new(
                ctx.clone(),
            )))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha);
        let mut servers = Vec::new();
        for (what, router, listener, security) in [
            ("raft", raft_router, raft_listener, raft_security),
            ("api", api_router, api_listener, api_security),
        ] {
            let stop = stop_servers.clone();
            servers.push(tokio::spawn(async move {
                if let Err(e) =
                    transport::serve(router, listener, stop.cancelled_owned(), security).await
                {
                    tracing::error!(error = %e, "{what} server stopped");
                }
            }));
        }
        if let Some(listener) = metrics_listener {
            let ctx = ctx.clone();
            servers.push(tokio::spawn(steward_runtime::metrics_http::serve(
                listener,
                config.tls.clone().filter(|_| config.metrics_tls),
                move |openmetrics| crate::metrics::render(&ctx, openmetrics),
                stop_servers.clone().cancelled_owned(),
            )));
        }
        tracing::info!(id = config.id, %raft_addr, %api_addr, "controller started");
        Ok(Controller {
            id: config.id,
            raft,
            api_addr,
            raft_addr,
            stop_servers,
            fatal: fatal_rx,
            servers,
            workers,
            db,
        })
    }

    /// Resolves with the reason when this controller must stop for good (for example its
    /// data dir was wiped and the cluster refuses it).
    pub async fn fatal(&self) -> String {
        let mut rx = self.fatal.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Ordered teardown: APIs, workers, Raft, then the database.
    pub async fn shutdown(self) {
        tracing::info!(id = self.id, "shutting down");
        self.stop_servers.cancel();
        for s in self.servers {
            let _ = s.await;
        }
        self.workers.shutdown().await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the database");
        }
        tracing::info!(id = self.id, "stopped");
    }
}

/// The advertised address, with the port the listener got when `addr` asked for port 0.
fn advertised(addr: &str, bound: std::net::SocketAddr) -> String {
    match addr.rsplit_once(':') {
        Some((host, "0")) => format!("{host}:{}", bound.port()),
        _ => addr.to_string(),
    }
}

/// A founding member on a fresh data dir proposes the initial membership. Every founding
/// member proposes the same one (from the same `initial_cluster`), so the entries at index
/// 0 are identical. With API addresses in `initial_cluster`, the members know each other's
/// APIs from that first entry; otherwise they learn them as each controller registers.
async fn initialize_if_founding(
    raft: &Raft,
    config: &ControllerConfig,
) -> Result<(), ControllerError> {
    if config.initial_cluster.is_empty() {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ControllerError::Raft(e.to_string()))?;
    if initialized {
        return Ok(());
    }
    let members: BTreeMap<u64, ControllerNode> = config
        .initial_cluster
        .iter()
        .map(|(id, m)| {
            (
                *id,
                ControllerNode {
                    raft_addr: m.raft_addr.clone(),
                    api_addr: m.api_addr.clone().unwrap_or_default(),
                },
            )
        })
        .collect();
    if let Err(e) = raft.initialize(members).await {
        tracing::info!(error = %e, "group already initialized");
    }
    Ok(())
}
