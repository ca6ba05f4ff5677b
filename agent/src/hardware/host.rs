//! Host facts from procfs and sysfs under a root directory (`/` in production, a fixture
//! tree in tests). Every fact is best-effort: an unreadable file leaves the field empty.

use std::collections::BTreeSet;
use std::path::Path;

pub use steward_core::inventory::{CpuInfo, DiskInfo, FilesystemInfo, HostInventory, NicInfo};

use crate::procfs::{meminfo_bytes, mount_of, parse_mounts, statvfs_bytes};

/// NUMA node and local CPU list of a PCI device, from sysfs. `bus_id` may be NVML's
/// 8-digit-domain spelling (`00000000:18:00.0`) or sysfs's (`0000:18:00.0`).
pub fn pci_affinity(root: &Path, bus_id: &str) -> (Option<u32>, Option<String>) {
    let sysfs_id = match bus_id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => bus_id.to_string(),
    }
    .to_ascii_lowercase();
    let base = format!("sys/bus/pci/devices/{sysfs_id}");
    let numa = read(root, &format!("{base}/numa_node"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(|n| n as u32);
    (numa, read(root, &format!("{base}/local_cpulist")))
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn list(root: &Path, rel: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(rel))
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Reads everything under `root`; `data_dir`, when given, names the directory whose
/// filesystem is reported.
pub fn probe(root: &Path, data_dir: Option<&Path>) -> HostInventory {
    let meminfo = read(root, "proc/meminfo").unwrap_or_default();
    HostInventory {
        hostname: read(root, "proc/sys/kernel/hostname"),
        os: read(root, "etc/os-release").and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        }),
        kernel: read(root, "proc/sys/kernel/osrelease"),
        cpu: cpu(root),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal"),
        disks: disks(root),
        nics: nics(root),
        data_dir_filesystem: data_dir.and_then(|d| data_dir_filesystem(root, d)),
    }
}

fn data_dir_filesystem(root: &Path, data_dir: &Path) -> Option<FilesystemInfo> {
    let mounts = parse_mounts(&read(root, "proc/self/mounts")?);
    let path = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let m = mount_of(&mounts, &path)?;
    Some(FilesystemInfo {
        mountpoint: m.mountpoint.clone(),
        device: m.device.clone(),
        fstype: m.fstype.clone(),
        size_bytes: statvfs_bytes(&path).map(|(size, _, _)| size),
    })
}

fn cpu(root: &Path) -> CpuInfo {
    let text = read(root, "proc/cpuinfo").unwrap_or_default();
    let mut model = None;
    let mut threads = 0;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut socket = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" if model.is_none() => model = Some(v.to_string()),
            "physical id" => {
                socket = v.to_string();
                sockets.insert(v.to_string());
            }
            "core id" => {
                cores.insert((socket.clone(), v.to_string()));
            }
            _ => {}
        }
    }
    let numa = list(root, "sys/devices/system/node")
        .iter()
        .filter(|n| {
            n.strip_prefix("node")
                .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()) && !d.is_empty())
        })
        .count() as u32;
    CpuInfo {
        model,
        sockets: (sockets.len() as u32).max(u32::from(threads > 0)),
        cores: if cores.is_empty() {
            threads
        } else {
            cores.len() as u32
        },
        threads,
        numa_nodes: numa.max(u32::from(threads > 0)),
    }
}

