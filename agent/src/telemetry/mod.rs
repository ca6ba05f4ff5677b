//! Live telemetry: a sampler thread reads the host (procfs) and every GPU each interval and
//! publishes an immutable [`TelemetrySnapshot`]; an event thread reads XID and ECC events
//! from the GPU probe (NVML's event set) into the [`events::GpuEventLog`]. Both are plain
//! threads: NVML calls block, and they never run on the async runtime.
//!
//! Readers (heartbeats, `/metrics`, the agent API) take the latest snapshot: a scrape or a
//! heartbeat never waits on the hardware.

pub mod events;
pub mod health;
pub mod host;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::hardware::{GpuInfo, GpuProbe, GpuSample};
use events::{GpuEvent, GpuEventCounts, GpuEventKind, GpuEventLog};
use health::GpuHealth;

/// Shortest and longest sampling interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// One GPU's latest reading with the agent's judgement of it.
#[derive(Debug, Clone, Serialize)]
pub struct GpuReading {
    pub info: GpuInfo,
    pub sample: GpuSample,
    pub health: GpuHealth,
    #[serde(skip)]
    pub events: GpuEventCounts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TelemetrySnapshot {
    /// 0 until the first reading.
    pub sampled_at_unix_ms: u64,
    pub host: host::HostSample,
    pub gpus: Vec<GpuReading>,
    pub recent_events: Vec<GpuEvent>,
}

/// The running sampler and event threads. Dropping it stops them (within an interval).
pub struct Telemetry {
    latest: watch::Receiver<Arc<TelemetrySnapshot>>,
    events: Arc<GpuEventLog>,
    probe: Arc<dyn GpuProbe>,
    wake: mpsc::SyncSender<()>,
    stop: Arc<AtomicBool>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the sampler needs besides the probe.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Root of procfs/sysfs (`/`).
    pub root: PathBuf,
    /// The agent's data dir, whose filesystem is flagged.
    pub data_dir: Option<PathBuf>,
    pub interval: Duration,
}

impl Telemetry {
    /// Starts the threads; the first snapshot is taken before this returns.
    pub fn start(
        probe: Arc<dyn GpuProbe>,
        gpus: Vec<GpuInfo>,
        config: SamplerConfig,
    ) -> std::io::Result<Telemetry> {
        let events = Arc::new(GpuEventLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut sampler = Sampler {
            probe: probe.clone(),
            gpus,
            config: config.clone(),
            events: events.clone(),
            hot: Vec::new(),
            previous: None,
        };
        let (tx, latest) = watch::channel(Arc::new(sampler.take()));
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("steward-telemetry".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match woken.recv_timeout(config.interval) {
                            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                            Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        }
                        if stop.load(Ordering::Relaxed)
                            || tx.send(Arc::new(sampler.take())).is_err()
                        {
                            return;
                        }
                    }
                })?;
        }
        {
            let (probe, events, stop) = (probe.clone(), events.clone(), stop.clone());
            std::thread::Builder::new()
                .name("steward-gpu-events".into())
                .spawn(move || probe.watch_events(&events, &stop))?;
        }
        Ok(Telemetry {
            latest,
            events,
            probe,
            wake,
            stop,
        })
    }

    pub fn latest(&self) -> Arc<TelemetrySnapshot> {
        self.latest.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TelemetrySnapshot>> {
        self.latest.clone()
    }

    pub fn events(&self) -> &Arc<GpuEventLog> {
        &self.events
    }

    pub fn probe(&self) -> &Arc<dyn GpuProbe> {
        &self.probe
    }

    /// Asks for a reading now (after a change an operator wants to see at once).
    pub fn sample_soon(&self) {
        let _ = self.wake.try_send(());
    }
}

struct Sampler {
    probe: Arc<dyn GpuProbe>,
    gpus: Vec<GpuInfo>,
    config: SamplerConfig,
    events: Arc<GpuEventLog>,
    /// Whether each GPU was at its slowdown temperature at the last reading.
    hot: Vec<bool>,
    previous: Option<host::HostSample>,
}

impl Sampler {
    fn take(&mut self) -> TelemetrySnapshot {
        let host = host::sample(
            &self.config.root,
            self.previous.as_ref(),
            self.config.data_dir.as_deref(),
        );
        self.previous = Some(host.clone());
        self.hot.resize(self.gpus.len(), false);
        let mut gpus = Vec::with_capacity(self.gpus.len());
        for (i, info) in self.gpus.iter().enumerate() {
            let sample = match self.probe.sample(info.index) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(gpu = info.index, error = %e, "GPU reading failed");
                    GpuSample {
                        index: info.index,
                        ..Default::default()
                    }
                }
            };
            // Edges the event set does not report: the sampler records them once.
            if sample.lost && !self.events.counts(info.index).fell_off_bus {
                self.events.record(info.index, GpuEventKind::FellOffBus);
            }
            let slowdown = info
                .slowdown_temp_c
                .unwrap_or(health::DEFAULT_SLOWDOWN_TEMP_C);
            let hot = sample.temperature_c.is_some_and(|t| t >= slowdown);
            if hot && !self.hot[i] {
                if let Some(celsius) = sample.temperature_c {
                    self.events
                        .record(info.index, GpuEventKind::OverTemperature { celsius });
                }
            }
            self.hot[i] = hot;
            let counts = self.events.counts(info.index);
            gpus.push(GpuReading {
                health: health::judge(info, &sample, &counts),
                info: info.clone(),
                sample,
                events: counts,
            });
        }
        TelemetrySnapshot {
            sampled_at_unix_ms: events::unix_ms(),
            host,
            gpus,
            recent_events: self.events.recent(),
        }
    }
}

