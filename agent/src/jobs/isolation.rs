//! Per-allocation isolation: a cgroup with CPU, memory and process-count limits, under
//! cgroup v2 (a writable unified hierarchy or a delegated subtree) or cgroup v1's `cpu`,
//! `memory` and `pids` controllers; where neither is writable, the allocation runs in its
//! own process group only. The agent reports which one it uses (`steward node show`, logs,
//! `/metrics`), and every allocation's OOM kills are read from its cgroup.

use std::path::{Path, PathBuf};

/// Most processes one allocation may run.
pub const PIDS_MAX: u64 = 16_384;
/// CFS period for `cpu.max` / `cpu.cfs_period_us`.
const CPU_PERIOD_US: u64 = 100_000;
/// The directory Steward's allocation cgroups live under, in each hierarchy.
const PARENT: &str = "steward";

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

    /// Creates the allocation's cgroups with its limits; returns the files the shim writes
    /// its pid to.
    pub fn create(
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

    /// Whether the kernel's OOM killer killed something in the allocation's cgroup.
    pub fn oom_killed(&self, alloc: &str) -> bool {
        let file = match self {
            Isolation::CgroupV2 { root } => root.join(alloc).join("memory.events"),
            Isolation::CgroupV1 { memory, .. } => memory.join(alloc).join("memory.oom_control"),
            Isolation::ProcessGroup => return false,
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
