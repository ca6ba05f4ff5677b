//! Agent configuration: a TOML file (unknown keys refused), under `STEWARD_*` variables and
//! flags (the CLI layers them), validated with messages that name the key. The annotated
//! example is `deploy/config/agent.toml`; a test parses it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default port of the agent API.
pub const DEFAULT_API_PORT: u16 = 7800;

/// The file's shape; every key optional here, [`AgentConfigFile::resolve`] checks.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// Node id and (later) chunks live here.
    pub data_dir: Option<PathBuf>,
    /// Controllers' API addresses; any one finds the leader.
    pub controllers: Option<Vec<String>>,
    /// Listen address of the agent API.
    pub api_addr: Option<SocketAddr>,
    /// Address others use to reach the agent API (default: the listen address, with this
    /// machine's hostname when it listens on all interfaces).
    pub advertise_addr: Option<String>,
    /// Prometheus `/metrics` listen address (none: no endpoint).
    pub metrics_addr: Option<SocketAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub telemetry_interval: Option<Duration>,
    /// "MODEL:COUNT": simulated GPUs instead of NVML.
    pub simulate_gpus: Option<String>,
    /// Stop `on_disconnect = "stop"` work after this long without a heartbeat acknowledged
    /// by a leader (default: half of `controller_down_after`).
    #[serde(default, with = "humantime_serde")]
    pub fence_after: Option<Duration>,
    /// The local address the agent's connections to the controllers come from (default:
    /// the system's choice), e.g. a multi-homed machine's management network.
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    /// The controllers' `liveness.down_after` (default 5 s): fencing must end before it.
    #[serde(default, with = "humantime_serde")]
    pub controller_down_after: Option<Duration>,
    /// How allocations are isolated: `auto` (default: cgroup v2, then v1, then a process
    /// group), `cgroup-v2`, `cgroup-v1` or `process-group`.
    pub isolation: Option<crate::jobs::IsolationMode>,
    /// Free space the chunk store's disk keeps: below it, new chunks are refused with
    /// RESOURCE_EXHAUSTED and the controllers place none here (default 1 GiB), e.g.
    /// "50 GiB".
    pub chunk_free_floor: Option<bytesize::ByteSize>,
    /// Time between two scrub passes over every chunk (default 7 days).
    #[serde(default, with = "humantime_serde")]
    pub scrub_interval: Option<Duration>,
    /// Read rate of a scrub pass, per second (default "50 MiB").
    pub scrub_rate: Option<bytesize::ByteSize>,
    /// Garbage collection: only chunks written at least this long ago may be collected
    /// (default 1h), in passes this far apart (default 10m).
    #[serde(default, with = "humantime_serde")]
    pub chunk_gc_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub chunk_gc_interval: Option<Duration>,
    /// Mutual TLS: a dir holding `ca.pem`, `cert.pem` and `key.pem`, an agent certificate
    /// (`steward tls cert create --agent NODE`) whose node becomes this agent's node id.
    pub tls_dir: Option<PathBuf>,
    /// Plaintext, no TLS and no access checks (warned at every start). Exactly one of
    /// `tls_dir` and `insecure` is required.
    pub insecure: Option<bool>,
    /// Serve `/metrics` over TLS too, to clients with a certificate of this cluster.
    pub metrics_tls: Option<bool>,
}

/// Default free-space floor of the chunk store's disk.
pub const DEFAULT_CHUNK_FREE_FLOOR_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("`{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The agent's settings, checked.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub controllers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub heartbeat_interval: Duration,
    pub telemetry_interval: Duration,
    pub api_addr: SocketAddr,
    pub advertise_addr: String,
    pub metrics_addr: Option<SocketAddr>,
    pub fence_after: Duration,
    /// The `steward` binary that runs allocation shims (`steward agent-shim`).
    pub shim_exe: PathBuf,
    /// Where connections to the controllers come from.
    pub source_ip: Option<std::net::IpAddr>,
    /// How allocations are isolated (checked against the host when the agent starts).
    pub isolation: crate::jobs::IsolationMode,
    /// Below this many free bytes on the chunk disk, new chunks are refused.
    pub chunk_free_floor_bytes: u64,
    pub scrub: crate::chunks::scrub::ScrubConfig,
    pub gc: crate::chunks::report::GcConfig,
    /// Mutual TLS on every connection (`None`: plaintext, `--insecure`); its certificate
    /// names this agent's node.
    pub tls: Option<steward_runtime::tls::Tls>,
    /// `/metrics` over TLS as well.
    pub metrics_tls: bool,
}

