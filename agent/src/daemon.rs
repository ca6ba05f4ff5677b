//! The long-running agent: a persistent node id; the static inventory, registered through
//! the leader when it changes; the telemetry threads; the agent API and `/metrics`; and a
//! heartbeat to the leader every interval carrying the latest telemetry summary. It finds
//! the leader through any controller's `LeaderHint`, follows it when leadership moves, and
//! backs off (bounded) while no controller answers.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{HeartbeatRequest, LeaderHintRequest, RegisterNodeRequest};
use steward_runtime::transport::{self, ClientOptions};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use crate::config::AgentConfig;
use crate::hardware::{self, GpuProbe, Inventory};
use crate::metrics::AgentStats;
use crate::telemetry::{SamplerConfig, Telemetry};

/// Connect timeout to a controller.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Deadline of one call to a controller.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between attempts while no leader answers.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often the static inventory is read again (a GPU gone, MIG reconfigured).
pub const INVENTORY_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node id file {path} is damaged: {content:?}; remove it to get a new id")]
    BadNodeId { path: String, content: String },
    #[error(transparent)]
    Probe(#[from] hardware::ProbeError),
    #[error("cannot listen on metrics address {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on agent API address {addr}: {source}")]
    Api {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory: {0}")]
    Inventory(#[from] serde_json::Error),
    #[error("cannot start the telemetry threads: {0}")]
    Telemetry(#[source] std::io::Error),
    #[error("inventory task failed: {0}")]
    Task(String),
}

/// Reads the inventory off the runtime (NVML calls block).
async fn read_inventory(
    probe: Arc<dyn GpuProbe>,
    config: &AgentConfig,
) -> Result<(Inventory, Vec<u8>), AgentError> {
    let data_dir = config.data_dir.clone();
    let mut inventory = tokio::task::spawn_blocking(move || {
        hardware::inventory(Path::new("/"), probe.as_ref(), Some(&data_dir))
    })
    .await
    .map_err(|e| AgentError::Task(e.to_string()))??;
    inventory.agent.api_addr = Some(config.advertise_addr.clone());
    let json = serde_json::to_vec(&inventory)?;
    Ok((inventory, json))
}

/// BLAKE3 (hex) of everything a registration records: hostname, labels and inventory. The
/// leader compares it on every heartbeat and asks for a registration only when it differs,
/// so a restarted agent on unchanged hardware costs no Raft write.
pub fn registration_digest(req: &RegisterNodeRequest) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(req.hostname.as_bytes());
    let labels: std::collections::BTreeMap<&String, &String> = req.labels.iter().collect();
    for (k, v) in labels {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(&req.inventory_json);
    h.finalize().to_hex().to_string()
}

/// This machine's node id, made once and kept in the data dir.
pub fn node_id(data_dir: &std::path::Path) -> Result<String, AgentError> {
    let io = |source| AgentError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            steward_core::node::validate_registration(&id, &[]).map_err(|_| {
                AgentError::BadNodeId {
                    path: path.display().to_string(),
                    content: id.clone(),
                }
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{:016x}", rand::random::<u64>());
            let tmp = data_dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

async fn client(addr: &str) -> Option<AgentControlClient<Channel>> {
    let options = ClientOptions::new(CONNECT_TIMEOUT).call_timeout(CALL_TIMEOUT);
    let ch = transport::connect(addr, &options).await.ok()?;
    Some(transport::agent_control_client(ch))
}

/// Asks the controllers, in turn, where the leader is.
async fn find_leader(controllers: &[String]) -> Option<AgentControlClient<Channel>> {
    for addr in controllers {
        let Some(mut c) = client(addr).await else {
            continue;
        };
        if let Ok(hint) = c.leader_hint(LeaderHintRequest {}).await {
            let hint = hint.into_inner();
            if !hint.leader_api_addr.is_empty() {
                if hint.leader_api_addr == *addr {
                    return Some(c);
                }
                if let Some(leader) = client(&hint.leader_api_addr).await {
                    return Some(leader);
                }
            }
        }
    }
    None
}

/// Runs until `shutdown` resolves. `on_ready` is called once the API and metrics listeners
/// are bound and telemetry runs (systemd's READY=1).
pub async fn run(
    config: AgentConfig,
    probe: Box<dyn GpuProbe>,
    on_ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let id = node_id(&config.data_dir)?;
    let probe: Arc<dyn GpuProbe> = Arc::from(probe);
    let (inventory, inventory_json) = read_inventory(probe.clone(), &config).await?;
    let hostname = inventory
        .host
        .hostname
        .clone()
        .unwrap_or_else(|| id.clone());
    // The first reading is taken before `start` returns: off the runtime, like every NVML call.
    let telemetry = {
        let (probe, gpus) = (probe.clone(), inventory.gpus.clone());
        let sampler = SamplerConfig {
            root: "/".into(),
            data_dir: Some(config.data_dir.clone()),
            interval: config.telemetry_interval,
        };
        Arc::new(
            tokio::task::spawn_blocking(move || Telemetry::start(probe, gpus, sampler))
                .await
                .map_err(|e| AgentError::Task(e.to_string()))?
                .map_err(AgentError::Telemetry)?,
        )
    };
    let stats = Arc::new(AgentStats::default());
    // Servers stop when `run` returns (the guard cancels the token).
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let api = tokio::net::TcpListener::bind(config.api_addr)
        .await
        .map_err(|source| AgentError::Api {
            addr: config.api_addr,
            source,
        })?;
    tokio::spawn(crate::api::serve(
        api,
        telemetry.clone(),
        stop.clone().cancelled_owned(),
    ));
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Metrics { addr, source })?;
        tokio::spawn(crate::metrics::serve(
            listener,
            telemetry.clone(),
            hostname.clone(),
            stats.clone(),
            stop.clone().cancelled_owned(),
        ));
    }
    tracing::info!(
        node = %id,
        gpus = inventory.gpus.len(),
        api = %config.advertise_addr,
        "agent started"
    );
    on_ready();
    let mut register = RegisterNodeRequest {
        node_id: id.clone(),
        hostname,
        labels: config.labels.clone().into_iter().collect(),
        inventory_json,
        inventory_digest: String::new(),
    };
    register.inventory_digest = registration_digest(&register);
    tokio::pin!(shutdown);
    let mut leader: Option<AgentControlClient<Channel>> = None;
    // Heartbeat first: the leader answers `register_again` when it does not hold this
    // registration (new node, changed hardware or labels).
    let mut registered = true;
    let mut backoff = Duration::from_millis(100);
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(INVENTORY_REFRESH);
    refresh.reset();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!(node = %id, "agent stopping");
                return Ok(());
            }
            _ = refresh.tick() => {
                match read_inventory(probe.clone(), &config).await {
                    Ok((_, json)) if json != register.inventory_json => {
                        tracing::info!(node = %id, "inventory changed; registering again");
                        register.inventory_json = json;
                        register.inventory_digest = registration_digest(&register);
                        registered = false;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the inventory again failed"),
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        if leader.is_none() {
            leader = find_leader(&config.controllers).await;
            if leader.is_none() {
                stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("no leader found; backing off {backoff:?}");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        let Some(c) = leader.as_mut() else { continue };
        if !registered {
            match c.register_node(register.clone()).await {
                Ok(r) => {
                    registered = true;
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %id, revision = r.into_inner().revision, "registered");
                }
                Err(status) => {
                    tracing::debug!(%status, "registration failed; looking for the leader again");
                    leader = None;
                    continue;
                }
            }
        }
        seq += 1;
        let hb = HeartbeatRequest {
            node_id: id.clone(),
            seq,
            inventory_digest: register.inventory_digest.clone(),
            telemetry: Some(telemetry.latest().to_proto()),
        };
        match c.heartbeat(hb).await {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                if reply.into_inner().register_again {
                    registered = false;
                }
            }
            Err(status) => {
                stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%status, "heartbeat failed; looking for the leader again");
                leader = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = node_id(dir.path()).expect("id");
        assert_eq!(node_id(dir.path()).expect("id"), a);
        std::fs::write(dir.path().join("node-id"), "Not Valid!").expect("write");
        assert!(node_id(dir.path())
            .unwrap_err()
            .to_string()
            .contains("remove it"));
    }
}
