//! The long-running agent: a persistent node id; the static inventory, registered through
//! the leader when it changes; the telemetry threads; the agent API and `/metrics`; and a
//! heartbeat to the leader every interval carrying the latest telemetry summary. Finding
//! and following the leader, and keeping the registration, are in `link`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_proto::v1::{HeartbeatRequest, RegisterNodeRequest};
use tokio_util::sync::CancellationToken;

pub use crate::config::AgentConfig;
use crate::hardware::{self, GpuProbe, Inventory};
use crate::link::{self, find_leader, Leader, Registration, LEADER_RECHECK};
use crate::metrics::AgentStats;
use crate::telemetry::{SamplerConfig, Telemetry};

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
    #[error(
        "node id file {path} is damaged ({content:?}). This machine is known to the cluster by its old id: \
         find it with `steward node list` (by hostname) and write it into {path}; only if the machine \
         should join as a new node, remove the file (and `steward node remove` the old id)"
    )]
    BadNodeId { path: String, content: String },
    #[error("TLS dir {dir}: {message}")]
    CertificateNode { dir: String, message: String },
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
    #[error("{0}")]
    Isolation(String),
    #[error("chunk store: {0}")]
    Chunks(#[from] crate::chunks::ChunkError),
    #[error("cannot start the scrub thread: {0}")]
    Scrub(#[source] std::io::Error),
}

/// Sets its flag when dropped (stops the scrubber's thread when the agent stops).
struct StopFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Opens `DATA_DIR/chunks` off the runtime (it counts what it holds).
async fn open_chunk_store(
    config: &AgentConfig,
) -> Result<Arc<crate::chunks::ChunkStore>, AgentError> {
    let root = config.data_dir.join("chunks");
    let floor = config.chunk_free_floor_bytes;
    let (store, report) =
        tokio::task::spawn_blocking(move || crate::chunks::ChunkStore::open(root, floor))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))??;
    tracing::info!(
        chunks = report.chunks,
        interrupted_writes_removed = report.temp_removed,
        free_floor_bytes = floor,
        "chunk store open"
    );
    Ok(Arc::new(store))
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

