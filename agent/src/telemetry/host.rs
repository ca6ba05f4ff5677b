//! Host counters and gauges from procfs, read under a root directory (`/`, or a fixture tree
//! in tests): CPU time per mode, load, memory, filesystems, disk I/O and NIC counters.
//! Parsers take the file's text so that they are tested on fixtures.

use std::path::Path;

use serde::Serialize;

use crate::procfs::{meminfo_bytes, mount_of, parse_mounts, statvfs_bytes, Mount};

/// `/proc/stat` counts in USER_HZ, which Linux fixes at 100 for user space on every
/// architecture it exposes `/proc/stat` on.
pub const USER_HZ: f64 = 100.0;

/// Filesystem types that hold data (node_exporter drops the pseudo ones the same way).
const DATA_FSTYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "nfs", "nfs4", "ceph", "lustre",
    "gpfs", "overlay", "tmpfs",
];

/// Most filesystems, disks and NICs reported; a machine with more reports the first ones.
pub const MAX_HOST_DEVICES: usize = 64;

/// Seconds one CPU spent in each mode since boot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuTimes {
    pub cpu: u32,
    /// (mode, seconds), modes named as node_exporter names them.
    pub modes: Vec<(&'static str, f64)>,
}

impl CpuTimes {
    fn total(&self) -> f64 {
        self.modes.iter().map(|(_, s)| s).sum()
    }
    fn idle(&self) -> f64 {
        self.modes
            .iter()
            .filter(|(m, _)| *m == "idle" || *m == "iowait")
            .map(|(_, s)| s)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilesystemSample {
    pub device: String,
    pub mountpoint: String,
    pub fstype: String,
    pub size_bytes: u64,
    pub avail_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskIo {
    pub device: String,
    pub reads_completed: u64,
    pub writes_completed: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub io_time_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NicCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
    /// Link state and negotiated speed (sysfs `operstate`, `speed`); they move, so they are
    /// telemetry, not inventory. `None` when unreadable (a down link has no speed).
    pub oper_state: Option<String>,
    pub speed_mbps: Option<u64>,
}

/// One reading of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSample {
    pub cpus: Vec<CpuTimes>,
    /// Busy share of all CPUs since the previous reading, in percent.
    pub cpu_util_pct: Option<f64>,
    pub load: Option<[f64; 3]>,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub filesystems: Vec<FilesystemSample>,
    /// Index in `filesystems` of the one holding the agent's data dir.
    pub data_dir_filesystem: Option<usize>,
    pub disks: Vec<DiskIo>,
    pub nics: Vec<NicCounters>,
}

/// Per-CPU lines of `/proc/stat` (the aggregate `cpu` line is left out).
pub fn parse_stat(text: &str) -> Vec<CpuTimes> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: u32 = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let modes = MODES
                .iter()
                .zip(f)
                .filter_map(|(m, v)| Some((*m, v.parse::<u64>().ok()? as f64 / USER_HZ)))
                .collect();
            Some(CpuTimes { cpu, modes })
        })
        .collect()
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// `/proc/diskstats`, whole devices only (partitions and virtual devices are left out).
pub fn parse_diskstats(text: &str) -> Vec<DiskIo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.get(2)?;
            let virtual_dev = ["loop", "ram", "zram", "dm-", "sr"]
                .iter()
                .any(|p| name.starts_with(p));
            let partition = is_partition(name);
            if virtual_dev || partition {
                return None;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            Some(DiskIo {
                device: name.to_string(),
                reads_completed: n(3)?,
                read_bytes: n(5)? * 512,
                writes_completed: n(7)?,
                written_bytes: n(9)? * 512,
                io_time_seconds: n(12)? as f64 / 1000.0,
            })
        })
        .collect()
}

/// `sda1`, `vdb2`, `nvme0n1p2`, `mmcblk0p1` are partitions; `sda`, `nvme0n1` are not.
fn is_partition(name: &str) -> bool {
    if name.starts_with("nvme") || name.starts_with("mmcblk") {
        match name.rfind('p') {
            Some(i) if i > 3 => {
                let tail = &name[i + 1..];
                !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit())
            }
            _ => false,
        }
    } else {
        name.ends_with(|c: char| c.is_ascii_digit())
    }
}

