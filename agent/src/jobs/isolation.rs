//! Per-allocation isolation: a cgroup with CPU, memory and process-count limits, under
//! cgroup v2 (a writable unified hierarchy or a delegated subtree) or cgroup v1's `cpu`,
//! `memory` and `pids` controllers. Where neither is writable (or the operator says
//! `isolation = "process-group"`), the allocation runs in its own process group with
//! rlimits, and its shim enforces the memory limit itself, the way YARN's container
//! monitor does: it sums the resident memory of the group every
//! [`MEMORY_WATCH_INTERVAL`] and kills the group past the limit. What the fallback cannot
//! do: limit CPU (the scheduler's accounting still keeps the node from being
//! over-committed), cap the number of processes (RLIMIT_NPROC counts a whole uid), or
//! follow a process that leaves the group (`setsid`, `setpgid`: a shell's `set -m`).
//!
//! The agent reports which isolation it uses (`steward node show`, its log, `/metrics`),
//! and every allocation's OOM kills are read from its cgroup (or the shim's record).

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Most processes one allocation may run.
pub const PIDS_MAX: u64 = 16_384;
/// CFS period for `cpu.max` / `cpu.cfs_period_us`.
const CPU_PERIOD_US: u64 = 100_000;
/// The directory Steward's allocation cgroups live under, in each hierarchy.
const PARENT: &str = "steward";
/// How often a process-group shim sums its group's resident memory.
pub const MEMORY_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The file a process-group shim writes when it killed the task for its memory.
pub const OOM_KILLED_FILE: &str = "oom-killed";

/// Each process's RLIMIT_DATA in a process group: its private writable memory may reach
/// this before allocations fail. Above the resident limit on purpose (YARN's virtual to
/// physical ratio is 2.1): the group's resident memory is the limit, enforced by the
/// shim; this backstop only stops a single allocation burst faster than the watch.
pub fn data_rlimit_bytes(memory_mib: u64) -> u64 {
    let limit = memory_mib.saturating_mul(1024 * 1024);
    limit
        .saturating_mul(2)
        .max(limit.saturating_add(64 * 1024 * 1024))
}

/// What the operator asks for (`isolation` in the agent's config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    /// The best this host offers: cgroup v2, then v1, then a process group.
    #[default]
    Auto,
    CgroupV2,
    CgroupV1,
    ProcessGroup,
}

impl FromStr for IsolationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IsolationMode::Auto),
            "cgroup-v2" => Ok(IsolationMode::CgroupV2),
            "cgroup-v1" => Ok(IsolationMode::CgroupV1),
            "process-group" => Ok(IsolationMode::ProcessGroup),
            other => Err(format!(
                "`{other}` is not one of auto, cgroup-v2, cgroup-v1, process-group"
            )),
        }
    }
}

/// What an allocation's shim is told to do for its isolation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// `cgroup.procs` files the shim joins before starting the task.
    pub cgroup_procs: Vec<PathBuf>,
    /// Process-group isolation: the shim sets rlimits and enforces this resident-memory
    /// limit on the group itself.
    pub memory_limit_mib: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// `root` is the unified hierarchy's Steward directory.
    CgroupV2 { root: PathBuf },
    /// Steward's directory in each v1 hierarchy that is writable (memory is required).
    CgroupV1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    /// No writable cgroup: a process group, killed as a whole.
    ProcessGroup,
}

