//! Prometheus `/metrics` of an agent, rendered from the latest telemetry snapshot (a scrape
//! never touches the hardware):
//!
//! - GPU series under dcgm-exporter's names and labels, so that NVIDIA's stock Grafana
//!   dashboard works. dcgm-exporter types a few of them (energy, ECC, PCIe replays) as
//!   counters although their names lack `_total`; Steward keeps the exact names and exposes
//!   them as gauges, since a counter would be renamed `..._total`. PromQL's `rate()` works
//!   on them either way. A field the GPU does not support is left out.
//! - Host series under node_exporter's names (`node_cpu_seconds_total`, `node_load1`,
//!   `node_memory_*`, `node_filesystem_*`, `node_disk_*`, `node_network_*`).
//! - Steward's own, `steward_agent_*`: GPU health as a state set, heartbeat counters.
//!
//! The format follows the scraper's `Accept` header: OpenMetrics for Prometheus, the
//! classic text format 0.0.4 otherwise (what `promtool check metrics` reads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::health::GpuHealthStatus;
use crate::telemetry::{GpuReading, Telemetry, TelemetrySnapshot};

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DcgmLabels {
    gpu: String,
    UUID: String,
    pci_bus_id: String,
    device: String,
    modelName: String,
    Hostname: String,
}

type F64Gauge = Gauge<f64, AtomicU64>;
type F64Counter = Counter<f64, AtomicU64>;
type Labels = Vec<(&'static str, String)>;

/// Counters of the agent's own work, shared with the daemon.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub heartbeats_sent: AtomicU64,
    pub heartbeat_failures: AtomicU64,
    pub registrations: AtomicU64,
    /// Registrations the leader refused for good (an inventory too large, a full state).
    pub registration_errors: AtomicU64,
    /// Times the agent moved to another controller as leader.
    pub leader_changes: AtomicU64,
    /// How allocations are isolated here (`Isolation::name`), once the runner started.
    pub isolation: std::sync::OnceLock<&'static str>,
    /// How the agent API admits callers (with the TLS dir), once it listens.
    pub security: std::sync::OnceLock<steward_runtime::transport::ServerSecurity>,
}

/// Every isolation an agent may report, for the `steward_agent_isolation` state set.
const ISOLATIONS: [&str; 3] = ["cgroup-v2", "cgroup-v1", "process-group"];

/// dcgm-exporter field name, help, and how to read it.
type Field = (&'static str, &'static str, fn(&GpuReading) -> Option<f64>);

const FIELDS: &[Field] = &[
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", |r| {
        r.sample.sm_util_pct.map(f64::from)
    }),
    (
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "Memory utilization (in %).",
        |r| r.sample.mem_util_pct.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        |r| r.sample.memory_used_mib.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB).",
        |r| {
            Some(
                r.info
                    .memory_total_mib?
                    .saturating_sub(r.sample.memory_used_mib?) as f64,
            )
        },
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", |r| {
        r.sample.temperature_c.map(f64::from)
    }),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", |r| {
        r.sample.power_w
    }),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ).",
        |r| r.sample.energy_mj.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_SM_CLOCK",
        "SM clock frequency (in MHz).",
        |r| r.sample.sm_clock_mhz.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_MEM_CLOCK",
        "Memory clock frequency (in MHz).",
        |r| r.sample.mem_clock_mhz.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "Current clock throttle reasons (bitmask of NVML's reasons).",
        |r| r.sample.throttle_mask.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_XID_ERRORS",
        "Value of the last XID error encountered (0: none since the agent started).",
        |r| {
            (!r.sample.lost || r.events.last_xid.is_some())
                .then(|| r.events.last_xid.unwrap_or(0) as f64)
        },
    ),
    (
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "Total number of single-bit volatile ECC errors.",
        |r| r.sample.ecc_sbe_volatile.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Total number of double-bit volatile ECC errors.",
        |r| r.sample.ecc_dbe_volatile.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "Total number of single-bit persistent ECC errors.",
        |r| r.sample.ecc_sbe_aggregate.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "Total number of double-bit persistent ECC errors.",
        |r| r.sample.ecc_dbe_aggregate.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "Total number of PCIe retries.",
        |r| r.sample.pcie_replay.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_PCIE_LINK_GEN",
        "PCIe current link generation.",
        |r| r.sample.pcie_link_gen.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_PCIE_LINK_WIDTH",
        "PCIe current link width.",
        |r| r.sample.pcie_link_width.map(f64::from),
    ),
];

