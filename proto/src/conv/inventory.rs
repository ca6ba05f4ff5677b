//! `steward_core::inventory::Inventory` <-> `v1::Inventory`, both ways and lossless.

use steward_core::inventory as core;

use crate::v1;

impl From<&core::Inventory> for v1::Inventory {
    fn from(i: &core::Inventory) -> Self {
        v1::Inventory {
            agent: Some(v1::AgentFacts {
                version: i.agent.version.clone(),
                api_addr: i.agent.api_addr.clone(),
                data_dir: i.agent.data_dir.clone(),
            }),
            host: Some(host_to_pb(&i.host)),
            gpu_driver: i.gpu_driver.clone(),
            gpus: i.gpus.iter().map(gpu_to_pb).collect(),
        }
    }
}

impl From<v1::Inventory> for core::Inventory {
    fn from(pb: v1::Inventory) -> Self {
        let agent = pb.agent.unwrap_or_default();
        core::Inventory {
            agent: core::AgentFacts {
                version: agent.version,
                api_addr: agent.api_addr,
                data_dir: agent.data_dir,
            },
            host: pb.host.map(host_from_pb).unwrap_or_default(),
            gpu_driver: pb.gpu_driver,
            gpus: pb.gpus.into_iter().map(gpu_from_pb).collect(),
        }
    }
}

fn host_to_pb(h: &core::HostInventory) -> v1::HostInventory {
    v1::HostInventory {
        hostname: h.hostname.clone(),
        os: h.os.clone(),
        kernel: h.kernel.clone(),
        cpu: Some(v1::CpuInfo {
            model: h.cpu.model.clone(),
            sockets: h.cpu.sockets,
            cores: h.cpu.cores,
            threads: h.cpu.threads,
            numa_nodes: h.cpu.numa_nodes,
        }),
        memory_total_bytes: h.memory_total_bytes,
        disks: h
            .disks
            .iter()
            .map(|d| v1::DiskInfo {
                device: d.device.clone(),
                model: d.model.clone(),
                serial: d.serial.clone(),
                capacity_bytes: d.capacity_bytes,
                kind: d.kind.clone(),
            })
            .collect(),
        nics: h
            .nics
            .iter()
            .map(|n| v1::NicInfo {
                name: n.name.clone(),
                mac: n.mac.clone(),
                mtu: n.mtu,
            })
            .collect(),
        data_dir_filesystem: h.data_dir_filesystem.as_ref().map(|f| v1::FilesystemInfo {
            mountpoint: f.mountpoint.clone(),
            device: f.device.clone(),
            fstype: f.fstype.clone(),
            size_bytes: f.size_bytes,
        }),
    }
}

fn host_from_pb(h: v1::HostInventory) -> core::HostInventory {
    let cpu = h.cpu.unwrap_or_default();
    core::HostInventory {
        hostname: h.hostname,
        os: h.os,
        kernel: h.kernel,
        cpu: core::CpuInfo {
            model: cpu.model,
            sockets: cpu.sockets,
            cores: cpu.cores,
            threads: cpu.threads,
            numa_nodes: cpu.numa_nodes,
        },
        memory_total_bytes: h.memory_total_bytes,
        disks: h
            .disks
            .into_iter()
            .map(|d| core::DiskInfo {
                device: d.device,
                model: d.model,
                serial: d.serial,
                capacity_bytes: d.capacity_bytes,
                kind: d.kind,
            })
            .collect(),
        nics: h
            .nics
            .into_iter()
            .map(|n| core::NicInfo {
                name: n.name,
                mac: n.mac,
                mtu: n.mtu,
            })
            .collect(),
        data_dir_filesystem: h.data_dir_filesystem.map(|f| core::FilesystemInfo {
            mountpoint: f.mountpoint,
            device: f.device,
            fstype: f.fstype,
            size_bytes: f.size_bytes,
        }),
    }
}