/// `/proc/net/dev`, loopback left out.
pub fn parse_net_dev(text: &str) -> Vec<NicCounters> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            Some(NicCounters {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
                oper_state: None,
                speed_mbps: None,
            })
        })
        .collect()
}

/// Busy percentage of all CPUs between two readings.
pub fn cpu_util_pct(before: &[CpuTimes], after: &[CpuTimes]) -> Option<f64> {
    let sum = |c: &[CpuTimes]| -> (f64, f64) {
        c.iter()
            .fold((0.0, 0.0), |(t, i), x| (t + x.total(), i + x.idle()))
    };
    let (t0, i0) = sum(before);
    let (t1, i1) = sum(after);
    let dt = t1 - t0;
    (dt > 0.0).then(|| ((dt - (i1 - i0)) / dt * 100.0).clamp(0.0, 100.0))
}

/// Sizes of the filesystem mounted as `m`, stat'ed through `path`.
fn fs_sample(m: &Mount, path: &Path) -> Option<FilesystemSample> {
    let (size_bytes, avail_bytes, free_bytes) = statvfs_bytes(path)?;
    Some(FilesystemSample {
        device: m.device.clone(),
        mountpoint: m.mountpoint.clone(),
        fstype: m.fstype.clone(),
        size_bytes,
        avail_bytes,
        free_bytes,
    })
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_default()
}