fn gauge(reg: &mut Registry, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value {
        let g: F64Gauge = Gauge::default();
        g.set(v);
        reg.register(name, help, g);
    }
}

/// A labelled family from `(labels, value)` pairs, registered only when it has a series.
fn family<M>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    series: Vec<(Labels, f64)>,
    set: fn(&M, f64),
) where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    if series.is_empty() {
        return;
    }
    let f: Family<Labels, M> = Family::default();
    for (labels, v) in series {
        set(&f.get_or_create(&labels), v);
    }
    reg.register(name, help, f);
}

/// Counters from absolute readings (`name` without `_total`: the encoder adds it).
fn counters(reg: &mut Registry, name: &str, help: &str, series: Vec<(Labels, f64)>) {
    family::<F64Counter>(reg, name, help, series, |c, v| {
        c.inc_by(v.max(0.0));
    });
}

fn gauges(reg: &mut Registry, name: &str, help: &str, series: Vec<(Labels, f64)>) {
    family::<F64Gauge>(reg, name, help, series, |g, v| {
        g.set(v);
    });
}

/// The registry for one scrape.
pub fn registry(snapshot: &TelemetrySnapshot, hostname: &str, stats: &AgentStats) -> Registry {
    let mut reg = Registry::default();
    for (name, help, read) in FIELDS {
        let f: Family<DcgmLabels, F64Gauge> = Family::default();
        let mut any = false;
        for r in &snapshot.gpus {
            if let Some(v) = read(r) {
                any = true;
                f.get_or_create(&DcgmLabels {
                    gpu: r.info.index.to_string(),
                    UUID: r.info.uuid.clone(),
                    pci_bus_id: r.info.pci_bus_id.clone().unwrap_or_default(),
                    device: format!("nvidia{}", r.info.index),
                    modelName: r.info.name.clone(),
                    Hostname: hostname.to_string(),
                })
                .set(v);
            }
        }
        if any {
            reg.register(*name, *help, f);
        }
    }
    let statuses = [
        GpuHealthStatus::Healthy,
        GpuHealthStatus::Degraded,
        GpuHealthStatus::Failed,
    ];
    gauges(
        &mut reg,
        "steward_agent_gpu_health",
        "GPU health as the agent judges it: 1 for the current status, 0 for the others.",
        snapshot
            .gpus
            .iter()
            .flat_map(|r| {
                statuses.iter().map(move |s| {
                    (
                        vec![
                            ("gpu", r.info.index.to_string()),
                            ("uuid", r.info.uuid.clone()),
                            ("status", s.name().to_string()),
                        ],
                        f64::from(u8::from(r.health.status == *s)),
                    )
                })
            })
            .collect(),
    );

    let h = &snapshot.host;
    counters(
        &mut reg,
        "node_cpu_seconds",
        "Seconds the CPUs spent in each mode.",
        h.cpus
            .iter()
            .flat_map(|c| {
                c.modes.iter().map(move |(m, s)| {
                    (
                        vec![("cpu", c.cpu.to_string()), ("mode", m.to_string())],
                        *s,
                    )
                })
            })
            .collect(),
    );
    if let Some([l1, l5, l15]) = h.load {
        gauge(&mut reg, "node_load1", "1m load average.", Some(l1));
        gauge(&mut reg, "node_load5", "5m load average.", Some(l5));
        gauge(&mut reg, "node_load15", "15m load average.", Some(l15));
    }
    gauge(
        &mut reg,
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes.",
        h.memory_available_bytes.map(|v| v as f64),
    );
    gauge(
        &mut reg,
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes.",
        h.memory_total_bytes.map(|v| v as f64),
    );
    let fs_labels = |f: &crate::telemetry::host::FilesystemSample| {
        vec![
            ("device", f.device.clone()),
            ("fstype", f.fstype.clone()),
            ("mountpoint", f.mountpoint.clone()),
        ]
    };
    for (name, help, read) in [
        (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
            (|f| f.avail_bytes) as fn(&crate::telemetry::host::FilesystemSample) -> u64,
        ),
        (
            "node_filesystem_free_bytes",
            "Filesystem free space in bytes.",
            |f| f.free_bytes,
        ),
        (
            "node_filesystem_size_bytes",
            "Filesystem size in bytes.",
            |f| f.size_bytes,
        ),
    ] {
        gauges(
            &mut reg,
            name,
            help,
            h.filesystems
                .iter()
                .map(|f| (fs_labels(f), read(f) as f64))
                .collect(),
        );
    }
    type DiskRead = fn(&crate::telemetry::host::DiskIo) -> f64;
    let disk: [(&str, &str, DiskRead); 5] = [
        (
            "node_disk_reads_completed",
            "The total number of reads completed successfully.",
            |d| d.reads_completed as f64,
        ),
        (
            "node_disk_writes_completed",
            "The total number of writes completed successfully.",
            |d| d.writes_completed as f64,
        ),
        (
            "node_disk_read_bytes",
            "The total number of bytes read successfully.",
            |d| d.read_bytes as f64,
        ),
        (
            "node_disk_written_bytes",
            "The total number of bytes written successfully.",
            |d| d.written_bytes as f64,
        ),
        (
            "node_disk_io_time_seconds",
            "Total seconds spent doing I/Os.",
            |d| d.io_time_seconds,
        ),
    ];
    for (name, help, read) in disk {
        counters(
            &mut reg,
            name,
            help,
            h.disks
                .iter()
                .map(|d| (vec![("device", d.device.clone())], read(d)))
                .collect(),
        );
    }
    let up: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    let speed: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    for n in &h.nics {
        let labels = vec![("device", n.name.clone())];
        if let Some(state) = &n.oper_state {
            up.get_or_create(&labels).set(i64::from(state == "up"));
        }
        if let Some(mbps) = n.speed_mbps {
            speed.get_or_create(&labels).set((mbps * 125_000) as i64);
        }
    }
    reg.register(
        "node_network_up",
        "Value is 1 if operstate is 'up', 0 otherwise.",
        up,
    );
    reg.register(
        "node_network_speed_bytes",
        "Network device property: speed_bytes.",
        speed,
    );
    type NicRead = fn(&crate::telemetry::host::NicCounters) -> u64;
    let net: [(&str, &str, NicRead); 8] = [
        (
            "node_network_receive_bytes",
            "Network device statistic receive_bytes.",
            |n| n.rx_bytes,
        ),
        (
            "node_network_transmit_bytes",
            "Network device statistic transmit_bytes.",
            |n| n.tx_bytes,
        ),
        (
            "node_network_receive_packets",
            "Network device statistic receive_packets.",
            |n| n.rx_packets,
        ),
        (
            "node_network_transmit_packets",
            "Network device statistic transmit_packets.",
            |n| n.tx_packets,
        ),
        (
            "node_network_receive_errs",
            "Network device statistic receive_errs.",
            |n| n.rx_errors,
        ),
        (
            "node_network_transmit_errs",
            "Network device statistic transmit_errs.",
            |n| n.tx_errors,
        ),
        (
            "node_network_receive_drop",
            "Network device statistic receive_drop.",
            |n| n.rx_dropped,
        ),
        (
            "node_network_transmit_drop",
            "Network device statistic transmit_drop.",
            |n| n.tx_dropped,
        ),
    ];
    for (name, help, read) in net {
        counters(
            &mut reg,
            name,
            help,
            h.nics
                .iter()
                .map(|n| (vec![("device", n.name.clone())], read(n) as f64))
                .collect(),
        );
    }

    for (name, help, v) in [
        (
            "steward_agent_heartbeats_sent",
            "Heartbeats the leader acknowledged.",
            &stats.heartbeats_sent,
        ),
        (
            "steward_agent_heartbeat_failures",
            "Heartbeats that failed (no leader, timeout).",
            &stats.heartbeat_failures,
        ),
        (
            "steward_agent_registrations",
            "Registrations of this node's inventory committed.",
            &stats.registrations,
        ),
        (
            "steward_agent_registration_errors",
            "Registrations the leader refused (the agent keeps heartbeating and retries).",
            &stats.registration_errors,
        ),
        (
            "steward_agent_leader_changes",
            "Times the agent moved to another controller as the leader.",
            &stats.leader_changes,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(v.load(Ordering::Relaxed));
        reg.register(name, help, c);
    }
    if let Some(current) = stats.isolation.get() {
        gauges(
            &mut reg,
            "steward_agent_isolation",
            "How allocations are isolated on this node: 1 for the current mode, 0 for the others.",
            ISOLATIONS
                .iter()
                .map(|m| {
                    (
                        vec![("mode", m.to_string())],
                        f64::from(u8::from(m == current)),
                    )
                })
                .collect(),
        );
    }
    if snapshot.sampled_at_unix_ms > 0 {
        let age = crate::telemetry::events::unix_ms().saturating_sub(snapshot.sampled_at_unix_ms);
        gauge(
            &mut reg,
            "steward_agent_telemetry_age_seconds",
            "Age of the telemetry reading these series come from.",
            Some(age as f64 / 1000.0),
        );
    }
    if let Some(security) = stats.security.get() {
        let tls = security.tls();
        steward_runtime::transport::register_security_metrics(
            &mut reg,
            &[("api", security)],
            tls.as_ref(),
        );
    }
    reg
}

/// The exposition text: OpenMetrics, or the classic text format 0.0.4.
pub fn render(
    snapshot: &TelemetrySnapshot,
    hostname: &str,
    stats: &AgentStats,
    openmetrics: bool,
) -> String {
    steward_runtime::metrics_http::encode(&registry(snapshot, hostname, stats), openmetrics)
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
    hostname: String,
    stats: Arc<AgentStats>,
    tls: Option<steward_runtime::tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    steward_runtime::metrics_http::serve(
        listener,
        tls,
        move |om| render(&telemetry.latest(), &hostname, &stats, om),
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::simulated::{Fault, SimulatedGpus};
    use crate::hardware::GpuProbe;
    use crate::telemetry::SamplerConfig;

    #[test]
    fn dcgm_and_node_exporter_names_in_both_formats() {
        let sim = Arc::new(SimulatedGpus::parse("H100:2", "t").expect("sim"));
        sim.inject(1, Fault::EccDoubleBit).expect("inject");
        let gpus = sim.gpus().expect("gpus");
        let t = Telemetry::start(
            sim,
            gpus,
            SamplerConfig {
                root: "/".into(),
                data_dir: None,
                interval: std::time::Duration::from_secs(60),
            },
        )
        .expect("start");
        let stats = AgentStats::default();
        stats.isolation.set("cgroup-v1").expect("once");
        let text = render(&t.latest(), "host-a", &stats, false);
        assert!(
            text.contains("steward_agent_isolation{mode=\"cgroup-v1\"} 1"),
            "{text}"
        );
        assert!(text.contains("steward_agent_isolation{mode=\"process-group\"} 0"));
        assert!(text.contains("# TYPE DCGM_FI_DEV_GPU_TEMP gauge"), "{text}");
        assert!(text.contains("modelName=\"NVIDIA H100 80GB HBM3\""));
        assert!(text.contains("Hostname=\"host-a\""));
        assert!(text.contains("device=\"nvidia1\""));
        assert!(text.contains("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{gpu=\"1\""));
        assert!(text.contains("DCGM_FI_DEV_PCIE_REPLAY_COUNTER{"));
        assert!(
            text.contains("# TYPE node_cpu_seconds_total counter"),
            "classic format names the counter with _total"
        );
        assert!(text.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}"));
        assert!(text.contains("node_memory_MemAvailable_bytes"));
        assert!(text.contains("steward_agent_gpu_health{gpu=\"1\""));
        let om = render(&t.latest(), "host-a", &stats, true);
        assert!(om.ends_with("# EOF\n") && om.contains("node_cpu_seconds_total{"));
    }
}
