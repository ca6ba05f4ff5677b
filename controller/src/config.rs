//! Controller configuration: typed, layered (file, then `STEWARD_*` env, then flags; the
//! CLI does the layering) and validated with messages that name the key.
//!
//! The annotated example is `deploy/config/controller.toml`; a test parses it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::raft::typ::NodeId;

/// The config file's shape. Every key is optional here; [`ControllerConfigFile::resolve`]
/// checks that the required ones are set somewhere.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfigFile {
    pub id: Option<NodeId>,
    pub data_dir: Option<PathBuf>,
    pub raft_addr: Option<SocketAddr>,
    pub api_addr: Option<SocketAddr>,
    /// The Raft address other controllers reach this one at (default: `raft_addr`; needed
    /// when `raft_addr` listens on every interface).
    pub advertise_raft_addr: Option<String>,
    /// The API address agents, operators and other controllers reach this one at
    /// (default: `api_addr`; needed when `api_addr` listens on every interface).
    pub advertise_api_addr: Option<String>,
    /// Prometheus `/metrics` listen address (none: no metrics endpoint).
    pub metrics_addr: Option<SocketAddr>,
    /// `1=RAFT_ADDR[/API_ADDR],2=...`: the founding members' advertised addresses.
    pub initial_cluster: Option<String>,
    pub cluster_name: Option<String>,
    /// Mutual TLS: a dir holding `ca.pem`, `cert.pem` and `key.pem` (a controller
    /// certificate for this controller's id; `steward tls cert create --controller ID`).
    pub tls_dir: Option<PathBuf>,
    /// Plaintext, no TLS and no access checks (warned at every start). Exactly one of
    /// `tls_dir` and `insecure` is required.
    pub insecure: Option<bool>,
    /// Serve `/metrics` over TLS too, to clients with a certificate of this cluster (a
    /// Prometheus with `steward tls cert create --client prometheus`).
    pub metrics_tls: Option<bool>,
    #[serde(default)]
    pub raft: RaftTuning,
    #[serde(default)]
    pub liveness: LivenessTuning,
    #[serde(default)]
    pub jobs: JobsTuning,
    #[serde(default)]
    pub storage: StorageTuning,
}

/// Storage repair (the leader's `storage-repair` loop).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageTuning {
    /// How long a down node keeps its place before its chunks are copied elsewhere; a
    /// reboot within it causes no copies. Chunks left with one live replica are copied at
    /// once. 0 repairs at once.
    #[serde(with = "humantime_serde")]
    pub repair_delay: Duration,
    /// Cluster-wide repair and rebalancing budget, per second, e.g. "200 MiB".
    pub repair_bandwidth: bytesize::ByteSize,
    /// Copy calls in flight per target node (each up to 64 chunks).
    pub repair_copies_per_node: u32,
}

impl Default for StorageTuning {
    fn default() -> Self {
        let d = crate::control::repair::RepairTuning::default();
        StorageTuning {
            repair_delay: d.repair_delay,
            repair_bandwidth: bytesize::ByteSize(d.bandwidth_bytes_per_sec),
            repair_copies_per_node: d.copies_per_node as u32,
        }
    }
}

impl StorageTuning {
    pub fn repair_tuning(&self) -> crate::control::repair::RepairTuning {
        crate::control::repair::RepairTuning {
            repair_delay: self.repair_delay,
            bandwidth_bytes_per_sec: self.repair_bandwidth.as_u64(),
            copies_per_node: self.repair_copies_per_node as usize,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.repair_bandwidth.as_u64() < 1 << 20 {
            return Err(invalid(
                "storage.repair_bandwidth",
                format!(
                    "must be at least 1 MiB (per second), got {}",
                    self.repair_bandwidth
                ),
            ));
        }
        if !(1..=64).contains(&self.repair_copies_per_node) {
            return Err(invalid(
                "storage.repair_copies_per_node",
                format!(
                    "must be between 1 and 64, got {}",
                    self.repair_copies_per_node
                ),
            ));
        }
        Ok(())
    }
}

/// The scheduler's settings (the leader's `scheduler` loop).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsTuning {
    /// Finished jobs (and their allocations) are forgotten this long after they ended.
    #[serde(with = "humantime_serde")]
    pub gc_after: Duration,
    /// At most this many finished jobs are kept, oldest forgotten first.
    pub history: u32,
    /// A job preempts only preemptible tasks at least this much lower in priority.
    pub preemption_gap: u32,
}

