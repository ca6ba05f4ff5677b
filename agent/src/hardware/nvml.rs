//! Real GPUs through NVML (nvml-wrapper, loaded at run time: no link-time dependency on the
//! driver). A field NVML reports as `NotSupported` is absent, not an error.

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{GpuInfo, GpuProbe, GpuSample, ProbeError};

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
                pcie_gen: opt(d.current_pcie_link_gen()),
                pcie_width: opt(d.current_pcie_link_width()),
                memory_total_mib: opt(d.memory_info()).map(|m| m.total / (1024 * 1024)),
                power_limit_w: opt(d.power_management_limit()).map(|mw| mw as f64 / 1000.0),
                ecc_enabled: opt(d.is_ecc_enabled()).map(|e| e.currently_enabled),
                mig_enabled: opt(d.mig_mode()).map(|m| m.current == 1),
                compute_capability: opt(d.cuda_compute_capability())
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                simulated: false,
            });
        }
        Ok(out)
    }

    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError> {
        let d = self.nvml.device_by_index(index).map_err(gpu_err(index))?;
        let util = opt(d.utilization_rates());
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
        })
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
}