/// Reads the host under `root`. `previous` gives the CPU times to compute utilisation
/// from; `data_dir` names the directory whose filesystem is flagged.
pub fn sample(root: &Path, previous: Option<&HostSample>, data_dir: Option<&Path>) -> HostSample {
    let cpus = parse_stat(&read(root, "proc/stat"));
    let meminfo = read(root, "proc/meminfo");
    let mounts = parse_mounts(&read(root, "proc/self/mounts"));
    let mut seen = std::collections::BTreeSet::new();
    let mut filesystems = Vec::new();
    for m in &mounts {
        if !DATA_FSTYPES.contains(&m.fstype.as_str())
            || (m.fstype == "tmpfs" && m.mountpoint != "/tmp")
            || !seen.insert(m.mountpoint.clone())
            || filesystems.len() >= MAX_HOST_DEVICES
        {
            continue;
        }
        if let Some(f) = fs_sample(m, &root.join(m.mountpoint.trim_start_matches('/'))) {
            filesystems.push(f);
        }
    }
    let data_dir_filesystem = data_dir.and_then(|d| {
        let path = d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
        let m = mount_of(&mounts, &path)?;
        if let Some(i) = filesystems
            .iter()
            .position(|f| f.mountpoint == m.mountpoint)
        {
            return Some(i);
        }
        // A filesystem type not in the list above: report it anyway, it holds our data.
        filesystems.push(fs_sample(m, &path)?);
        Some(filesystems.len() - 1)
    });
    let mut disks = parse_diskstats(&read(root, "proc/diskstats"));
    disks.truncate(MAX_HOST_DEVICES);
    let mut nics = parse_net_dev(&read(root, "proc/net/dev"));
    nics.truncate(MAX_HOST_DEVICES);
    for n in &mut nics {
        let base = format!("sys/class/net/{}", n.name);
        let text = |f: &str| {
            std::fs::read_to_string(root.join(format!("{base}/{f}")))
                .ok()
                .map(|s| s.trim().to_string())
        };
        n.oper_state = text("operstate");
        n.speed_mbps = text("speed")
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .map(|s| s as u64);
    }
    HostSample {
        cpu_util_pct: previous.and_then(|p| cpu_util_pct(&p.cpus, &cpus)),
        cpus,
        load: parse_loadavg(&read(root, "proc/loadavg")),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal"),
        memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable"),
        filesystems,
        data_dir_filesystem,
        disks,
        nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_fixtures() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 60 0 30 400 10 0 0 0 0 0\ncpu1 40 0 20 400 40 0 0 0 0 0\nintr 1 2 3\n";
        let cpus = parse_stat(stat);
        assert_eq!(cpus.len(), 2, "the aggregate line is left out");
        assert_eq!(cpus[0].modes[0], ("user", 0.6));
        assert_eq!(cpus[1].modes[4], ("iowait", 0.4));
        let later = parse_stat("cpu0 160 0 30 400 10 0 0 0\ncpu1 40 0 20 500 40 0 0 0\n");
        let util = cpu_util_pct(&cpus, &later).expect("util");
        assert!((util - 50.0).abs() < 1e-9, "{util}");

        assert_eq!(
            parse_loadavg("0.52 1.00 2.25 3/1234 5678\n"),
            Some([0.52, 1.0, 2.25])
        );
        assert_eq!(parse_loadavg("garbage"), None);
        assert_eq!(
            meminfo_bytes("MemTotal: 16 kB\nMemAvailable:   8 kB\n", "MemAvailable"),
            Some(8192)
        );

        let diskstats = "   8       0 sda 1000 0 2048 10 500 0 4096 20 0 3000 30 0 0 0 0\n   8       1 sda1 10 0 20 1 5 0 40 2 0 30 3 0 0 0 0\n 259       0 nvme0n1 7 0 8 1 9 0 10 1 0 1500 2\n 259       1 nvme0n1p1 7 0 8 1 9 0 10 1 0 15 2\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n";
        let disks = parse_diskstats(diskstats);
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(
            names,
            ["sda", "nvme0n1"],
            "partitions and loop devices are left out"
        );
        assert_eq!(
            (
                disks[0].read_bytes,
                disks[0].written_bytes,
                disks[0].io_time_seconds
            ),
            (2048 * 512, 4096 * 512, 3.0)
        );

        let net = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 5000 40 2 1 0 0 0 0 7000 50 3 4 0 0 0 0\n";
        let nics = parse_net_dev(net);
        assert_eq!(nics.len(), 1, "loopback is left out");
        assert_eq!(
            (
                nics[0].rx_bytes,
                nics[0].rx_errors,
                nics[0].tx_bytes,
                nics[0].tx_dropped
            ),
            (5000, 2, 7000, 4)
        );
    }

    #[test]
    fn samples_a_fixture_tree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let r = dir.path();
        let put = |rel: &str, text: &str| {
            let p = r.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        };
        put("proc/stat", "cpu0 100 0 100 800 0 0 0 0\n");
        put("proc/loadavg", "1.5 1.0 0.5 1/10 99\n");
        put("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 400 kB\n");
        // The fixture's root holds a "data" directory, mounted as its own filesystem.
        std::fs::create_dir_all(r.join("data")).expect("mkdir");
        put(
            "proc/self/mounts",
            "sysfs /sys sysfs rw 0 0\n/dev/sdb1 /data ext4 rw 0 0\n",
        );
        let s = sample(r, None, None);
        assert_eq!(s.cpus.len(), 1);
        assert_eq!(s.cpu_util_pct, None, "no previous reading");
        assert_eq!(s.load, Some([1.5, 1.0, 0.5]));
        assert_eq!(
            (s.memory_total_bytes, s.memory_available_bytes),
            (Some(1_024_000), Some(409_600))
        );
        assert_eq!(s.filesystems.len(), 1, "pseudo filesystems are left out");
        assert_eq!(s.filesystems[0].mountpoint, "/data");
        assert!(s.filesystems[0].size_bytes > 0);
        put("proc/stat", "cpu0 200 0 100 900 0 0 0 0\n");
        let next = sample(r, Some(&s), None);
        assert_eq!(next.cpu_util_pct, Some(50.0));
    }

    #[test]
    fn this_machine_reports_its_data_dir_filesystem() {
        let data = tempfile::tempdir().expect("temp dir");
        let s = sample(Path::new("/"), None, Some(data.path()));
        let i = s.data_dir_filesystem.expect("the data dir's filesystem");
        assert!(s.filesystems[i].size_bytes > 0 && !s.cpus.is_empty());
    }
}
