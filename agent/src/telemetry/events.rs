//! GPU events (XID errors, ECC errors, over-temperature, a GPU falling off the bus) and the
//! bounded log they land in. NVML delivers XID and ECC events through an event set that the
//! agent reads on a dedicated thread; the sampler adds the events it sees in readings
//! (temperature over the slowdown threshold, "GPU lost").

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Events kept for `steward node show` and heartbeats; older ones are dropped first.
pub const MAX_RECENT_EVENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GpuEventKind {
    /// An XID error reported by the driver.
    Xid {
        code: u64,
    },
    EccSingleBit,
    EccDoubleBit,
    /// The GPU reached its slowdown temperature.
    OverTemperature {
        celsius: u32,
    },
    /// NVML answers "GPU lost" for the device.
    FellOffBus,
}

impl GpuEventKind {
    pub fn name(&self) -> &'static str {
        match self {
            GpuEventKind::Xid { .. } => "xid",
            GpuEventKind::EccSingleBit => "ecc_single_bit",
            GpuEventKind::EccDoubleBit => "ecc_double_bit",
            GpuEventKind::OverTemperature { .. } => "over_temperature",
            GpuEventKind::FellOffBus => "fell_off_bus",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            GpuEventKind::Xid { code } => format!("XID {code}: {}", xid_meaning(*code)),
            GpuEventKind::EccSingleBit => "single-bit ECC error (corrected)".into(),
            GpuEventKind::EccDoubleBit => "double-bit ECC error (uncorrectable)".into(),
            GpuEventKind::OverTemperature { celsius } => {
                format!("temperature {celsius} C reached the slowdown threshold")
            }
            GpuEventKind::FellOffBus => "GPU has fallen off the bus (NVML: GPU lost)".into(),
        }
    }
}

/// What an XID means, from NVIDIA's XID catalogue (the common ones on data-center GPUs).
pub fn xid_meaning(code: u64) -> &'static str {
    match code {
        13 => "graphics engine exception (usually the application)",
        31 => "GPU memory page fault (usually the application)",
        43 => "GPU stopped processing (usually the application)",
        45 => "preemptive cleanup after an earlier error",
        48 => "double-bit ECC error",
        61 | 62 => "internal micro-controller error",
        63 => "ECC page retirement or row remapping recorded",
        64 => "ECC page retirement or row remapping failed",
        74 => "NVLink error",
        79 => "GPU has fallen off the bus",
        92 => "high single-bit ECC error rate",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 | 120 => "GSP firmware error",
        _ => "see NVIDIA's XID catalogue",
    }
}

/// How an XID bears on the GPU's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidSeverity {
    /// Caused by the application; the GPU is fine.
    Application,
    /// The GPU needs attention but may keep working.
    Degrading,
    /// The GPU must be drained and reset.
    Fatal,
}

pub fn xid_severity(code: u64) -> XidSeverity {
    match code {
        13 | 31 | 43 | 45 => XidSeverity::Application,
        48 | 61 | 62 | 64 | 74 | 79 | 92 | 95 | 119 | 120 => XidSeverity::Fatal,
        _ => XidSeverity::Degrading,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuEvent {
    pub at_unix_ms: u64,
    pub gpu_index: u32,
    #[serde(flatten)]
    pub kind: GpuEventKind,
}

/// What the log knows of one GPU since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuEventCounts {
    pub last_xid: Option<u64>,
    pub xid_count: u64,
    /// The worst XIDs seen, each once, in the order first seen (for health).
    pub xids_seen: Vec<u64>,
    pub ecc_double_bit_events: u64,
    pub ecc_single_bit_events: u64,
    pub fell_off_bus: bool,
}

/// Most distinct XIDs remembered per GPU.
const MAX_XIDS_SEEN: usize = 16;

#[derive(Debug, Default)]
struct LogInner {
    recent: VecDeque<GpuEvent>,
    counts: BTreeMap<u32, GpuEventCounts>,
}

/// The agent's GPU event log: shared by the event thread, the sampler and the API.
#[derive(Debug, Default)]
pub struct GpuEventLog {
    inner: Mutex<LogInner>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl GpuEventLog {
    fn inner(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event now.
    pub fn record(&self, gpu_index: u32, kind: GpuEventKind) {
        let event = GpuEvent {
            at_unix_ms: unix_ms(),
            gpu_index,
            kind,
        };
        tracing::warn!(gpu = gpu_index, event = kind.name(), "{}", kind.describe());
        let mut inner = self.inner();
        let c = inner.counts.entry(gpu_index).or_default();
        match kind {
            GpuEventKind::Xid { code } => {
                c.last_xid = Some(code);
                c.xid_count += 1;
                if !c.xids_seen.contains(&code) && c.xids_seen.len() < MAX_XIDS_SEEN {
                    c.xids_seen.push(code);
                }
            }
            GpuEventKind::EccSingleBit => c.ecc_single_bit_events += 1,
            GpuEventKind::EccDoubleBit => c.ecc_double_bit_events += 1,
            GpuEventKind::FellOffBus => c.fell_off_bus = true,
            GpuEventKind::OverTemperature { .. } => {}
        }
        if inner.recent.len() == MAX_RECENT_EVENTS {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event);
    }

    /// Forgets what is known of one GPU (after a simulated repair).
    pub fn clear(&self, gpu_index: u32) {
        let mut inner = self.inner();
        inner.counts.remove(&gpu_index);
        inner.recent.retain(|e| e.gpu_index != gpu_index);
    }

    pub fn counts(&self, gpu_index: u32) -> GpuEventCounts {
        self.inner()
            .counts
            .get(&gpu_index)
            .cloned()
            .unwrap_or_default()
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<GpuEvent> {
        self.inner().recent.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bounds() {
        let log = GpuEventLog::default();
        log.record(0, GpuEventKind::Xid { code: 79 });
        log.record(0, GpuEventKind::Xid { code: 13 });
        log.record(1, GpuEventKind::EccDoubleBit);
        let c = log.counts(0);
        assert_eq!(
            (c.last_xid, c.xid_count, c.xids_seen.clone()),
            (Some(13), 2, vec![79, 13])
        );
        assert_eq!(log.counts(1).ecc_double_bit_events, 1);
        for _ in 0..100 {
            log.record(2, GpuEventKind::EccSingleBit);
        }
        assert_eq!(log.recent().len(), MAX_RECENT_EVENTS);
        log.clear(2);
        assert_eq!(log.counts(2), GpuEventCounts::default());
        assert!(log.recent().iter().all(|e| e.gpu_index != 2));
        assert_eq!(xid_severity(79), XidSeverity::Fatal);
        assert_eq!(xid_severity(13), XidSeverity::Application);
        assert!(GpuEventKind::Xid { code: 79 }
            .describe()
            .contains("fallen off the bus"));
    }
}