fn disks(root: &Path) -> Vec<DiskInfo> {
    list(root, "sys/block")
        .into_iter()
        .filter(|d| {
            !(d.starts_with("loop")
                || d.starts_with("ram")
                || d.starts_with("zram")
                || d.starts_with("dm-"))
        })
        .map(|d| {
            let base = format!("sys/block/{d}");
            let rotational = read(root, &format!("{base}/queue/rotational"));
            let kind = if d.starts_with("nvme") {
                "nvme"
            } else if rotational.as_deref() == Some("1") {
                "hdd"
            } else {
                "ssd"
            };
            DiskInfo {
                model: read(root, &format!("{base}/device/model")),
                serial: read(root, &format!("{base}/device/serial")),
                capacity_bytes: read(root, &format!("{base}/size"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(|s| s * 512),
                kind: kind.to_string(),
                device: d,
            }
        })
        .collect()
}

/// Physical NICs: those with a bus device behind them (`/sys/class/net/X/device`) that is
/// not an SR-IOV virtual function (`device/physfn`). Bridges, veths, tunnels, bonds'
/// virtual members and virtual functions come and go with containers, VMs and VPNs; they
/// are left out so the inventory stays static.
fn nics(root: &Path) -> Vec<NicInfo> {
    list(root, "sys/class/net")
        .into_iter()
        .filter(|n| {
            let device = root.join(format!("sys/class/net/{n}/device"));
            device.exists() && !device.join("physfn").exists()
        })
        .map(|n| {
            let base = format!("sys/class/net/{n}");
            NicInfo {
                mac: read(root, &format!("{base}/address")),
                mtu: read(root, &format!("{base}/mtu")).and_then(|s| s.parse().ok()),
                name: n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    #[test]
    fn parses_a_fixture_tree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = dir.path();
        let mut cpuinfo = String::new();
        for (p, socket, core) in [
            (0, 0, 0),
            (1, 0, 1),
            (2, 1, 0),
            (3, 1, 1),
            (4, 0, 0),
            (5, 0, 1),
            (6, 1, 0),
            (7, 1, 1),
        ] {
            cpuinfo.push_str(&format!("processor\t: {p}\nmodel name\t: AMD EPYC 9654 96-Core Processor\nphysical id\t: {socket}\ncore id\t\t: {core}\n\n"));
        }
        write(r, "proc/cpuinfo", &cpuinfo);
        write(r, "proc/meminfo", "MemTotal:       2113413120 kB\nMemFree:        1000 kB\nMemAvailable:   2000000000 kB\n");
        write(r, "proc/sys/kernel/hostname", "gpu-node-17\n");
        write(r, "proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        write(
            r,
            "etc/os-release",
            "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        write(r, "sys/devices/system/node/node0/cpulist", "0-3");
        write(r, "sys/devices/system/node/node1/cpulist", "4-7");
        write(r, "sys/devices/system/node/possible", "0-1");
        write(r, "sys/block/nvme0n1/size", "7501476528");
        write(r, "sys/block/nvme0n1/device/model", "SAMSUNG MZQL23T8HCLS");
        write(r, "sys/block/nvme0n1/device/serial", "S64HNE0R");
        write(r, "sys/block/sda/size", "3907029168");
        write(r, "sys/block/sda/queue/rotational", "1");
        write(r, "sys/block/loop0/size", "8");
        write(r, "sys/class/net/eth0/address", "0c:42:a1:00:00:01");
        write(r, "sys/class/net/eth0/speed", "100000");
        write(r, "sys/class/net/eth0/operstate", "up");
        write(r, "sys/class/net/eth0/mtu", "9000");
        write(r, "sys/class/net/eth0/device/vendor", "0x15b3");
        write(r, "sys/class/net/eth1/speed", "-1");
        write(r, "sys/class/net/eth1/operstate", "down");
        write(r, "sys/class/net/eth1/device/vendor", "0x8086");
        write(r, "sys/class/net/lo/mtu", "65536");
        // Virtual interfaces come and go with containers: not inventory.
        write(r, "sys/class/net/veth1a2b/mtu", "1500");
        write(r, "sys/class/net/docker0/mtu", "1500");
        // An SR-IOV virtual function has a bus device, with a link to its physical function.
        write(r, "sys/class/net/eth0v3/device/vendor", "0x15b3");
        write(r, "sys/class/net/eth0v3/device/physfn/vendor", "0x15b3");
        write(
            r,
            "proc/self/mounts",
            "proc /proc proc rw 0 0\n/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n/dev/md0 /var/lib/steward\\040data xfs rw 0 0\n",
        );
        write(r, "sys/bus/pci/devices/0000:18:00.0/numa_node", "1");
        write(
            r,
            "sys/bus/pci/devices/0000:18:00.0/local_cpulist",
            "48-95,144-191",
        );
        write(r, "sys/bus/pci/devices/0000:2a:00.0/numa_node", "-1");

        let data_dir = tempfile::tempdir().expect("data dir");
        let h = probe(r, Some(data_dir.path()));
        assert_eq!(h.hostname.as_deref(), Some("gpu-node-17"));
        assert_eq!(h.os.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(
            h.cpu.model.as_deref(),
            Some("AMD EPYC 9654 96-Core Processor")
        );
        assert_eq!(
            (h.cpu.sockets, h.cpu.cores, h.cpu.threads, h.cpu.numa_nodes),
            (2, 4, 8, 2)
        );
        assert_eq!(h.memory_total_bytes, Some(2_113_413_120 * 1024));
        assert_eq!(h.disks.len(), 2, "loop devices are skipped: {:?}", h.disks);
        let nvme = h
            .disks
            .iter()
            .find(|d| d.device == "nvme0n1")
            .expect("nvme");
        assert_eq!(
            (nvme.kind.as_str(), nvme.capacity_bytes),
            ("nvme", Some(7_501_476_528 * 512))
        );
        assert_eq!(
            h.disks
                .iter()
                .find(|d| d.device == "sda")
                .map(|d| d.kind.as_str()),
            Some("hdd")
        );
        let names: Vec<&str> = h.nics.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["eth0", "eth1"],
            "lo and virtual interfaces are skipped"
        );
        assert_eq!(h.nics[0].mtu, Some(9000));
        let fs = h.data_dir_filesystem.expect("the data dir's filesystem");
        assert_eq!(
            (
                fs.mountpoint.as_str(),
                fs.device.as_str(),
                fs.fstype.as_str()
            ),
            ("/", "/dev/nvme0n1p2", "ext4"),
            "a temp dir lies under / in the fixture's mount table"
        );
        assert!(
            fs.size_bytes.unwrap_or(0) > 0,
            "statvfs of the real directory"
        );
        let mounts = parse_mounts(&read(r, "proc/self/mounts").expect("mounts"));
        assert_eq!(
            mounts[2].mountpoint, "/var/lib/steward data",
            "octal escapes"
        );
        assert_eq!(
            mount_of(&mounts, Path::new("/var/lib/steward data/chunks")).map(|m| m.fstype.as_str()),
            Some("xfs")
        );
        assert_eq!(
            pci_affinity(r, "00000000:18:00.0"),
            (Some(1), Some("48-95,144-191".to_string())),
            "NVML's 8-digit domain maps to sysfs's 4"
        );
        assert_eq!(
            pci_affinity(r, "0000:2A:00.0"),
            (None, None),
            "-1: no NUMA node"
        );
    }

    #[test]
    fn empty_root_gives_empty_facts_not_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = probe(dir.path(), Some(dir.path()));
        assert_eq!(h, HostInventory::default());
    }

    #[test]
    fn this_machine_has_a_cpu() {
        let h = probe(Path::new("/"), Some(Path::new("/")));
        assert!(h.cpu.threads >= 1 && h.memory_total_bytes.unwrap_or(0) > 0);
    }
}
