//! A machine's static inventory, as its agent reports it and the cluster state stores it:
//! typed, so the scheduler and operators read GPU model, memory, NUMA node and NVLink
//! peers directly.
//!
//! Static facts only: what the machine *has*. Anything that moves on a healthy machine
//! (current PCIe link width and generation, which drop at idle; NIC link state and speed;
//! free space) is telemetry, or every idle GPU would make its agent register again. Virtual
//! network interfaces (bridges, veths, tunnels) are left out for the same reason.
//!
//! Fields a machine does not support are `None`, not errors. The JSON spelling (what
//! `steward agent --print-inventory` prints, and what format-1 registrations carried) is
//! the serde one; `alias` keeps format-1 field names readable.

use serde::{Deserialize, Serialize};

/// The whole static inventory of a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    pub agent: AgentFacts,
    pub host: HostInventory,
    pub gpu_driver: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

/// Facts about the agent itself that the cluster needs: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentFacts {
    pub version: String,
    /// Address of the agent's own API (telemetry, fault injection), as others reach it.
    pub api_addr: Option<String>,
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostInventory {
    pub hostname: Option<String>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub cpu: CpuInfo,
    pub memory_total_bytes: Option<u64>,
    pub disks: Vec<DiskInfo>,
    /// Physical network interfaces (virtual ones are left out).
    pub nics: Vec<NicInfo>,
    /// The filesystem holding the agent's data dir (where chunks will live).
    pub data_dir_filesystem: Option<FilesystemInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CpuInfo {
    pub model: Option<String>,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    pub numa_nodes: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskInfo {
    pub device: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub capacity_bytes: Option<u64>,
    /// "nvme", "ssd" or "hdd".
    pub kind: String,
}

/// A physical network interface. Its link state and speed are telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NicInfo {
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesystemInfo {
    pub mountpoint: String,
    pub device: String,
    pub fstype: String,
    /// Capacity, from statvfs; `None` when the mount cannot be stat'ed.
    pub size_bytes: Option<u64>,
}

/// Static facts of one GPU. Fields the GPU does not support are `None`, not errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    /// The model as NVML names it ("NVIDIA H100 80GB HBM3").
    pub name: String,
    pub serial: Option<String>,
    pub vbios: Option<String>,
    /// NVML's spelling: `00000000:18:00.0`.
    pub pci_bus_id: Option<String>,
    /// The highest PCIe generation and width the GPU and slot support (the current link,
    /// which drops at idle, is telemetry).
    #[serde(alias = "pcie_gen")]
    pub pcie_max_gen: Option<u32>,
    #[serde(alias = "pcie_width")]
    pub pcie_max_width: Option<u32>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigInstance {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub memory_total_mib: Option<u64>,
}

impl Inventory {
    /// Reads a format-1 registration's JSON document. A document that does not parse gives
    /// an empty inventory (format 1 stored it opaque, so it was never checked).
    pub fn from_json_lenient(json: &[u8]) -> Inventory {
        serde_json::from_slice(json).unwrap_or_default()
    }

    /// Groups of GPU indexes connected by NVLink (connected components of the NVLink
    /// graph), each sorted; GPUs without NVLink are alone in their group.
    pub fn nvlink_groups(&self) -> Vec<Vec<u32>> {
        let by_bus: std::collections::BTreeMap<&str, u32> = self
            .gpus
            .iter()
            .filter_map(|g| Some((g.pci_bus_id.as_deref()?, g.index)))
            .collect();
        let mut group: std::collections::BTreeMap<u32, u32> =
            self.gpus.iter().map(|g| (g.index, g.index)).collect();
        fn root(group: &std::collections::BTreeMap<u32, u32>, mut i: u32) -> u32 {
            while group.get(&i).is_some_and(|p| *p != i) {
                i = group[&i];
            }
            i
        }
        for g in &self.gpus {
            for peer in g.nvlink_peers.iter().flatten() {
                if let Some(&p) = by_bus.get(peer.as_str()) {
                    let (a, b) = (root(&group, g.index), root(&group, p));
                    if a != b {
                        group.insert(a.max(b), a.min(b));
                    }
                }
            }
        }
        let mut out: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
        for g in &self.gpus {
            out.entry(root(&group, g.index)).or_default().push(g.index);
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_json_reads_with_old_field_names_and_extra_fields() {
        let json = br#"{"agent":{"api_addr":"10.0.0.1:7800","version":"0.1.0"},
            "gpus":[{"index":0,"uuid":"GPU-a","name":"NVIDIA H100 80GB HBM3","pcie_gen":5,"pcie_width":16,
                     "pci_bus_id":"00000000:18:00.0","nvlink_peers":["00000000:28:00.0"],"simulated":true},
                    {"index":1,"uuid":"GPU-b","name":"NVIDIA H100 80GB HBM3",
                     "pci_bus_id":"00000000:28:00.0","nvlink_peers":["00000000:18:00.0"]},
                    {"index":2,"uuid":"GPU-c","name":"NVIDIA H100 80GB HBM3"}],
            "host":{"nics":[{"name":"eth0","mac":"aa","speed_mbps":100000,"state":"up","mtu":1500}]}}"#;
        let inv = Inventory::from_json_lenient(json);
        assert_eq!(inv.gpus[0].pcie_max_gen, Some(5));
        assert_eq!(inv.gpus[0].pcie_max_width, Some(16));
        assert_eq!(inv.host.nics[0].mtu, Some(1500));
        assert_eq!(inv.agent.api_addr.as_deref(), Some("10.0.0.1:7800"));
        assert_eq!(inv.nvlink_groups(), vec![vec![0, 1], vec![2]]);
        assert_eq!(
            Inventory::from_json_lenient(b"not json"),
            Inventory::default()
        );
    }
}
