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

pub use steward_core::inventory::{AgentFacts, GpuInfo, HostInventory, Inventory, MigInstance};

use crate::telemetry::events::GpuEventLog;

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
    /// The PCIe link as it is now (it drops at idle to save power).
    pub pcie_link_gen: Option<u32>,
    pub pcie_link_width: Option<u32>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory holds static facts only: a GPU going busy or idle (its PCIe link
    /// changes speed) does not change it, so the agent does not register again.
    #[test]
    fn load_changes_telemetry_not_inventory() {
        let sim = simulated::SimulatedGpus::parse("H100:2", "stable").expect("sim");
        let root = tempfile::tempdir().expect("root");
        let idle = inventory(root.path(), &sim, None).expect("inventory");
        let idle_link = sim.sample(0).expect("sample").pcie_link_gen;
        sim.set_load(0, 90, None).expect("load");
        let busy = inventory(root.path(), &sim, None).expect("inventory");
        let busy_link = sim.sample(0).expect("sample").pcie_link_gen;
        assert_ne!(idle_link, busy_link, "the current link moves with load");
        assert_eq!(
            serde_json::to_vec(&idle).expect("json"),
            serde_json::to_vec(&busy).expect("json"),
            "the inventory must not"
        );
        assert_eq!(idle.gpus[0].pcie_max_gen, Some(5));
    }
}