fn gpu_to_pb(g: &core::GpuInfo) -> v1::GpuInfo {
    v1::GpuInfo {
        index: g.index,
        uuid: g.uuid.clone(),
        name: g.name.clone(),
        serial: g.serial.clone(),
        vbios: g.vbios.clone(),
        pci_bus_id: g.pci_bus_id.clone(),
        pcie_max_gen: g.pcie_max_gen,
        pcie_max_width: g.pcie_max_width,
        memory_total_mib: g.memory_total_mib,
        power_limit_w: g.power_limit_w,
        ecc_enabled: g.ecc_enabled,
        mig_enabled: g.mig_enabled,
        mig_instances: g
            .mig_instances
            .iter()
            .flatten()
            .map(|m| v1::MigInstance {
                index: m.index,
                uuid: m.uuid.clone(),
                name: m.name.clone(),
                memory_total_mib: m.memory_total_mib,
            })
            .collect(),
        has_mig_instances: g.mig_instances.is_some(),
        compute_capability: g.compute_capability.clone(),
        slowdown_temp_c: g.slowdown_temp_c,
        shutdown_temp_c: g.shutdown_temp_c,
        numa_node: g.numa_node,
        cpu_affinity: g.cpu_affinity.clone(),
        nvlink_peers: g.nvlink_peers.clone().unwrap_or_default(),
        has_nvlink: g.nvlink_peers.is_some(),
        simulated: g.simulated,
    }
}

fn gpu_from_pb(g: v1::GpuInfo) -> core::GpuInfo {
    core::GpuInfo {
        index: g.index,
        uuid: g.uuid,
        name: g.name,
        serial: g.serial,
        vbios: g.vbios,
        pci_bus_id: g.pci_bus_id,
        pcie_max_gen: g.pcie_max_gen,
        pcie_max_width: g.pcie_max_width,
        memory_total_mib: g.memory_total_mib,
        power_limit_w: g.power_limit_w,
        ecc_enabled: g.ecc_enabled,
        mig_enabled: g.mig_enabled,
        mig_instances: g.has_mig_instances.then(|| {
            g.mig_instances
                .into_iter()
                .map(|m| core::MigInstance {
                    index: m.index,
                    uuid: m.uuid,
                    name: m.name,
                    memory_total_mib: m.memory_total_mib,
                })
                .collect()
        }),
        compute_capability: g.compute_capability,
        slowdown_temp_c: g.slowdown_temp_c,
        shutdown_temp_c: g.shutdown_temp_c,
        numa_node: g.numa_node,
        cpu_affinity: g.cpu_affinity,
        nvlink_peers: g.has_nvlink.then_some(g.nvlink_peers),
        simulated: g.simulated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_absent_and_empty_apart() {
        let inv = core::Inventory {
            agent: core::AgentFacts {
                version: "0.1.0".into(),
                api_addr: Some("10.0.0.1:7800".into()),
                data_dir: None,
            },
            host: core::HostInventory {
                hostname: Some("gpu-1".into()),
                nics: vec![core::NicInfo {
                    name: "eth0".into(),
                    mac: Some("aa:bb".into()),
                    mtu: Some(9000),
                }],
                data_dir_filesystem: Some(core::FilesystemInfo {
                    mountpoint: "/".into(),
                    device: "/dev/nvme0n1p1".into(),
                    fstype: "ext4".into(),
                    size_bytes: None,
                }),
                ..Default::default()
            },
            gpu_driver: Some("580.65".into()),
            gpus: vec![
                core::GpuInfo {
                    index: 0,
                    uuid: "GPU-a".into(),
                    nvlink_peers: Some(vec![]),
                    mig_instances: None,
                    power_limit_w: Some(700.0),
                    ..Default::default()
                },
                core::GpuInfo {
                    index: 1,
                    uuid: "GPU-b".into(),
                    nvlink_peers: None,
                    mig_instances: Some(vec![core::MigInstance {
                        index: 0,
                        uuid: Some("MIG-1".into()),
                        name: None,
                        memory_total_mib: Some(10_000),
                    }]),
                    ..Default::default()
                },
            ],
        };
        let back: core::Inventory = v1::Inventory::from(&inv).into();
        assert_eq!(back, inv);
    }
}