/// The controllers' default `liveness.down_after`.
pub const DEFAULT_CONTROLLER_DOWN_AFTER: Duration = Duration::from_secs(5);

/// Shortest and longest heartbeat period.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
pub use steward_core::node::{MAX_LABELS, MAX_LABEL_BYTES};

fn scrub_config(
    interval: Option<Duration>,
    rate: Option<bytesize::ByteSize>,
) -> Result<crate::chunks::scrub::ScrubConfig, ConfigError> {
    let d = crate::chunks::scrub::ScrubConfig::default();
    let interval = interval.unwrap_or(d.interval);
    if interval < Duration::from_secs(60) {
        return Err(invalid(
            "scrub_interval",
            format!("must be at least 1m, got {interval:?}"),
        ));
    }
    let bytes_per_sec = rate.map_or(d.bytes_per_sec, |r| r.as_u64());
    if bytes_per_sec < 1 << 20 {
        return Err(invalid(
            "scrub_rate",
            format!("must be at least 1 MiB (per second), got {bytes_per_sec} bytes"),
        ));
    }
    Ok(crate::chunks::scrub::ScrubConfig {
        interval,
        bytes_per_sec,
    })
}

fn gc_config(
    grace: Option<Duration>,
    interval: Option<Duration>,
) -> Result<crate::chunks::report::GcConfig, ConfigError> {
    let d = crate::chunks::report::GcConfig::default();
    let c = crate::chunks::report::GcConfig {
        grace: grace.unwrap_or(d.grace),
        interval: interval.unwrap_or(d.interval),
    };
    // A put must finish within the grace, or its uncommitted chunks could be collected
    // (the put then fails and is retried; nothing committed is at risk).
    if c.grace < Duration::from_secs(1) {
        return Err(invalid(
            "chunk_gc_grace",
            format!("must be at least 1s, got {:?}", c.grace),
        ));
    }
    if c.interval < Duration::from_secs(1) {
        return Err(invalid(
            "chunk_gc_interval",
            format!("must be at least 1s, got {:?}", c.interval),
        ));
    }
    Ok(c)
}

