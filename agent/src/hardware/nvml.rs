//! Real GPUs through NVML (nvml-wrapper, loaded at run time: no link-time dependency on the
//! driver). A field NVML reports as `NotSupported` is absent, not an error. A GPU that NVML
//! answers "GPU lost" for reads as lost (it has fallen off the bus).

use std::sync::atomic::{AtomicBool, Ordering};

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{GpuInfo, GpuProbe, GpuSample, MigInstance, ProbeError};
use crate::telemetry::events::{GpuEventKind, GpuEventLog};

/// NVML's most NVLink links per GPU.
const MAX_NVLINKS: u32 = 18;
/// How long one wait on the event set lasts, so the thread notices `stop`.
const EVENT_WAIT_MS: u32 = 500;

pub struct NvmlProbe {
    nvml: Nvml,
}

impl NvmlProbe {
    pub fn new() -> Result<Self, ProbeError> {
        Nvml::init()
            .map(|nvml| NvmlProbe { nvml })
            .map_err(|e| ProbeError::Backend(format!("NVML unavailable: {e}")))
    }
}

/// `Ok(v)` -> `Some(v)`; `NotSupported` and other per-field failures -> `None`.
fn opt<T>(r: Result<T, NvmlError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            tracing::debug!(error = %e, "NVML field unavailable");
            None
        }
    }
}

fn gpu_err(index: u32) -> impl Fn(NvmlError) -> ProbeError {
    move |e| ProbeError::Gpu {
        index,
        message: e.to_string(),
    }
}