fn writable_dir(path: &Path) -> bool {
    std::fs::create_dir_all(path).is_ok() && std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

impl Isolation {
    /// The isolation `mode` asks for, on what this host offers under `cgroup_root`; an
    /// error names what the host offers when a cgroup version it lacks is asked for.
    pub fn choose(mode: IsolationMode, cgroup_root: &Path) -> Result<Self, String> {
        if mode == IsolationMode::ProcessGroup {
            return Ok(Isolation::ProcessGroup);
        }
        let found = Self::detect(cgroup_root);
        let wanted = match mode {
            IsolationMode::Auto | IsolationMode::ProcessGroup => return Ok(found),
            IsolationMode::CgroupV2 => "cgroup-v2",
            IsolationMode::CgroupV1 => "cgroup-v1",
        };
        if found.name() == wanted {
            Ok(found)
        } else {
            Err(format!(
                "isolation = \"{wanted}\" was asked for, but {} offers {} (cgroup v2 needs the cpu, memory and pids controllers delegated and writable; cgroup v1 a writable memory hierarchy; \"auto\" takes what the host has)",
                cgroup_root.display(),
                found.name()
            ))
        }
    }

    /// Finds what this host offers under `cgroup_root` (normally `/sys/fs/cgroup`).
    pub fn detect(cgroup_root: &Path) -> Self {
        // cgroup v2 mounted at the root, with the controllers we need delegated to us.
        let controllers =
            std::fs::read_to_string(cgroup_root.join("cgroup.controllers")).unwrap_or_default();
        if ["cpu", "memory", "pids"]
            .iter()
            .all(|c| controllers.split_whitespace().any(|x| x == *c))
        {
            let root = cgroup_root.join(PARENT);
            let enable = "+cpu +memory +pids";
            if writable_dir(&root)
                && std::fs::write(cgroup_root.join("cgroup.subtree_control"), enable).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), enable).is_ok()
            {
                return Isolation::CgroupV2 { root };
            }
        }
        let v1 = |name: &str| {
            let hierarchy = cgroup_root.join(name);
            let dir = hierarchy.join(PARENT);
            (hierarchy.join("cgroup.procs").exists() && writable_dir(&dir)).then_some(dir)
        };
        if let Some(memory) = v1("memory") {
            return Isolation::CgroupV1 {
                memory,
                cpu: v1("cpu"),
                pids: v1("pids"),
            };
        }
        Isolation::ProcessGroup
    }

    pub fn name(&self) -> &'static str {
        match self {
            Isolation::CgroupV2 { .. } => "cgroup-v2",
            Isolation::CgroupV1 { .. } => "cgroup-v1",
            Isolation::ProcessGroup => "process-group",
        }
    }

    fn dirs(&self, alloc: &str) -> Vec<PathBuf> {
        match self {
            Isolation::CgroupV2 { root } => vec![root.join(alloc)],
            Isolation::CgroupV1 { memory, cpu, pids } => std::iter::once(memory)
                .chain(cpu.iter())
                .chain(pids.iter())
                .map(|d| d.join(alloc))
                .collect(),
            Isolation::ProcessGroup => Vec::new(),
        }
    }

    /// Creates the allocation's cgroups with its limits; returns what its shim must do.
    pub fn create(
        &self,
        alloc: &str,
        cpu_millicores: u64,
        memory_mib: u64,
    ) -> std::io::Result<Confinement> {
        Ok(match self {
            Isolation::ProcessGroup => Confinement {
                cgroup_procs: Vec::new(),
                memory_limit_mib: Some(memory_mib),
            },
            _ => Confinement {
                cgroup_procs: self.create_cgroups(alloc, cpu_millicores, memory_mib)?,
                memory_limit_mib: None,
            },
        })
    }

    fn create_cgroups(
        &self,
        alloc: &str,
        cpu_millicores: u64,
        memory_mib: u64,
    ) -> std::io::Result<Vec<PathBuf>> {
        let memory_bytes = memory_mib.saturating_mul(1024 * 1024);
        let quota = cpu_millicores.saturating_mul(CPU_PERIOD_US) / 1000;
        match self {
            Isolation::CgroupV2 { root } => {
                let dir = root.join(alloc);
                std::fs::create_dir_all(&dir)?;
                std::fs::write(dir.join("memory.max"), memory_bytes.to_string())?;
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                std::fs::write(
                    dir.join("cpu.max"),
                    format!("{} {CPU_PERIOD_US}", quota.max(1000)),
                )?;
                std::fs::write(dir.join("pids.max"), PIDS_MAX.to_string())?;
                Ok(vec![dir.join("cgroup.procs")])
            }
            Isolation::CgroupV1 { memory, cpu, pids } => {
                let m = memory.join(alloc);
                std::fs::create_dir_all(&m)?;
                std::fs::write(m.join("memory.limit_in_bytes"), memory_bytes.to_string())?;
                // Without swap accounting this file is absent; the limit still holds RAM.
                let _ = std::fs::write(
                    m.join("memory.memsw.limit_in_bytes"),
                    memory_bytes.to_string(),
                );
                let mut procs = vec![m.join("cgroup.procs")];
                if let Some(cpu) = cpu {
                    let c = cpu.join(alloc);
                    std::fs::create_dir_all(&c)?;
                    std::fs::write(c.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    std::fs::write(c.join("cpu.cfs_quota_us"), quota.max(1000).to_string())?;
                    procs.push(c.join("cgroup.procs"));
                }
                if let Some(pids) = pids {
                    let p = pids.join(alloc);
                    std::fs::create_dir_all(&p)?;
                    std::fs::write(p.join("pids.max"), PIDS_MAX.to_string())?;
                    procs.push(p.join("cgroup.procs"));
                }
                Ok(procs)
            }
            Isolation::ProcessGroup => Ok(Vec::new()),
        }
    }

    /// Whether the kernel's OOM killer killed something in the allocation's cgroup (or,
    /// in a process group, its shim killed the task at its memory limit).
    pub fn oom_killed(&self, alloc: &str, alloc_dir: &Path) -> bool {
        let file = match self {
            Isolation::CgroupV2 { root } => root.join(alloc).join("memory.events"),
            Isolation::CgroupV1 { memory, .. } => memory.join(alloc).join("memory.oom_control"),
            Isolation::ProcessGroup => return alloc_dir.join(OOM_KILLED_FILE).exists(),
        };
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Every process in the allocation's cgroups (a task that left its process group is
    /// still here).
    pub fn pids(&self, alloc: &str) -> Vec<i32> {
        self.dirs(alloc)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// SIGKILLs everything left in the allocation's cgroups.
    pub fn kill_all(&self, alloc: &str) {
        if let Isolation::CgroupV2 { root } = self {
            if std::fs::write(root.join(alloc).join("cgroup.kill"), "1").is_ok() {
                return;
            }
        }
        for pid in self.pids(alloc) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Removes the allocation's cgroups (once empty).
    pub fn remove(&self, alloc: &str) {
        for d in self.dirs(alloc) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The process group of `pid` (`None` when it is gone).
pub fn process_group_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_group_rss(&stat).map(|(group, _)| group)
}

/// A process's proportional set size (shared pages divided among the processes that
/// share them, as a cgroup would count them once) in bytes, from `smaps_rollup`.
fn proportional_bytes(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The processes of process group `pgrp` other than `except`, and their memory in bytes:
/// the members are found in `/proc/PID/stat` (pgrp is its 5th field, rss in pages its
/// 24th); each counts its proportional set size (so pages that forked workers share are
/// counted once, not once per worker), or its rss where `smaps_rollup` is unreadable.
pub fn group_resident(pgrp: i32, except: i32) -> (Vec<i32>, u64) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let mut members = Vec::new();
    let mut bytes = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (members, bytes);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == except {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((group, rss)) = parse_stat_group_rss(&stat) {
            if group == pgrp {
                members.push(pid);
                let own = proportional_bytes(pid).unwrap_or(rss.saturating_mul(page));
                bytes = bytes.saturating_add(own);
            }
        }
    }
    (members, bytes)
}

/// `(pgrp, rss pages)` from a `/proc/PID/stat` line (the command name may hold spaces and
/// parentheses, so fields are counted after its last `)`).
fn parse_stat_group_rss(stat: &str) -> Option<(i32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    Some((fields.get(2)?.parse().ok()?, fields.get(21)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 1000000 2560 18446744073709551615 0 0";
        assert_eq!(parse_stat_group_rss(line), Some((4240, 2560)));
        assert_eq!(parse_stat_group_rss("garbage"), None);
    }

    #[test]
    fn the_own_group_is_found_with_its_memory() {
        let me = std::process::id() as i32;
        let (members, bytes) = group_resident(nix::unistd::getpgrp().as_raw(), -1);
        assert!(members.contains(&me), "{members:?}");
        assert!(bytes > 0);
    }

    #[test]
    fn modes_parse_and_a_missing_cgroup_version_is_refused_by_name() {
        assert_eq!("auto".parse(), Ok(IsolationMode::Auto));
        assert_eq!("process-group".parse(), Ok(IsolationMode::ProcessGroup));
        assert!("cgroups".parse::<IsolationMode>().is_err());
        let empty = tempfile::tempdir().expect("dir");
        // An empty directory offers no cgroup at all.
        assert_eq!(
            Isolation::choose(IsolationMode::Auto, empty.path()),
            Ok(Isolation::ProcessGroup)
        );
        let err = Isolation::choose(IsolationMode::CgroupV2, empty.path()).unwrap_err();
        assert!(err.contains("offers process-group"), "{err}");
    }

    #[test]
    fn the_data_rlimit_leaves_room_above_the_resident_limit() {
        assert_eq!(data_rlimit_bytes(1024), 2048 * 1024 * 1024);
        assert_eq!(data_rlimit_bytes(16), 80 * 1024 * 1024);
    }
}