impl Default for JobsTuning {
    fn default() -> Self {
        JobsTuning {
            gc_after: Duration::from_secs(24 * 3600),
            history: 5_000,
            preemption_gap: steward_core::jobs::round::DEFAULT_PREEMPTION_GAP,
        }
    }
}

/// Failure detection of agents (the leader's, from heartbeats).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessTuning {
    /// A node silent this long is `suspect`.
    #[serde(with = "humantime_serde")]
    pub suspect_after: Duration,
    /// A node silent this long is `down`.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
}

impl Default for LivenessTuning {
    fn default() -> Self {
        let d = steward_core::liveness::LivenessConfig::default();
        LivenessTuning {
            suspect_after: Duration::from_millis(d.suspect_after_ms),
            down_after: Duration::from_millis(d.down_after_ms),
        }
    }
}

impl LivenessTuning {
    fn resolve(&self) -> Result<steward_core::liveness::LivenessConfig, ConfigError> {
        if self.suspect_after.is_zero() || self.down_after <= self.suspect_after {
            return Err(invalid(
                "liveness.down_after",
                format!(
                    "({:?}) must be above liveness.suspect_after ({:?}), which must be above 0",
                    self.down_after, self.suspect_after
                ),
            ));
        }
        Ok(steward_core::liveness::LivenessConfig {
            suspect_after_ms: self.suspect_after.as_millis() as u64,
            down_after_ms: self.down_after.as_millis() as u64,
        })
    }
}

/// Raft timing, batching and snapshot settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat period.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing for a random time in [min, max] starts an election.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind the snapshot, so a briefly lagging follower catches up
    /// from the log instead of a snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Most entries in one AppendEntries message.
    pub max_entries_per_append: u64,
    /// Snapshot chunk size when streaming to a follower, in bytes.
    pub snapshot_chunk_bytes: u64,
    /// Deadline of one snapshot-chunk RPC.
    #[serde(with = "humantime_serde")]
    pub install_snapshot_timeout: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(200),
            election_timeout_max: Duration::from_millis(400),
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            max_entries_per_append: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            install_snapshot_timeout: Duration::from_secs(5),
        }
    }
}

/// A founding member as `initial_cluster` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundingMember {
    pub raft_addr: String,
    /// Its API address, when given (`ID=RAFT/API`): the founding members then know each
    /// other's API from the first entry, instead of after registering.
    pub api_addr: Option<String>,
}