/// Throttle reasons under short snake_case names.
fn throttle_names(r: ThrottleReasons) -> Vec<String> {
    const NAMES: &[(ThrottleReasons, &str)] = &[
        (ThrottleReasons::GPU_IDLE, "gpu_idle"),
        (
            ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks_setting",
        ),
        (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::SYNC_BOOST, "sync_boost"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
        (
            ThrottleReasons::DISPLAY_CLOCK_SETTING,
            "display_clock_setting",
        ),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| r.contains(*bit))
        .map(|(_, n)| n.to_string())
        .collect()
}

fn mig_instances(d: &Device<'_>) -> Option<Vec<MigInstance>> {
    if opt(d.mig_mode())?.current != 1 {
        return None;
    }
    let count = opt(d.mig_device_count())?;
    Some(
        (0..count)
            .filter_map(|i| {
                let m = opt(d.mig_device_by_index(i))?;
                Some(MigInstance {
                    index: i,
                    uuid: opt(m.uuid()),
                    name: opt(m.name()),
                    memory_total_mib: opt(m.memory_info()).map(|x| x.total / (1024 * 1024)),
                })
            })
            .collect(),
    )
}

/// PCI bus ids at the far end of the active NVLinks; `None` where NVLink is not supported.
fn nvlink_peers(d: &Device<'_>) -> Option<Vec<String>> {
    let mut peers = Vec::new();
    let mut supported = false;
    for link in 0..MAX_NVLINKS {
        let l = d.link_wrapper_for(link);
        match l.is_active() {
            Ok(true) => {
                supported = true;
                if let Some(p) = opt(l.remote_pci_info()) {
                    if !peers.contains(&p.bus_id) {
                        peers.push(p.bus_id);
                    }
                }
            }
            Ok(false) => supported = true,
            // NotSupported, or a link index past this GPU's links.
            Err(_) => {}
        }
    }
    supported.then_some(peers)
}

impl GpuProbe for NvmlProbe {
    fn driver_version(&self) -> Option<String> {
        opt(self.nvml.sys_driver_version())
    }

    fn gpus(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| ProbeError::Backend(e.to_string()))?;
        let mut out = Vec::new();
        for index in 0..count {
            let d = self.nvml.device_by_index(index).map_err(gpu_err(index))?;
            out.push(GpuInfo {
                index,
                uuid: d.uuid().map_err(gpu_err(index))?,
                name: d.name().map_err(gpu_err(index))?,
                serial: opt(d.serial()),
                vbios: opt(d.vbios_version()),
                pci_bus_id: opt(d.pci_info()).map(|p| p.bus_id),
                // The maximum, not the current link: that drops at idle (telemetry).
                pcie_max_gen: opt(d.max_pcie_link_gen()),
                pcie_max_width: opt(d.max_pcie_link_width()),
                memory_total_mib: opt(d.memory_info()).map(|m| m.total / (1024 * 1024)),
                power_limit_w: opt(d.power_management_limit()).map(|mw| mw as f64 / 1000.0),
                ecc_enabled: opt(d.is_ecc_enabled()).map(|e| e.currently_enabled),
                mig_enabled: opt(d.mig_mode()).map(|m| m.current == 1),
                mig_instances: mig_instances(&d),
                compute_capability: opt(d.cuda_compute_capability())
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                slowdown_temp_c: opt(d.temperature_threshold(TemperatureThreshold::Slowdown)),
                shutdown_temp_c: opt(d.temperature_threshold(TemperatureThreshold::Shutdown)),
                // Filled from sysfs by `hardware::inventory`.
                numa_node: None,
                cpu_affinity: None,
                nvlink_peers: nvlink_peers(&d),
                simulated: false,
            });
        }
        Ok(out)
    }

    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError> {
        let d = match self.nvml.device_by_index(index) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) => return Ok(GpuSample::lost(index)),
            Err(e) => return Err(gpu_err(index)(e)),
        };
        let util = d.utilization_rates();
        if matches!(util, Err(NvmlError::GpuLost)) {
            return Ok(GpuSample::lost(index));
        }
        let util = opt(util);
        let throttle = opt(d.current_throttle_reasons());
        let ecc = |kind, counter| opt(d.total_ecc_errors(kind, counter));
        Ok(GpuSample {
            index,
            sm_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            memory_used_mib: opt(d.memory_info()).map(|m| m.used / (1024 * 1024)),
            temperature_c: opt(d.temperature(TemperatureSensor::Gpu)),
            power_w: opt(d.power_usage()).map(|mw| mw as f64 / 1000.0),
            energy_mj: opt(d.total_energy_consumption()),
            sm_clock_mhz: opt(d.clock_info(Clock::SM)),
            mem_clock_mhz: opt(d.clock_info(Clock::Memory)),
            throttle_reasons: throttle.map(throttle_names),
            throttle_mask: throttle.map(|t| t.bits()),
            ecc_sbe_volatile: ecc(MemoryError::Corrected, EccCounter::Volatile),
            ecc_dbe_volatile: ecc(MemoryError::Uncorrected, EccCounter::Volatile),
            ecc_sbe_aggregate: ecc(MemoryError::Corrected, EccCounter::Aggregate),
            ecc_dbe_aggregate: ecc(MemoryError::Uncorrected, EccCounter::Aggregate),
            pcie_replay: opt(d.pcie_replay_counter()).map(u64::from),
            pcie_link_gen: opt(d.current_pcie_link_gen()),
            pcie_link_width: opt(d.current_pcie_link_width()),
            lost: false,
        })
    }

    /// Reads NVML's event set (XID, single- and double-bit ECC) until `stop`. A GPU that
    /// does not support an event type is registered for the ones it does support.
    fn watch_events(&self, sink: &GpuEventLog, stop: &AtomicBool) {
        let wanted = EventTypes::CRITICAL_XID_ERROR
            | EventTypes::DOUBLE_BIT_ECC_ERROR
            | EventTypes::SINGLE_BIT_ECC_ERROR;
        let mut set = match self.nvml.create_event_set() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "NVML event set unavailable: no XID/ECC events");
                return;
            }
        };
        let mut uuids = Vec::new();
        let count = self.nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(d) = self.nvml.device_by_index(index) else {
                continue;
            };
            uuids.push((opt(d.uuid()), index));
            let types = opt(d.supported_event_types()).map_or(wanted, |s| s & wanted);
            if types.is_empty() {
                tracing::info!(gpu = index, "GPU supports no XID/ECC events");
                continue;
            }
            set = match d.register_events(types, set) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(gpu = index, error = %e.error, "cannot register GPU events");
                    match self.nvml.create_event_set() {
                        Ok(s) => s,
                        Err(_) => return,
                    }
                }
            };
        }
        tracing::info!(gpus = count, "reading GPU XID and ECC events");
        while !stop.load(Ordering::Relaxed) {
            match set.wait(EVENT_WAIT_MS) {
                Ok(ev) => {
                    let uuid = opt(ev.device.uuid());
                    let Some(index) = uuids
                        .iter()
                        .find(|(u, _)| u.is_some() && *u == uuid)
                        .map(|(_, i)| *i)
                    else {
                        continue;
                    };
                    if ev.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                        let code = match ev.event_data {
                            Some(XidError::Value(v)) => v,
                            _ => 0,
                        };
                        sink.record(index, GpuEventKind::Xid { code });
                    }
                    if ev.event_type.contains(EventTypes::DOUBLE_BIT_ECC_ERROR) {
                        sink.record(index, GpuEventKind::EccDoubleBit);
                    }
                    if ev.event_type.contains(EventTypes::SINGLE_BIT_ECC_ERROR) {
                        sink.record(index, GpuEventKind::EccSingleBit);
                    }
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => {
                    // GpuLost and friends: the sampler reports the GPU itself; do not spin.
                    tracing::debug!(error = %e, "NVML event wait");
                    std::thread::sleep(std::time::Duration::from_millis(u64::from(EVENT_WAIT_MS)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_driver_is_a_clear_error_and_detect_falls_back() {
        // CI machines have no NVIDIA driver; a machine with one lists its GPUs instead.
        match NvmlProbe::new() {
            Err(e) => {
                assert!(e.to_string().contains("NVML unavailable"), "{e}");
                let probe = crate::hardware::detect_gpus();
                assert!(probe.gpus().expect("no-GPU probe").is_empty());
                assert!(probe.driver_version().is_none());
            }
            Ok(p) => assert!(p.driver_version().is_some()),
        }
    }

    #[test]
    fn throttle_reasons_are_named() {
        let names =
            throttle_names(ThrottleReasons::GPU_IDLE | ThrottleReasons::HW_THERMAL_SLOWDOWN);
        assert_eq!(names, ["gpu_idle", "hw_thermal_slowdown"]);
    }
}
