//! Hardware inventory behind narrow seams: host facts read from a root directory (the real
//! `/`, or a fixture tree in tests) and GPUs through [`GpuProbe`].

pub mod host;
pub mod nvml;
pub mod simulated;

use std::path::Path;

use serde::Serialize;

pub use host::HostInventory;

/// Static facts of one GPU. Fields the GPU does not support are `None`, not errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub serial: Option<String>,
    pub vbios: Option<String>,
    pub pci_bus_id: Option<String>,
    pub pcie_gen: Option<u32>,
    pub pcie_width: Option<u32>,
    pub memory_total_mib: Option<u64>,
    pub power_limit_w: Option<f64>,
    pub ecc_enabled: Option<bool>,
    pub mig_enabled: Option<bool>,
    pub compute_capability: Option<String>,
    pub simulated: bool,
}

/// One telemetry reading of one GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub sm_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub memory_used_mib: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("GPU {index}: {message}")]
    Gpu { index: u32, message: String },
    #[error("GPU probe: {0}")]
    Backend(String),
}

/// Where GPU facts come from: NVML, a simulation, or nothing.
pub trait GpuProbe: Send + Sync {
    /// Driver version, when there is a driver.
    fn driver_version(&self) -> Option<String>;
    fn gpus(&self) -> Result<Vec<GpuInfo>, ProbeError>;
    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError>;
}

/// A machine without GPUs (or without the NVIDIA driver).
pub struct NoGpus;

impl GpuProbe for NoGpus {
    fn driver_version(&self) -> Option<String> {
        None
    }
    fn gpus(&self) -> Result<Vec<GpuInfo>, ProbeError> {
        Ok(Vec::new())
    }
    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError> {
        Err(ProbeError::Gpu {
            index,
            message: "no such GPU".into(),
        })
    }
}

/// The whole inventory of a machine.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub host: HostInventory,
    pub gpu_driver: Option<String>,
    pub gpus: Vec<GpuInfo>,
    /// One telemetry sample per GPU, taken with the inventory.
    pub gpu_samples: Vec<GpuSample>,
}

/// Reads the host under `root` and the GPUs through `gpus`.
pub fn inventory(root: &Path, gpus: &dyn GpuProbe) -> Result<Inventory, ProbeError> {
    let host = host::probe(root);
    let list = gpus.gpus()?;
    let gpu_samples = list
        .iter()
        .filter_map(|g| gpus.sample(g.index).ok())
        .collect();
    Ok(Inventory {
        host,
        gpu_driver: gpus.driver_version(),
        gpus: list,
        gpu_samples,
    })
}

/// The GPU probe for this machine: NVML when the driver loads, else none (one INFO line).
pub fn detect_gpus() -> Box<dyn GpuProbe> {
    match nvml::NvmlProbe::new() {
        Ok(p) => Box::new(p),
        Err(e) => {
            tracing::info!("no NVIDIA GPUs: {e}");
            Box::new(NoGpus)
        }
    }
}