/// A complete, validated controller configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub raft_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where other controllers reach this one's Raft service.
    pub advertise_raft_addr: String,
    /// Where agents, operators and other controllers reach this one's API.
    pub advertise_api_addr: String,
    /// Founding members' advertised addresses; empty when joining an existing cluster.
    pub initial_cluster: BTreeMap<NodeId, FoundingMember>,
    pub cluster_name: String,
    /// Mutual TLS on every connection (`None`: plaintext, `--insecure`).
    pub tls: Option<steward_runtime::tls::Tls>,
    /// `/metrics` over TLS as well.
    pub metrics_tls: bool,
    pub raft: RaftTuning,
    pub liveness: steward_core::liveness::LivenessConfig,
    pub jobs: JobsTuning,
    pub storage: StorageTuning,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("`{key}` is required: set it in the config file, with --{flag}, or with {env}")]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ControllerConfigFile {
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks that required keys are present and values are coherent.
    pub fn resolve(self) -> Result<ControllerConfig, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing {
            key: "id",
            flag: "id",
            env: "STEWARD_ID",
        })?;
        if id == 0 {
            return Err(invalid("id", "must be at least 1"));
        }
        let data_dir = self.data_dir.ok_or(ConfigError::Missing {
            key: "data_dir",
            flag: "data-dir",
            env: "STEWARD_DATA_DIR",
        })?;
        let raft_addr = self.raft_addr.ok_or(ConfigError::Missing {
            key: "raft_addr",
            flag: "raft-addr",
            env: "STEWARD_RAFT_ADDR",
        })?;
        let api_addr = self.api_addr.ok_or(ConfigError::Missing {
            key: "api_addr",
            flag: "api-addr",
            env: "STEWARD_API_ADDR",
        })?;
        if raft_addr == api_addr {
            return Err(invalid(
                "api_addr",
                format!("must differ from raft_addr ({raft_addr})"),
            ));
        }
        let advertise = |key: &'static str, given: Option<String>, listen: SocketAddr| {
            match given {
                Some(a) => {
                    check_host_port(key, &a)?;
                    Ok(a)
                }
                None if listen.ip().is_unspecified() => Err(invalid(
                    key,
                    format!(
                        "is required: {listen} listens on every interface, so say which address others reach this controller at"
                    ),
                )),
                None => Ok(listen.to_string()),
            }
        };
        let advertise_raft_addr =
            advertise("advertise_raft_addr", self.advertise_raft_addr, raft_addr)?;
        let advertise_api_addr =
            advertise("advertise_api_addr", self.advertise_api_addr, api_addr)?;
        let initial_cluster = match self.initial_cluster.as_deref() {
            None | Some("") => BTreeMap::new(),
            Some(s) => parse_initial_cluster(s)?,
        };
        if !initial_cluster.is_empty() {
            match initial_cluster.get(&id) {
                None => {
                    return Err(invalid(
                        "initial_cluster",
                        format!("does not list this controller's id {id}"),
                    ))
                }
                Some(m) if m.raft_addr != advertise_raft_addr => {
                    return Err(invalid(
                        "initial_cluster",
                        format!(
                            "lists {id}={} but this controller's raft address is {advertise_raft_addr}",
                            m.raft_addr
                        ),
                    ))
                }
                Some(m) if m.api_addr.as_ref().is_some_and(|a| *a != advertise_api_addr) => {
                    return Err(invalid(
                        "initial_cluster",
                        format!(
                            "lists {id}'s API at {} but this controller's API address is {advertise_api_addr}",
                            m.api_addr.as_deref().unwrap_or_default()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let tls =
            steward_runtime::tls::choose(self.tls_dir.as_deref(), self.insecure == Some(true))
                .map_err(|e| invalid("tls_dir", e.to_string()))?;
        let cluster_name = match &tls {
            None => self.cluster_name.unwrap_or_else(|| "steward".to_string()),
            Some(tls) => {
                let me = tls.identity();
                if me.principal != steward_core::identity::Principal::Controller(id) {
                    return Err(invalid(
                        "tls_dir",
                        format!(
                            "{}: the certificate names {}, not controller {id}",
                            tls.dir().display(),
                            me.principal
                        ),
                    ));
                }
                match self.cluster_name {
                    Some(name) if name != me.cluster => {
                        return Err(invalid(
                            "cluster_name",
                            format!(
                                "is `{name}` but the certificate in {} is for cluster `{}`",
                                tls.dir().display(),
                                me.cluster
                            ),
                        ))
                    }
                    _ => me.cluster,
                }
            }
        };
        let metrics_tls = self.metrics_tls == Some(true);
        if metrics_tls && tls.is_none() {
            return Err(invalid("metrics_tls", "needs tls_dir"));
        }
        self.raft.validate()?;
        let liveness = self.liveness.resolve()?;
        self.storage.validate()?;
        if self.jobs.gc_after.is_zero() {
            return Err(invalid(
                "jobs.gc_after",
                "must be above 0 (finished jobs would vanish before anyone sees them)",
            ));
        }
        Ok(ControllerConfig {
            metrics_addr: self.metrics_addr,
            liveness,
            jobs: self.jobs,
            storage: self.storage,
            id,
            data_dir,
            raft_addr,
            api_addr,
            advertise_raft_addr,
            advertise_api_addr,
            initial_cluster,
            cluster_name,
            tls,
            metrics_tls,
            raft: self.raft,
        })
    }
}

impl RaftTuning {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("raft.heartbeat_interval", "must be above 0"));
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(invalid(
                "raft.election_timeout_min",
                format!(
                    "({}ms) must be below raft.election_timeout_max ({}ms)",
                    ms(self.election_timeout_min),
                    ms(self.election_timeout_max)
                ),
            ));
        }
        if self.heartbeat_interval * 2 > self.election_timeout_min {
            return Err(invalid(
                "raft.heartbeat_interval",
                format!(
                    "({}ms) must be at most half of raft.election_timeout_min ({}ms)",
                    ms(self.heartbeat_interval),
                    ms(self.election_timeout_min)
                ),
            ));
        }
        if self.snapshot_after_entries == 0 {
            return Err(invalid("raft.snapshot_after_entries", "must be above 0"));
        }
        if self.max_entries_per_append == 0 {
            return Err(invalid("raft.max_entries_per_append", "must be above 0"));
        }
        if !(4096..=16 * 1024 * 1024).contains(&self.snapshot_chunk_bytes) {
            return Err(invalid(
                "raft.snapshot_chunk_bytes",
                "must be between 4096 and 16777216 (16 MiB)",
            ));
        }
        Ok(())
    }

    /// The openraft configuration these settings stand for.
    /// How long after the last acknowledgement by a quorum this controller still acts as
    /// the leader towards agents. Timing argument: a follower campaigns only after
    /// `election_timeout_min` without hearing from the leader, and the leader's view of its
    /// quorum acknowledgements (openraft's metrics) is refreshed every tick (1.5 heartbeat
    /// intervals); so while the last quorum ack is younger than `election_timeout_min` minus
    /// one tick, no other leader can have been elected. `validate` keeps this positive
    /// (`heartbeat_interval <= election_timeout_min / 2`).
    pub fn leader_lease(&self) -> Duration {
        self.election_timeout_min
            .saturating_sub(self.heartbeat_interval * 3 / 2)
    }

    pub fn to_openraft(&self, cluster_name: &str) -> Result<openraft::Config, ConfigError> {
        let config = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            install_snapshot_timeout: self.install_snapshot_timeout.as_millis() as u64,
            max_payload_entries: self.max_entries_per_append,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| invalid("raft", e.to_string()))
    }
}