impl TelemetrySnapshot {
    /// The compact form carried by heartbeats and the agent API.
    pub fn to_proto(&self) -> steward_proto::v1::NodeTelemetry {
        use steward_proto::v1::{GpuEventPb, GpuTelemetry, NodeTelemetry};
        let h = &self.host;
        let data_fs = h.data_dir_filesystem.and_then(|i| h.filesystems.get(i));
        NodeTelemetry {
            sampled_at_unix_ms: self.sampled_at_unix_ms,
            cpu_util_pct: h.cpu_util_pct,
            load1: h.load.map(|l| l[0]),
            memory_total_bytes: h.memory_total_bytes,
            memory_available_bytes: h.memory_available_bytes,
            data_fs_size_bytes: data_fs.map(|f| f.size_bytes),
            data_fs_avail_bytes: data_fs.map(|f| f.avail_bytes),
            net_rx_bytes: h.nics.iter().map(|n| n.rx_bytes).sum(),
            net_tx_bytes: h.nics.iter().map(|n| n.tx_bytes).sum(),
            net_errors: h.nics.iter().map(|n| n.rx_errors + n.tx_errors).sum(),
            gpus: self
                .gpus
                .iter()
                .map(|r| {
                    let s = &r.sample;
                    GpuTelemetry {
                        index: r.info.index,
                        uuid: r.info.uuid.clone(),
                        health: r.health.status.name().to_string(),
                        health_reasons: r.health.reasons.clone(),
                        sm_util_pct: s.sm_util_pct,
                        mem_util_pct: s.mem_util_pct,
                        memory_used_mib: s.memory_used_mib,
                        temperature_c: s.temperature_c,
                        power_w: s.power_w,
                        energy_mj: s.energy_mj,
                        sm_clock_mhz: s.sm_clock_mhz,
                        mem_clock_mhz: s.mem_clock_mhz,
                        throttle_reasons: s.throttle_reasons.clone().unwrap_or_default(),
                        ecc_sbe_volatile: s.ecc_sbe_volatile,
                        ecc_dbe_volatile: s.ecc_dbe_volatile,
                        ecc_sbe_aggregate: s.ecc_sbe_aggregate,
                        ecc_dbe_aggregate: s.ecc_dbe_aggregate,
                        pcie_replay: s.pcie_replay,
                        pcie_link_gen: s.pcie_link_gen,
                        pcie_link_width: s.pcie_link_width,
                        last_xid: r.events.last_xid,
                        xid_count: r.events.xid_count,
                        lost: s.lost,
                    }
                })
                .collect(),
            recent_gpu_events: self
                .recent_events
                .iter()
                .map(|e| GpuEventPb {
                    at_unix_ms: e.at_unix_ms,
                    gpu_index: e.gpu_index,
                    kind: e.kind.name().to_string(),
                    xid: match e.kind {
                        GpuEventKind::Xid { code } => Some(code),
                        _ => None,
                    },
                    description: e.kind.describe(),
                })
                .collect(),
            // Set by the daemon, which runs the allocations and holds the chunk store.
            isolation: String::new(),
            chunk_space_low: None,
            chunks: None,
            chunk_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::simulated::{Fault, SimulatedGpus};

    #[tokio::test]
    async fn snapshots_follow_load_and_faults() {
        let sim = Arc::new(SimulatedGpus::parse("H100:2", "t").expect("sim"));
        let gpus = sim.gpus().expect("gpus");
        let probe: Arc<dyn GpuProbe> = sim.clone();
        let t = Telemetry::start(
            probe,
            gpus,
            SamplerConfig {
                root: "/".into(),
                data_dir: None,
                interval: Duration::from_millis(100),
            },
        )
        .expect("start");
        let first = t.latest();
        assert_eq!(first.gpus.len(), 2);
        assert_eq!(
            first.gpus[0].health.status,
            health::GpuHealthStatus::Healthy
        );
        sim.set_load(1, 100, None).expect("load");
        sim.inject(0, Fault::Xid(79)).expect("inject");
        let mut rx = t.subscribe();
        let snap = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                rx.changed().await.expect("sampler alive");
                let s = rx.borrow().clone();
                if s.gpus[1].sample.sm_util_pct == Some(100)
                    && s.gpus[0].health.status == health::GpuHealthStatus::Failed
                {
                    return s;
                }
            }
        })
        .await
        .expect("a snapshot with the load and the fault");
        assert!(snap.gpus[0].health.reasons[0].contains("XID 79"));
        assert!(snap
            .recent_events
            .iter()
            .any(|e| e.kind == GpuEventKind::Xid { code: 79 }));
        assert!(snap.gpus[1].sample.power_w > first.gpus[1].sample.power_w);
    }
}
