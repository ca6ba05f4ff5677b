//! Hardware inventory behind narrow seams: host facts read from a root directory (the real
//! `/`, or a fixture tree in tests) and GPUs through [`GpuProbe`].
//!
//! The inventory holds *static* facts only (what the machine has), so that its digest changes
//! only when the hardware does and the agent re-registers through Raft only then. Readings
//! that move (utilisation, temperature, free space) are telemetry (`crate::telemetry`).

pub mod host;
pub mod nvml;
pub mod simulated;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

pub use host::HostInventory;

use crate::telemetry::events::GpuEventLog;

/// Static facts of one GPU. Fields the GPU does not support are `None`, not errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub serial: Option<String>,
    pub vbios: Option<String>,
    /// NVML's spelling: `00000000:18:00.0`.
    pub pci_bus_id: Option<String>,
    pub pcie_gen: Option<u32>,
    pub pcie_width: Option<u32>,
    pub memory_total_mib: Option<u64>,
    pub power_limit_w: Option<f64>,
    pub ecc_enabled: Option<bool>,
    pub mig_enabled: Option<bool>,
    /// MIG instances, when MIG is on.
    pub mig_instances: Option<Vec<MigInstance>>,
    pub compute_capability: Option<String>,
    /// Temperature at which the GPU starts to slow itself down.
    pub slowdown_temp_c: Option<u32>,
    pub shutdown_temp_c: Option<u32>,
    /// NUMA node of the GPU's PCI device (sysfs).
    pub numa_node: Option<u32>,
    /// CPUs close to the GPU, as a Linux cpulist ("0-47,96-143").
    pub cpu_affinity: Option<String>,
    /// PCI bus ids at the far end of each active NVLink; `None` where NVLink is not
    /// supported, empty where it is but no link is up.
    pub nvlink_peers: Option<Vec<String>>,
    pub simulated: bool,
}

/// One MIG instance of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigInstance {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub memory_total_mib: Option<u64>,
}

/// One telemetry reading of one GPU. A field the GPU does not support is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub sm_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub memory_used_mib: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    /// Energy since the driver loaded, in millijoules.
    pub energy_mj: Option<u64>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    /// Why the clocks are held down ("sw_power_cap", "hw_thermal_slowdown", ...); empty
    /// when they are not, `None` when unknown.
    pub throttle_reasons: Option<Vec<String>>,
    /// Raw NVML clock-throttle bitmask (dcgm-exporter's DCGM_FI_DEV_CLOCK_THROTTLE_REASONS).
    pub throttle_mask: Option<u64>,
    pub ecc_sbe_volatile: Option<u64>,
    pub ecc_dbe_volatile: Option<u64>,
    pub ecc_sbe_aggregate: Option<u64>,
    pub ecc_dbe_aggregate: Option<u64>,
    pub pcie_replay: Option<u64>,
    /// NVML answers "GPU lost" for this device: it has fallen off the bus.
    pub lost: bool,
}

impl GpuSample {
    /// The reading of a GPU that has fallen off the bus: nothing but the fact.
    pub fn lost(index: u32) -> Self {
        GpuSample {
            index,
            lost: true,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("GPU {index}: {message}")]
    Gpu { index: u32, message: String },
    #[error("GPU probe: {0}")]
    Backend(String),
}

/// Where GPU facts come from: NVML, a simulation, or nothing.
///
/// Every method may block (NVML calls are synchronous): callers on the async runtime use
/// `spawn_blocking` or a thread of their own.
pub trait GpuProbe: Send + Sync {
    /// Driver version, when there is a driver.
    fn driver_version(&self) -> Option<String>;
    fn gpus(&self) -> Result<Vec<GpuInfo>, ProbeError>;
    fn sample(&self, index: u32) -> Result<GpuSample, ProbeError>;
    /// Delivers XID and ECC events to `sink` until `stop` is set. Blocks: it runs on a
    /// dedicated thread, and returns within about a second of `stop`. A probe without
    /// events returns at once.
    fn watch_events(&self, sink: &GpuEventLog, stop: &AtomicBool) {
        let _ = (sink, stop);
    }
    /// The controls of simulated GPUs (load, fault injection); `None` for real ones.
    fn simulation(&self) -> Option<&simulated::SimulatedGpus> {
        None
    }
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

/// Facts about the agent itself that the cluster needs: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentFacts {
    pub version: String,
    /// Address of the agent's own API (telemetry, fault injection), as others reach it.
    pub api_addr: Option<String>,
    pub data_dir: Option<String>,
}

/// The whole static inventory of a machine.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub agent: AgentFacts,
    pub host: HostInventory,
    pub gpu_driver: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

/// Reads the host under `root` and the GPUs through `gpus`; `data_dir` is the agent's data
/// directory, whose filesystem is reported.
pub fn inventory(
    root: &Path,
    gpus: &dyn GpuProbe,
    data_dir: Option<&Path>,
) -> Result<Inventory, ProbeError> {
    let host = host::probe(root, data_dir);
    let mut list = gpus.gpus()?;
    for g in &mut list {
        if let Some(bus) = &g.pci_bus_id {
            let (numa, cpus) = host::pci_affinity(root, bus);
            g.numa_node = g.numa_node.or(numa);
            g.cpu_affinity = g.cpu_affinity.take().or(cpus);
        }
    }
    Ok(Inventory {
        agent: AgentFacts {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_addr: None,
            data_dir: data_dir.map(|d| d.display().to_string()),
        },
        host,
        gpu_driver: gpus.driver_version(),
        gpus: list,
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
