//! Assembles and runs one controller: storage, Raft, the two gRPC servers, background
//! workers, and the ordered shutdown.
//!
//! Start: open RocksDB -> restore the state machine -> start Raft -> initialize the group
//! if this is a founding member on a fresh data dir -> serve Raft and API listeners ->
//! start workers (registration, leadership log).
//! Stop (SIGTERM, or a fatal condition): stop the APIs, stop workers, `raft.shutdown()`,
//! flush and close the DB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use steward_proto::v1::admin_server::AdminServer;
use steward_proto::v1::agent_control_server::AgentControlServer;
use steward_proto::v1::raft_service_client::RaftServiceClient;
use steward_proto::v1::raft_service_server::RaftServiceServer;
use steward_proto::v1::RegisterControllerRequest;
use steward_proto::{MAX_API_MESSAGE_BYTES, MAX_RAFT_MESSAGE_BYTES};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::api::{AdminService, AgentControlService, ApiContext, Proposer};
use crate::config::ControllerConfig;
use crate::elections::{ElectionHolds, HoldReason};
use crate::network::{wiped_message, NetworkFactory, PeerShared, RaftServer};
use crate::store::{open_stores, Db, StoreError};
use crate::typ::{ControllerNode, Raft};

/// How often an unregistered controller retries registering with the leader.
const REGISTER_RETRY: Duration = Duration::from_millis(500);

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
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
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
    shutdown: CancellationToken,
    fatal: watch::Receiver<Option<String>>,
    servers: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
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
        let raft_listener = TcpListener::bind(config.raft_addr)
            .await
            .map_err(|source| ControllerError::Bind {
                what: "raft address",
                addr: config.raft_addr,
                source,
            })?;
        let api_listener =
            TcpListener::bind(config.api_addr)
                .await
                .map_err(|source| ControllerError::Bind {
                    what: "api address",
                    addr: config.api_addr,
                    source,
                })?;
        let raft_addr = raft_listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                what: "raft address",
                addr: config.raft_addr,
                source,
            })?;
        let api_addr = api_listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                what: "api address",
                addr: config.api_addr,
                source,
            })?;

        let metrics_listener =
            match config.metrics_addr {
                None => None,
                Some(addr) => Some(crate::metrics::bind(addr).await.map_err(|source| {
                    ControllerError::Bind {
                        what: "metrics address",
                        addr,
                        source,
                    }
                })?),
            };
        let db = Db::open(&config.data_dir.join("raft"))?;
        let (incarnation, fresh) = db.identity(&config.data_dir, config.id)?;
        tracing::info!(
            id = config.id,
            incarnation = format_args!("{incarnation:#x}"),
            fresh,
            "opened data dir"
        );
        let (log_store, sm) = open_stores(&db).await?;
        let view = sm.view();

        let (fatal_tx, fatal_rx) = watch::channel(None);
        let peers = PeerShared::new(config.id, incarnation, view.clone(), fatal_tx);
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

        if !config.initial_cluster.is_empty() {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| ControllerError::Raft(e.to_string()))?;
            if !initialized {
                // Every founding member proposes the same membership (api addresses arrive
                // later through registration), so the entries at index 0 are identical.
                let members: BTreeMap<u64, ControllerNode> = config
                    .initial_cluster
                    .iter()
                    .map(|(id, addr)| {
                        (
                            *id,
                            ControllerNode {
                                raft_addr: addr.clone(),
                                api_addr: String::new(),
                            },
                        )
                    })
                    .collect();
                if let Err(e) = raft.initialize(members).await {
                    tracing::info!(error = %e, "group already initialized");
                }
            }
        }

        let shutdown = CancellationToken::new();
        let holds = ElectionHolds::new(raft.clone());
        let (proposer, proposer_task) = Proposer::start(config.id, raft.clone(), shutdown.clone());
        let ctx = ApiContext::new(
            raft.clone(),
            view.clone(),
            peers.clone(),
            config.cluster_name.clone(),
            config.raft.clone(),
            proposer,
            crate::api::liveness::LivenessTracker::new(config.liveness),
            holds.clone(),
        );

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AdminServer<AdminService>>()
            .await;
        health_reporter
            .set_serving::<RaftServiceServer<RaftServer>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ControllerError::Raft(format!("reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ControllerError::Raft(format!("reflection: {e}")))?;

        let raft_service = RaftServiceServer::new(RaftServer::new(
            raft.clone(),
            peers.clone(),
            holds.clone(),
            config.raft.election_timeout_max,
        ))
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let admin = AdminServer::new(AdminService::new(ctx.clone()))
            .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_API_MESSAGE_BYTES);
        let agent = AgentControlServer::new(AgentControlService::new(ctx.clone()))
            .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_API_MESSAGE_BYTES);

        let mut servers = Vec::new();
        let token = shutdown.clone();
        let health = health_service.clone();
        servers.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(raft_service)
                .add_service(health)
                .serve_with_incoming_shutdown(
                    // `Server::tcp_nodelay` applies only to listeners tonic binds itself.
                    TcpIncoming::from(raft_listener).with_nodelay(Some(true)),
                    token.cancelled(),
                )
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "raft server stopped");
            }
        }));
        let token = shutdown.clone();
        servers.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(admin)
                .add_service(agent)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(api_listener).with_nodelay(Some(true)),
                    token.cancelled(),
                )
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "api server stopped");
            }
        }));

        if let Some(listener) = metrics_listener {
            servers.push(tokio::spawn(crate::metrics::serve(
                listener,
                ctx.clone(),
                shutdown.clone(),
            )));
        }
        let workers = vec![
            proposer_task,
            tokio::spawn(crate::api::liveness::run(ctx.clone(), shutdown.clone())),
            tokio::spawn(holds.clone().run(shutdown.clone())),
            tokio::spawn(break_split_votes(
                raft.clone(),
                holds.clone(),
                config.raft.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(log_leadership(raft.clone(), shutdown.clone())),
            tokio::spawn(register_self(
                raft.clone(),
                peers.clone(),
                api_addr.to_string(),
                shutdown.clone(),
            )),
        ];
        tracing::info!(id = config.id, %raft_addr, %api_addr, "controller started");
        Ok(Controller {
            id: config.id,
            raft,
            api_addr,
            raft_addr,
            shutdown,
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
        self.shutdown.cancel();
        for s in self.servers {
            let _ = s.await;
        }
        for w in self.workers {
            w.abort();
            let _ = w.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing the database");
        }
        tracing::info!(id = self.id, "stopped");
    }
}

/// Logs every leadership this controller takes, one line per term. The black-box tests
/// read these lines to check that no term had two leaders.
async fn log_leadership(raft: Raft, shutdown: CancellationToken) {
    let mut rx = raft.metrics();
    let mut logged_term = None;
    loop {
        {
            let m = rx.borrow_and_update();
            if m.state == ServerState::Leader && logged_term != Some(m.current_term) {
                logged_term = Some(m.current_term);
                tracing::info!(term = m.current_term, id = m.id, "became leader");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Randomised back-off for repeated split votes. openraft 0.9 draws a controller's
/// election timeout once per process, so two candidates whose timeouts happen to be close
/// can split the vote round after round (seen in tests: 10 rounds, 4 s). From the second
/// consecutive candidacy without a leader in between, this controller sits out one more
/// election_timeout_max plus a random share of election_timeout_min before it may campaign
/// again, which desynchronises the candidates as the Raft paper's randomised timeouts intend.
/// The first retry is left alone: it is usually a vote refused under the old leader's lease.
async fn break_split_votes(
    raft: Raft,
    holds: Arc<ElectionHolds>,
    tuning: crate::config::RaftTuning,
    shutdown: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut last_term = 0;
    let mut streak = 0u32;
    loop {
        let backoff = {
            let m = rx.borrow_and_update();
            if m.current_leader.is_some() {
                streak = 0;
            }
            if m.state == ServerState::Candidate && m.current_term != last_term {
                last_term = m.current_term;
                streak += 1;
                streak >= 2
            } else {
                false
            }
        };
        if backoff {
            let jitter =
                rand::random_range(0..tuning.election_timeout_min.as_millis().max(1) as u64);
            let pause = tuning.election_timeout_max + Duration::from_millis(jitter);
            holds.hold(HoldReason::SplitVoteBackoff, pause);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Registers this controller's incarnation and API address with the leader, once it is a
/// member, and stops the controller if the cluster knows its id under another incarnation.
async fn register_self(
    raft: Raft,
    peers: Arc<PeerShared>,
    api_addr: String,
    shutdown: CancellationToken,
) {
    loop {
        let (registered, leader_addr) = {
            let applied = peers.view.read();
            let record = applied.state.controllers.get(&peers.id).cloned();
            let m = raft.metrics().borrow().clone();
            let is_member = m
                .membership_config
                .membership()
                .get_node(&peers.id)
                .is_some();
            match record {
                Some(r) if r.incarnation != peers.incarnation => {
                    peers.fail(wiped_message(peers.id, r.incarnation, peers.incarnation));
                    return;
                }
                Some(r) if r.api_addr == api_addr => (true, None),
                _ if !is_member => (false, None),
                _ => (
                    false,
                    m.current_leader.and_then(|l| {
                        m.membership_config
                            .membership()
                            .get_node(&l)
                            .map(|n| n.raft_addr.clone())
                    }),
                ),
            }
        };
        if registered {
            tracing::info!(id = peers.id, "registered with the cluster");
            return;
        }
        if let Some(addr) = leader_addr {
            if let Ok(ch) = peers.channel(&addr) {
                let mut client = RaftServiceClient::new(ch);
                let req = RegisterControllerRequest {
                    from: Some(peers.identity()),
                    api_addr: api_addr.clone(),
                };
                match tokio::time::timeout(Duration::from_secs(5), client.register_controller(req))
                    .await
                {
                    Ok(Ok(reply)) => {
                        let recorded = reply.into_inner().recorded_incarnation;
                        if recorded != peers.incarnation {
                            peers.fail(wiped_message(peers.id, recorded, peers.incarnation));
                            return;
                        }
                    }
                    Ok(Err(status)) => tracing::debug!(%status, "registration not accepted yet"),
                    Err(_) => tracing::debug!("registration timed out"),
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REGISTER_RETRY) => {}
        }
    }
}