impl AgentConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks the settings and fills defaults. `hostname` is used in the advertised address
    /// when the API listens on all interfaces.
    pub fn resolve(self, hostname: &str) -> Result<AgentConfig, ConfigError> {
        let data_dir = self.data_dir.ok_or_else(|| {
            invalid(
                "data_dir",
                "is required (flag --data-dir, env STEWARD_DATA_DIR)",
            )
        })?;
        let controllers = self.controllers.unwrap_or_default();
        if controllers.is_empty() {
            return Err(invalid(
                "controllers",
                "is required: the controllers' API addresses (flag --controllers, env STEWARD_CONTROLLERS)",
            ));
        }
        for c in &controllers {
            if c.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(
                    "controllers",
                    format!("entry `{c}` is not HOST:PORT"),
                ));
            }
        }
        let heartbeat_interval = self.heartbeat_interval.unwrap_or(Duration::from_secs(1));
        if !(MIN_HEARTBEAT..=MAX_HEARTBEAT).contains(&heartbeat_interval) {
            return Err(invalid(
                "heartbeat_interval",
                format!("must be between {MIN_HEARTBEAT:?} and {MAX_HEARTBEAT:?}, got {heartbeat_interval:?}"),
            ));
        }
        let telemetry_interval = self.telemetry_interval.unwrap_or(heartbeat_interval);
        if !(crate::telemetry::MIN_INTERVAL..=crate::telemetry::MAX_INTERVAL)
            .contains(&telemetry_interval)
        {
            return Err(invalid(
                "telemetry_interval",
                format!(
                    "must be between {:?} and {:?}, got {telemetry_interval:?}",
                    crate::telemetry::MIN_INTERVAL,
                    crate::telemetry::MAX_INTERVAL
                ),
            ));
        }
        steward_core::node::validate_labels(&self.labels)
            .map_err(|e| invalid("labels", e.to_string()))?;
        let api_addr = self
            .api_addr
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT)));
        let advertise_addr = match self.advertise_addr {
            Some(a) => a,
            None if api_addr.ip().is_unspecified() => format!("{hostname}:{}", api_addr.port()),
            None => api_addr.to_string(),
        };
        let down_after = self
            .controller_down_after
            .unwrap_or(DEFAULT_CONTROLLER_DOWN_AFTER);
        let fence_after = self.fence_after.unwrap_or(down_after / 2);
        // The timing argument (ARCHITECTURE.md, "Failover and fencing"): the fence clock
        // starts when the last acknowledged heartbeat was *sent*, which is before the
        // leader last heard from this node; the work is gone a kill grace after the fence;
        // all of it must end before the leader declares the node down, with 10 % of
        // down_after left for the two clocks' rate difference.
        let worst = fence_after + crate::jobs::FENCE_KILL_GRACE;
        if fence_after.is_zero() || worst.as_secs_f64() > down_after.as_secs_f64() * 0.9 {
            return Err(invalid(
                "fence_after",
                format!(
                    "{fence_after:?} + the kill grace {:?} must stay within 90 % of the controllers' down_after ({down_after:?}), or a cut-off node's work could still run when it is placed elsewhere",
                    crate::jobs::FENCE_KILL_GRACE
                ),
            ));
        }
        let shim_exe = std::env::current_exe()
            .map_err(|e| invalid("shim", format!("cannot find the steward binary: {e}")))?;
        let tls =
            steward_runtime::tls::choose(self.tls_dir.as_deref(), self.insecure == Some(true))
                .map_err(|e| invalid("tls_dir", e.to_string()))?;
        if let Some(tls) = &tls {
            let me = tls.identity();
            if !matches!(me.principal, steward_core::identity::Principal::Agent(_)) {
                return Err(invalid(
                    "tls_dir",
                    format!(
                        "{}: the certificate names {}, not an agent (`steward tls cert create --agent NODE`)",
                        tls.dir().display(),
                        me.principal
                    ),
                ));
            }
        }
        let metrics_tls = self.metrics_tls == Some(true);
        if metrics_tls && tls.is_none() {
            return Err(invalid("metrics_tls", "needs tls_dir"));
        }
        Ok(AgentConfig {
            tls,
            metrics_tls,
            fence_after,
            shim_exe,
            source_ip: self.source_ip,
            isolation: self.isolation.unwrap_or_default(),
            chunk_free_floor_bytes: self
                .chunk_free_floor
                .map_or(DEFAULT_CHUNK_FREE_FLOOR_BYTES, |b| b.as_u64()),
            scrub: scrub_config(self.scrub_interval, self.scrub_rate)?,
            gc: gc_config(self.chunk_gc_grace, self.chunk_gc_interval)?,
            data_dir,
            controllers,
            labels: self.labels,
            heartbeat_interval,
            telemetry_interval,
            api_addr,
            advertise_addr,
            metrics_addr: self.metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_the_key() {
        let base = AgentConfigFile {
            data_dir: Some("/var/lib/steward-agent".into()),
            controllers: Some(vec!["10.0.0.1:7700".into()]),
            insecure: Some(true),
            ..Default::default()
        };
        let c = base.clone().resolve("gpu-7").expect("valid");
        let e = AgentConfigFile {
            insecure: None,
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().contains("--insecure"), "{e}");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.advertise_addr, "gpu-7:7800");
        let e = AgentConfigFile {
            controllers: None,
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().contains("`controllers` is required"), "{e}");
        let e = AgentConfigFile {
            controllers: Some(vec!["nohost".into()]),
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().contains("not HOST:PORT"), "{e}");
        let e = AgentConfigFile {
            heartbeat_interval: Some(Duration::from_millis(1)),
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().starts_with("`heartbeat_interval`"), "{e}");
        let mut labels = BTreeMap::new();
        labels.insert("bad key".into(), "v".into());
        let e = AgentConfigFile {
            labels,
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().starts_with("`labels`"), "{e}");
        assert_eq!(c.chunk_free_floor_bytes, DEFAULT_CHUNK_FREE_FLOOR_BYTES);
        assert_eq!(c.gc.grace, Duration::from_secs(3600));
        let e = AgentConfigFile {
            chunk_gc_grace: Some(Duration::from_millis(10)),
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().starts_with("`chunk_gc_grace`"), "{e}");
        let e = AgentConfigFile {
            scrub_rate: Some(bytesize::ByteSize(1000)),
            ..base.clone()
        }
        .resolve("h")
        .unwrap_err();
        assert!(e.to_string().starts_with("`scrub_rate`"), "{e}");
        let f: AgentConfigFile = toml::from_str("chunk_free_floor = \"50 GiB\"").expect("size");
        assert_eq!(f.chunk_free_floor.map(|b| b.as_u64()), Some(50 << 30));
        assert!(toml::from_str::<AgentConfigFile>("chunk_free_floor = \"lots\"").is_err());
        let e = toml::from_str::<AgentConfigFile>("data_dirr = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