/// Checks that `addr` is HOST:PORT (a name or an address).
fn check_host_port(key: &'static str, addr: &str) -> Result<(), ConfigError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(key, format!("`{addr}` is not HOST:PORT"))),
    }
}

/// Parses `1=RAFT_ADDR[/API_ADDR],2=...`.
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, FoundingMember>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part.split_once('=').ok_or_else(|| {
            invalid(
                "initial_cluster",
                format!("`{part}` is not ID=RAFT_ADDR or ID=RAFT_ADDR/API_ADDR"),
            )
        })?;
        let id: NodeId = id.trim().parse().map_err(|_| {
            invalid(
                "initial_cluster",
                format!("`{id}` in `{part}` is not a controller id"),
            )
        })?;
        let (raft_addr, api_addr) = match addrs.trim().split_once('/') {
            Some((raft, api)) => (raft.trim(), Some(api.trim())),
            None => (addrs.trim(), None),
        };
        check_host_port("initial_cluster", raft_addr)?;
        if let Some(api) = api_addr {
            check_host_port("initial_cluster", api)?;
        }
        let member = FoundingMember {
            raft_addr: raft_addr.to_string(),
            api_addr: api_addr.map(str::to_string),
        };
        if out.insert(id, member).is_some() {
            return Err(invalid(
                "initial_cluster",
                format!("controller {id} is listed twice"),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ControllerConfigFile {
        ControllerConfigFile {
            id: Some(1),
            data_dir: Some("/tmp/x".into()),
            raft_addr: Some("127.0.0.1:7710".parse().expect("addr")),
            api_addr: Some("127.0.0.1:7700".parse().expect("addr")),
            initial_cluster: Some("1=127.0.0.1:7710,2=127.0.0.1:7711".into()),
            insecure: Some(true),
            ..Default::default()
        }
    }

    #[test]
    fn resolves_and_names_bad_keys() {
        let cfg = base().resolve().expect("valid");
        assert_eq!(cfg.initial_cluster.len(), 2);
        let err = ControllerConfigFile { id: None, ..base() }
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("STEWARD_ID"), "{err}");
        let mut bad = base();
        bad.raft.election_timeout_min = Duration::from_secs(2);
        let err = bad.resolve().unwrap_err().to_string();
        assert!(err.contains("raft.election_timeout_min"), "{err}");
        let err = ControllerConfigFile {
            initial_cluster: Some("2=127.0.0.1:7711".into()),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("does not list this controller's id 1"),
            "{err}"
        );
        assert!(parse_initial_cluster("1=a:1,1=b:2").is_err());
        assert!(parse_initial_cluster("x=a:1").is_err());
        assert!(parse_initial_cluster("1=nohost").is_err());
    }

    #[test]
    fn tls_is_required_and_must_name_this_controller() {
        use steward_core::identity::{Identity, Principal};
        use steward_runtime::tls::issue::{create_ca, create_cert, write_cert};
        let neither = ControllerConfigFile {
            insecure: None,
            ..base()
        };
        let err = neither.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--tls-dir") && err.contains("--insecure"),
            "{err}"
        );
        let root = tempfile::tempdir().expect("tempdir");
        let ca = create_ca("prod", 30).expect("ca");
        let dir_for = |name: &str, p: Principal| {
            let dir = root.path().join(name);
            let id = Identity::new("prod", p).expect("id");
            write_cert(&dir, &create_cert(&ca, &id, 30, 0).expect("cert"), true).expect("write");
            dir
        };
        let mine = dir_for("c1", Principal::Controller(1));
        let cfg = ControllerConfigFile {
            insecure: None,
            tls_dir: Some(mine.clone()),
            ..base()
        }
        .resolve()
        .expect("a certificate for controller 1");
        assert_eq!(
            cfg.cluster_name, "prod",
            "the cluster comes from the certificate"
        );
        let both = ControllerConfigFile {
            tls_dir: Some(mine.clone()),
            ..base()
        };
        assert!(both.resolve().unwrap_err().to_string().contains("exclude"));
        let other = ControllerConfigFile {
            insecure: None,
            tls_dir: Some(dir_for("c2", Principal::Controller(2))),
            ..base()
        };
        let err = other.resolve().unwrap_err().to_string();
        assert!(err.contains("not controller 1"), "{err}");
        let wrong_cluster = ControllerConfigFile {
            insecure: None,
            tls_dir: Some(mine),
            cluster_name: Some("staging".into()),
            ..base()
        };
        let err = wrong_cluster.resolve().unwrap_err().to_string();
        assert!(err.contains("cluster `prod`"), "{err}");
    }

    #[test]
    fn advertise_addresses_and_founding_api_addresses() {
        // Listening on every interface needs an advertised address.
        let wildcard = ControllerConfigFile {
            api_addr: Some("0.0.0.0:7700".parse().expect("addr")),
            ..base()
        };
        let err = wildcard.clone().resolve().unwrap_err().to_string();
        assert!(
            err.contains("advertise_api_addr") && err.contains("every interface"),
            "{err}"
        );
        let cfg = ControllerConfigFile {
            advertise_api_addr: Some("ctl-1.example:7700".into()),
            ..wildcard
        }
        .resolve()
        .expect("valid");
        assert_eq!(cfg.advertise_api_addr, "ctl-1.example:7700");
        assert_eq!(cfg.advertise_raft_addr, "127.0.0.1:7710");
        // The API part of initial_cluster.
        let m =
            parse_initial_cluster("1=10.0.0.1:7710/10.0.0.1:7700,2=10.0.0.2:7710").expect("parses");
        assert_eq!(m[&1].api_addr.as_deref(), Some("10.0.0.1:7700"));
        assert_eq!(m[&2].api_addr, None);
        let err = ControllerConfigFile {
            initial_cluster: Some("1=127.0.0.1:7710/127.0.0.1:9999".into()),
            ..base()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(err.contains("API"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ControllerConfigFile::parse("id = 1\nfavourite_colour = \"red\"\n").unwrap_err();
        assert!(err.to_string().contains("favourite_colour"), "{err}");
        let err = ControllerConfigFile::parse("[raft]\nheartbeat = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
        let ok =
            ControllerConfigFile::parse("[raft]\nheartbeat_interval = \"50ms\"\n").expect("parses");
        assert_eq!(ok.raft.heartbeat_interval, Duration::from_millis(50));
    }
}