/// BLAKE3 (hex) of everything a registration records: hostname, labels and the inventory
/// (its JSON). The leader compares it on every heartbeat and asks for a registration only
/// when it differs, so a restarted agent on unchanged hardware costs no Raft write.
pub fn registration_digest(
    hostname: &str,
    labels: &std::collections::BTreeMap<String, String>,
    inventory_json: &[u8],
) -> String {
    let mut h = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(hostname.as_bytes());
    for (k, v) in labels {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(inventory_json);
    h.finalize().to_hex().to_string()
}

/// This machine's node id, made once and kept in the data dir. It is published durably
/// (written to a temporary file, fsynced, renamed, and the directory fsynced), so a power
/// loss leaves either no id or the whole id, never an empty file that would make the
/// machine a new node.
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
            steward_core::node::validate_registration(&id, 0).map_err(|_| {
                AgentError::BadNodeId {
                    path: path.display().to_string(),
                    content: id.clone(),
                }
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("node-{:016x}", rand::random::<u64>());
            write_durably(data_dir, "node-id", format!("{id}\n").as_bytes()).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// This machine's node id under mutual TLS: the node its agent certificate names. A data
/// dir that already belongs to another node is refused (its chunks and allocations are
/// that node's); a new one records the certificate's node.
pub fn adopt_node_id(
    data_dir: &std::path::Path,
    tls: &steward_runtime::tls::Tls,
) -> Result<String, AgentError> {
    let me = tls.identity();
    let steward_core::identity::Principal::Agent(named) = me.principal else {
        return Err(AgentError::CertificateNode {
            dir: tls.dir().display().to_string(),
            message: format!("the certificate names {}, not an agent", me.principal),
        });
    };
    let io = |source| AgentError::DataDir {
        path: data_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    if !data_dir.join("node-id").exists() {
        write_durably(data_dir, "node-id", format!("{named}\n").as_bytes()).map_err(io)?;
    }
    let recorded = node_id(data_dir)?;
    if recorded != named {
        return Err(AgentError::CertificateNode {
            dir: tls.dir().display().to_string(),
            message: format!(
                "the certificate is for node {named}, but the data dir {} belongs to node {recorded}; \
                 issue a certificate for {recorded} (`steward tls cert create --agent {recorded}`) \
                 or use a fresh data dir",
                data_dir.display()
            ),
        });
    }
    Ok(named)
}

/// Publishes `name` in `dir` with `contents`, durably: a reader after a crash sees the old
/// state (no file) or the whole new file.
fn write_durably(dir: &std::path::Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Runs until `shutdown` resolves. `on_ready` is called once the API and metrics listeners
/// are bound and telemetry runs (systemd's READY=1).
pub async fn run(
    config: AgentConfig,
    probe: Box<dyn GpuProbe>,
    on_ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let id = match &config.tls {
        Some(tls) => adopt_node_id(&config.data_dir, tls)?,
        None => {
            steward_runtime::tls::warn_insecure("the agent");
            node_id(&config.data_dir)?
        }
    };
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
    let chunks = open_chunk_store(&config).await?;
    let stager = {
        use crate::chunks::service::{PEER_CALL_TIMEOUT, PEER_CONNECT_TIMEOUT};
        let mut options = steward_runtime::transport::ClientOptions::new(PEER_CONNECT_TIMEOUT)
            .call_timeout(PEER_CALL_TIMEOUT);
        if let Some(ip) = config.source_ip {
            options = options.source_ip(ip);
        }
        let peers = options
            .clone()
            .tls(config.tls.clone(), steward_runtime::tls::ServerKind::Agent);
        let controllers = options.tls(
            config.tls.clone(),
            steward_runtime::tls::ServerKind::Controller,
        );
        Arc::new(crate::jobs::inputs::Stager::new(
            chunks.clone(),
            Arc::new(steward_runtime::transport::ChannelPool::new(peers)),
            Arc::new(steward_runtime::transport::ChannelPool::new(controllers)),
            id.clone(),
        ))
    };
    let runner = crate::jobs::Runner::start(
        crate::jobs::RunnerConfig {
            node_id: id.clone(),
            data_dir: config.data_dir.clone(),
            shim_exe: config.shim_exe.clone(),
            fence_after: config.fence_after,
            source_ip: config.source_ip,
            tls: config.tls.clone(),
            isolation: crate::jobs::Isolation::choose(
                config.isolation,
                Path::new("/sys/fs/cgroup"),
            )
            .map_err(AgentError::Isolation)?,
        },
        Some(stager),
        stop.clone(),
    )
    .map_err(|source| AgentError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let _ = stats.isolation.set(runner.isolation().name());
    let scrubber = crate::chunks::scrub::Scrubber::new(chunks.clone(), config.scrub);
    let scrub_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    scrubber
        .spawn(scrub_stop.clone())
        .map_err(AgentError::Scrub)?;
    let _scrub_guard = StopFlag(scrub_stop);
    let security = match &config.tls {
        Some(tls) => steward_runtime::transport::ServerSecurity::mutual_tls(tls.clone(), None),
        None => steward_runtime::transport::ServerSecurity::insecure(),
    };
    let _ = stats.security.set(security.clone());
    let reporter = crate::chunks::report::Reporter::new(chunks.clone(), id.clone(), config.gc);
    tokio::spawn(crate::api::serve(
        api,
        telemetry.clone(),
        runner.allocs_dir(),
        crate::chunks::service::ChunkApi::for_node(
            id.clone(),
            chunks.clone(),
            scrubber,
            security.tls(),
        ),
        security,
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
            config.tls.clone().filter(|_| config.metrics_tls),
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
    let labels: std::collections::BTreeMap<String, String> = config.labels.clone();
    let mut register = RegisterNodeRequest {
        node_id: id.clone(),
        inventory_digest: registration_digest(&hostname, &labels, &inventory_json),
        hostname,
        labels: labels.clone().into_iter().collect(),
        inventory_json: Vec::new(),
        inventory: Some((&inventory).into()),
    };
    let mut inventory_json = inventory_json;
    tokio::pin!(shutdown);
    let mut leader: Option<Leader> = None;
    // Heartbeat first: the leader answers `register_again` when it does not hold this
    // registration (new node, changed hardware or labels).
    let mut registration = Registration::unknown();
    let mut backoff = Duration::from_millis(100);
    let mut seq = 0u64;
    let mut last_recheck = Instant::now();
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
                    Ok((inventory, json)) if json != inventory_json => {
                        tracing::info!(node = %id, "inventory changed; registering again");
                        register.inventory_digest =
                            registration_digest(&register.hostname, &labels, &json);
                        register.inventory = Some((&inventory).into());
                        inventory_json = json;
                        registration.needed = true;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the inventory again failed"),
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        if leader.is_none() || last_recheck.elapsed() >= LEADER_RECHECK {
            last_recheck = Instant::now();
            match find_leader(&config.controllers, config.source_ip, config.tls.as_ref()).await {
                Some(found) => {
                    let moved = leader.as_ref().is_none_or(|l| l.addr != found.addr);
                    if moved {
                        tracing::info!(node = %id, leader = %found.addr, term = found.term, "following the leader");
                        stats.leader_changes.fetch_add(1, Ordering::Relaxed);
                        runner.set_leader(Some((found.addr.clone(), found.client.clone())));
                        leader = Some(found);
                    }
                }
                None if leader.is_none() => {
                    stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("no leader found; backing off {backoff:?}");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                None => {}
            }
        }
        let Some(l) = leader.as_mut() else { continue };
        if registration.due(Instant::now()) {
            match l.client.register_node(register.clone()).await {
                Ok(r) => {
                    registration.succeeded();
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %id, revision = r.into_inner().revision, "registered");
                }
                Err(status) if link::is_refusal(status.code()) => {
                    stats.registration_errors.fetch_add(1, Ordering::Relaxed);
                    let pause = registration.refused(Instant::now(), status.message().to_string());
                    tracing::error!(
                        node = %id,
                        code = ?status.code(),
                        error = %status.message(),
                        retry_in = ?pause,
                        "the leader refused this machine's registration; heartbeats go on"
                    );
                }
                Err(status) => {
                    tracing::debug!(%status, "registration failed; looking for the leader again");
                    leader = None;
                    runner.set_leader(None);
                    continue;
                }
            }
        }
        seq += 1;
        let hb = HeartbeatRequest {
            node_id: id.clone(),
            seq,
            inventory_digest: register.inventory_digest.clone(),
            telemetry: Some({
                let mut t = telemetry.latest().to_proto();
                t.isolation = runner.isolation().name().to_string();
                // statvfs: cheap enough for every heartbeat.
                t.chunk_space_low = chunks.space_low().ok().map(|low| low.is_some());
                let stored = chunks.stats();
                t.chunks = Some(stored.chunks);
                t.chunk_bytes = Some(stored.bytes);
                t
            }),
        };
        let sent_at = crate::jobs::monotonic_ns();
        match l.client.heartbeat(hb).await {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                let reply = reply.into_inner();
                runner.leader_down_after(Duration::from_millis(reply.down_after_ms));
                runner.heartbeat_acknowledged(sent_at);
                stats.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
                if reply.register_again {
                    registration.needed = true;
                }
                reporter
                    .after_heartbeat(&l.client, reply.chunk_report_needed)
                    .await;
            }
            Err(status) => {
                stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%status, "heartbeat failed; looking for the leader again");
                leader = None;
                runner.set_leader(None);
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
        assert!(
            !dir.path().join("node-id.tmp").exists(),
            "published by rename"
        );
        std::fs::write(dir.path().join("node-id"), "Not Valid!").expect("write");
        let err = node_id(dir.path()).unwrap_err().to_string();
        assert!(err.contains("steward node list"), "{err}");
    }

    /// A power loss can leave a torn temporary file, never an empty id: the torn file is
    /// replaced, and an empty id file (from a filesystem that lost the data) is an error
    /// that keeps the old identity recoverable instead of minting a new node.
    #[test]
    fn a_crash_never_makes_a_new_node_silently() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("node-id.tmp"), "node-00").expect("torn write");
        let id = node_id(dir.path()).expect("id");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node-id")).expect("read"),
            format!("{id}\n")
        );
        std::fs::write(dir.path().join("node-id"), "").expect("empty");
        assert!(matches!(
            node_id(dir.path()),
            Err(AgentError::BadNodeId { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("node-id")).expect("read"),
            "",
            "the damaged file is left for the operator"
        );
    }
}
