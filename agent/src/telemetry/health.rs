//! A GPU's health as the agent judges it from its latest reading and the events seen since
//! the agent started: `healthy`, `degraded` (works, needs attention) or `failed` (drain and
//! reset). Pure, so every rule is unit-tested.
//!
//! Event-based findings are sticky for the life of the agent: a GPU that logged XID 79 stays
//! failed until it is reset and the agent restarts (or, for simulated GPUs, a `clear`).

use serde::Serialize;

use super::events::{xid_meaning, xid_severity, GpuEventCounts, XidSeverity};
use crate::hardware::{GpuInfo, GpuSample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuHealthStatus {
    Healthy,
    Degraded,
    Failed,
}

impl GpuHealthStatus {
    pub fn name(self) -> &'static str {
        match self {
            GpuHealthStatus::Healthy => "healthy",
            GpuHealthStatus::Degraded => "degraded",
            GpuHealthStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuHealth {
    pub status: GpuHealthStatus,
    /// Why, worst first; empty when healthy.
    pub reasons: Vec<String>,
}

/// Temperature used when the GPU does not report its slowdown threshold.
pub const DEFAULT_SLOWDOWN_TEMP_C: u32 = 87;

/// Throttle reasons that mean the GPU is too hot.
const THERMAL_THROTTLES: &[&str] = &["hw_thermal_slowdown", "sw_thermal_slowdown", "hw_slowdown"];

pub fn judge(info: &GpuInfo, sample: &GpuSample, events: &GpuEventCounts) -> GpuHealth {
    let mut found: Vec<(GpuHealthStatus, String)> = Vec::new();
    if sample.lost || events.fell_off_bus {
        found.push((
            GpuHealthStatus::Failed,
            "fallen off the bus (NVML: GPU lost)".into(),
        ));
    }
    if let Some(dbe) = sample.ecc_dbe_volatile.filter(|n| *n > 0) {
        found.push((
            GpuHealthStatus::Failed,
            format!("{dbe} uncorrectable (double-bit) ECC errors since the driver loaded"),
        ));
    } else if events.ecc_double_bit_events > 0 {
        found.push((
            GpuHealthStatus::Failed,
            format!(
                "{} double-bit ECC error events",
                events.ecc_double_bit_events
            ),
        ));
    }
    for &code in &events.xids_seen {
        let status = match xid_severity(code) {
            XidSeverity::Application => continue,
            XidSeverity::Degrading => GpuHealthStatus::Degraded,
            XidSeverity::Fatal => GpuHealthStatus::Failed,
        };
        found.push((status, format!("XID {code}: {}", xid_meaning(code))));
    }
    let slowdown = info.slowdown_temp_c.unwrap_or(DEFAULT_SLOWDOWN_TEMP_C);
    if let Some(t) = sample.temperature_c.filter(|t| *t >= slowdown) {
        found.push((
            GpuHealthStatus::Degraded,
            format!("over temperature: {t} C, slowdown at {slowdown} C"),
        ));
    } else if let Some(r) = sample
        .throttle_reasons
        .as_deref()
        .and_then(|rs| rs.iter().find(|r| THERMAL_THROTTLES.contains(&r.as_str())))
    {
        found.push((GpuHealthStatus::Degraded, format!("clocks held down: {r}")));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    GpuHealth {
        status: found
            .first()
            .map(|f| f.0)
            .unwrap_or(GpuHealthStatus::Healthy),
        reasons: found.into_iter().map(|f| f.1).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::simulated::SimulatedGpus;
    use crate::hardware::GpuProbe;

    fn info() -> GpuInfo {
        SimulatedGpus::parse("H100:1", "t")
            .expect("sim")
            .gpus()
            .expect("gpus")[0]
            .clone()
    }

    fn sample() -> GpuSample {
        GpuSample {
            temperature_c: Some(40),
            ecc_dbe_volatile: Some(0),
            throttle_reasons: Some(vec![]),
            ..Default::default()
        }
    }

    #[test]
    fn rules() {
        let none = GpuEventCounts::default();
        assert_eq!(
            judge(&info(), &sample(), &none).status,
            GpuHealthStatus::Healthy
        );

        let lost = judge(&info(), &GpuSample::lost(0), &none);
        assert_eq!(lost.status, GpuHealthStatus::Failed);
        assert!(lost.reasons[0].contains("fallen off the bus"));

        let dbe = GpuSample {
            ecc_dbe_volatile: Some(2),
            ..sample()
        };
        assert!(judge(&info(), &dbe, &none).reasons[0].starts_with("2 uncorrectable"));

        let hot = GpuSample {
            temperature_c: Some(95),
            ..sample()
        };
        let h = judge(&info(), &hot, &none);
        assert_eq!(h.status, GpuHealthStatus::Degraded);
        assert!(h.reasons[0].contains("95 C"), "{h:?}");

        let app_xid = GpuEventCounts {
            xids_seen: vec![13],
            last_xid: Some(13),
            xid_count: 1,
            ..none.clone()
        };
        assert_eq!(
            judge(&info(), &sample(), &app_xid).status,
            GpuHealthStatus::Healthy,
            "application XIDs are not the GPU's fault"
        );

        let xids = GpuEventCounts {
            xids_seen: vec![63, 79],
            ..none.clone()
        };
        let h = judge(&info(), &hot, &xids);
        assert_eq!(h.status, GpuHealthStatus::Failed);
        assert!(h.reasons[0].starts_with("XID 79"), "worst first: {h:?}");
        assert_eq!(h.reasons.len(), 3);
    }
}
