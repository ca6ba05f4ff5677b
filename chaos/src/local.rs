//! A cluster the harness starts itself for a run ([`LocalNodes`]): every controller and
//! agent in its own network namespace of a [`Lab`], as the harness's child processes.
//! Partitions are nftables tables inside the namespaces, link impairments tc netem on the
//! hosts' links, disk full a size-limited tmpfs under an agent's data dir, clock skew
//! libfaketime with one offset file per process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};

use crate::check::placement::TaskRun;
use crate::harness::cluster::{agent_tls_flags, steward_bin, AgentGuard, ProcCluster};
use crate::harness::netns::{self, Direction, Host, Lab, Netem};
use crate::nodes::{Nodes, StoppedControllers, Victim};
use crate::scenario::{Action, Scenario};
use crate::workload::jobs;

/// The port every agent's API listens on, at its lab host's address.
pub(crate) const LAB_AGENT_API_PORT: u16 = 7600;
/// Liveness of a local run with agents: quick, so that an agent fault is acted on within
/// seconds (the agents fence by the same `down_after`).
const LIVENESS_TOML: &str = "[liveness]\nsuspect_after = \"1s\"\ndown_after = \"4s\"\n";
const AGENT_FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--controller-down-after",
    "4s",
];
/// Storage of a local run with objects: repair at once, so that bit-rot is mended within a
/// scenario's bounds. (The runner starts a scrub pass on the damaged agents right after
/// the rot: the agents' own scrub interval is an hour or more.)
const STORAGE_TOML: &str = "[storage]\nrepair_delay = \"0s\"\n";
const OBJECT_AGENT_FLAGS: &[&str] = &["--chunk-free-floor", "64MiB"];
/// Size of each agent's data filesystem in a scenario with `disk-full` (a tmpfs mounted
/// on the agent's data dir), and the agents' free-space floor there.
const DISK_FULL_FS_BYTES: u64 = 512 << 20;
/// Where Debian's `faketime` package puts the library (`clock-skew`).
const LIBFAKETIME_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

/// A local cluster in network namespaces. Dropped in field order: the agents (with their
/// tasks) first, then the controllers and their dirs, the clock files, the lab.
pub struct LocalNodes {
    agents: Mutex<BTreeMap<u32, LabAgent>>,
    cluster: Mutex<ProcCluster>,
    /// With `clock-skew`: one libfaketime offset file per process (`controller-ID`,
    /// `agent-I`), holding its offset in seconds ("+0" when not skewed).
    clocks: Option<tempfile::TempDir>,
    lab: Arc<Lab>,
    api: BTreeMap<u64, String>,
    /// Controller id -> its lab host.
    hosts: BTreeMap<u64, Host>,
}

impl LocalNodes {
    /// Makes the lab and starts the scenario's controllers in it (a leader is not waited
    /// for); the agents are made but not started. `failpoints`: the `FAILPOINTS` of every
    /// process (a reintroduced bug).
    pub fn start(scenario: &Scenario, failpoints: Option<String>) -> anyhow::Result<Self> {
        if let Some(why) = netns::unavailable() {
            bail!("a local run puts every controller in its own network namespace, which cannot be done here: {why}");
        }
        let disk_full = scenario.faults.iter().any(|f| f.action == Action::DiskFull);
        let clock_skew = scenario
            .faults
            .iter()
            .any(|f| f.action == Action::ClockSkew);
        let faketime = if clock_skew {
            LIBFAKETIME_PATHS
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
                .ok_or_else(|| {
                    anyhow!(
                        "scenario {}: clock-skew needs libfaketime (Debian package `faketime`; `make deps` installs it), looked in {}",
                        scenario.name,
                        LIBFAKETIME_PATHS.join(", ")
                    )
                })?
        } else {
            String::new()
        };
        let clocks = if clock_skew {
            Some(
                tempfile::Builder::new()
                    .prefix("steward-chaos-clocks")
                    .tempdir()?,
            )
        } else {
            None
        };
        let lab = Arc::new(Lab::new()?);
        let mut env_vars = Vec::new();
        if let Some(f) = failpoints {
            env_vars.push(("FAILPOINTS".to_string(), f));
        }
        let mut controller_env = env_vars.clone();
        if let Some(clocks) = &clocks {
            for id in 1..=u64::from(scenario.cluster.controllers) {
                std::fs::write(clocks.path().join(format!("controller-{id}")), "+0")?;
            }
            let file = clocks.path().join("controller-{id}");
            controller_env.extend(faketime_env(&faketime, &file.display().to_string()));
        }
        let with_agents = scenario.cluster.agents > 0;
        let cluster = ProcCluster::start_in_lab(
            lab.clone(),
            u64::from(scenario.cluster.controllers),
            &format!(
                "{}{}",
                if with_agents { LIVENESS_TOML } else { "" },
                if scenario.workload.objects.is_some() {
                    STORAGE_TOML
                } else {
                    ""
                }
            ),
            &controller_env,
        )?;
        let mut agents = BTreeMap::new();
        for i in 1..=scenario.cluster.agents {
            let host = lab.add_host(&format!("a{i}"))?;
            let data_dir = cluster.dir.path().join(format!("agent-{i}"));
            let fs = if disk_full {
                Some(TmpfsMount::new(&data_dir, DISK_FULL_FS_BYTES)?)
            } else {
                None
            };
            let mut agent_env = env_vars.clone();
            if let Some(clocks) = &clocks {
                let file = clocks.path().join(format!("agent-{i}"));
                std::fs::write(&file, "+0")?;
                agent_env.extend(faketime_env(&faketime, &file.display().to_string()));
            }
            agents.insert(
                i,
                LabAgent {
                    host,
                    guard: AgentGuard {
                        data_dir,
                        child: None,
                    },
                    log: cluster.dir.path().join(format!("agent-{i}.log")),
                    gpus: scenario.cluster.gpus.clone(),
                    env: agent_env,
                    extra: if scenario.workload.objects.is_some() {
                        OBJECT_AGENT_FLAGS
                    } else {
                        &[]
                    },
                    _fs: fs,
                },
            );
        }
        let api = cluster
            .nodes
            .iter()
            .map(|(id, n)| (*id, n.api_addr.clone()))
            .collect();
        let hosts = cluster
            .nodes
            .iter()
            .filter_map(|(id, n)| n.host.clone().map(|h| (*id, h)))
            .collect();
        Ok(LocalNodes {
            agents: Mutex::new(agents),
            cluster: Mutex::new(cluster),
            clocks,
            lab,
            api,
            hosts,
        })
    }

    /// The run's directory: the controllers' and agents' data and logs.
    pub fn dir(&self) -> std::path::PathBuf {
        self.cluster().dir.path().to_path_buf()
    }

    pub fn lab(&self) -> &Arc<Lab> {
        &self.lab
    }

    pub(crate) fn cluster(&self) -> std::sync::MutexGuard<'_, ProcCluster> {
        self.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lab_agents(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, LabAgent>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn controllers_arg(&self) -> String {
        self.api.values().cloned().collect::<Vec<_>>().join(",")
    }

    fn host_of(&self, v: Victim) -> Option<Host> {
        match v {
            Victim::Controller(id) => self.hosts.get(&id).cloned(),
            Victim::Agent(i) => self.lab_agents().get(&i).map(|a| a.host.clone()),
        }
    }

    fn hosts_of(&self, victims: &[Victim]) -> Vec<Host> {
        victims.iter().filter_map(|v| self.host_of(*v)).collect()
    }

    fn pid_of(&self, v: Victim) -> Option<u32> {
        match v {
            Victim::Controller(id) => self.cluster().pid(id),
            Victim::Agent(i) => self
                .lab_agents()
                .get(&i)
                .and_then(|a| a.guard.child.as_ref().map(|c| c.id())),
        }
    }

    fn data_dir(&self, agent: u32) -> Result<std::path::PathBuf, String> {
        self.lab_agents()
            .get(&agent)
            .map(|a| a.guard.data_dir.clone())
            .ok_or_else(|| format!("no agent {agent}"))
    }
}

impl Nodes for LocalNodes {
    fn describe(&self) -> String {
        format!(
            "a local cluster in network namespaces, in {}",
            self.dir().display()
        )
    }

    fn controllers(&self) -> BTreeMap<u64, String> {
        self.api.clone()
    }

    fn controller_addrs(&self, id: u64) -> Option<(String, String)> {
        let c = self.cluster();
        let n = c.nodes.get(&id)?;
        Some((n.raft_addr.clone(), n.api_addr.clone()))
    }

    fn agents(&self) -> Vec<u32> {
        self.lab_agents().keys().copied().collect()
    }

    fn node_id(&self, agent: u32) -> Option<String> {
        self.lab_agents().get(&agent).and_then(LabAgent::node_id)
    }

    fn task_runs(&self, agent: u32) -> Vec<TaskRun> {
        let agents = self.lab_agents();
        let Some(a) = agents.get(&agent) else {
            return Vec::new();
        };
        a.node_id()
            .map(|node| jobs::collect_runs(&node, &a.guard.data_dir))
            .unwrap_or_default()
    }

    fn kill(&self, v: Victim) -> Result<(), String> {
        match v {
            Victim::Controller(id) => self.cluster().kill(id),
            Victim::Agent(i) => {
                if let Some(mut child) = self
                    .lab_agents()
                    .get_mut(&i)
                    .and_then(|a| a.guard.child.take())
                {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        Ok(())
    }

    fn start(&self, v: Victim) -> Result<(), String> {
        match v {
            Victim::Controller(id) => {
                // One lock for the look and the start: two starts cannot both spawn.
                let mut cluster = self.cluster();
                if cluster.is_alive(id) {
                    return Ok(());
                }
                cluster
                    .spawn(id)
                    .map_err(|e| format!("starting controller {id}: {e:#}"))
            }
            Victim::Agent(i) => {
                let controllers = self.controllers_arg();
                let mut agents = self.lab_agents();
                let agent = agents.get_mut(&i).ok_or_else(|| format!("no agent {i}"))?;
                if agent.guard.is_running() {
                    return Ok(());
                }
                agent.guard.child = Some(
                    agent
                        .spawn(&controllers)
                        .map_err(|e| format!("starting agent {i}: {e:#}"))?,
                );
                Ok(())
            }
        }
    }

    fn pause(&self, v: Victim) -> Result<(), String> {
        let pid = self
            .pid_of(v)
            .ok_or_else(|| format!("{} is not running", v.name()))?;
        crate::fault::signal(pid, nix::sys::signal::Signal::SIGSTOP)
    }

    fn resume(&self, v: Victim) -> Result<(), String> {
        match self.pid_of(v) {
            Some(pid) => crate::fault::signal(pid, nix::sys::signal::Signal::SIGCONT),
            // Killed meanwhile: nothing left paused.
            None => Ok(()),
        }
    }

    fn partition(&self, victims: &[Victim], direction: Direction) -> Result<u64, String> {
        let mine = self.hosts_of(victims);
        let others: Vec<Host> = self
            .lab
            .hosts()
            .into_iter()
            .filter(|h| !mine.contains(h))
            .collect();
        let (a, b) = match direction {
            Direction::Both => (mine, others),
            Direction::OneWay => (others, mine),
        };
        self.lab
            .partition(&a, &b, direction)
            .map_err(|e| format!("{e:#}"))
    }

    fn heal(&self, id: u64) -> Result<(), String> {
        self.lab.heal(id).map_err(|e| format!("{e:#}"))
    }

    fn netem_unavailable(&self) -> Option<String> {
        self.lab.netem_unavailable()
    }

    fn netem(&self, v: Victim, netem: &Netem) -> Result<(), String> {
        let host = self
            .host_of(v)
            .ok_or_else(|| format!("{} has no host", v.name()))?;
        self.lab.netem(&host, netem).map_err(|e| format!("{e:#}"))
    }

    fn clear_netem(&self, v: Victim) -> Result<(), String> {
        let host = self
            .host_of(v)
            .ok_or_else(|| format!("{} has no host", v.name()))?;
        self.lab.clear_netem(&host).map_err(|e| format!("{e:#}"))
    }

    fn bit_rot(&self, agent: u32, count: usize, seed: u64) -> Result<usize, String> {
        let store = self.data_dir(agent)?.join("chunks");
        crate::fault::bit_rot(&store, count, seed).map(|r| r.len())
    }

    fn fill_disk(&self, agent: u32) -> Result<(), String> {
        fill_filesystem(&self.data_dir(agent)?).map(|_| ())
    }

    fn free_disk(&self, agent: u32) -> Result<(), String> {
        let fill = self.data_dir(agent)?.join(FILL_FILE);
        match std::fs::remove_file(&fill) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("{}: {e}", fill.display()))
            }
            _ => Ok(()),
        }
    }

    fn clock_skew_unavailable(&self) -> Option<String> {
        self.clocks
            .is_none()
            .then(|| "the run was not started for clock-skew (no clock files)".to_string())
    }

    fn set_clock(&self, v: Victim, offset: &str) -> Result<(), String> {
        let clocks = self
            .clocks
            .as_ref()
            .ok_or("no clock files: the run was not started for clock-skew")?;
        let file = clocks.path().join(match v {
            Victim::Controller(id) => format!("controller-{id}"),
            Victim::Agent(i) => format!("agent-{i}"),
        });
        std::fs::write(&file, offset).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn leaderships(&self) -> Vec<(u64, u64)> {
        self.cluster().leaderships()
    }

    fn stop_controllers(&self) -> Result<StoppedControllers, String> {
        let mut c = self.cluster();
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in &ids {
            c.kill(*id);
        }
        Ok(StoppedControllers {
            data_dirs: ids
                .iter()
                .map(|id| (*id, c.node(*id).data_dir.clone()))
                .collect(),
            _copy: None,
        })
    }

    fn after_replay(&self) -> Result<(), String> {
        Ok(())
    }
}

/// An agent of a local run: on lab host `a<i>`, killed with its tasks when dropped.
pub(crate) struct LabAgent {
    pub(crate) host: Host,
    pub(crate) guard: AgentGuard,
    log: std::path::PathBuf,
    gpus: String,
    /// Extra environment (`FAILPOINTS`).
    env: Vec<(String, String)>,
    /// Extra flags (the scrubber's pace when objects run).
    extra: &'static [&'static str],
    /// With `disk-full`: the size-limited filesystem on its data dir, unmounted after
    /// the agent is killed (fields drop in order).
    _fs: Option<TmpfsMount>,
}

/// A tmpfs mounted on a directory; unmounted (lazily, should something still hold it)
/// when dropped.
pub(crate) struct TmpfsMount {
    dir: std::path::PathBuf,
}

impl TmpfsMount {
    pub(crate) fn new(dir: &std::path::Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "chaos-disk"])
            .arg(dir)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting a {bytes}-byte tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(TmpfsMount {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .output();
    }
}

/// The file a `disk-full` fault fills an agent's data filesystem with.
const FILL_FILE: &str = "chaos-fill";

/// Fills the filesystem of `dir` with one file ([`FILL_FILE`]), in 1 MiB writes until it
/// refuses more; returns the file and its size.
fn fill_filesystem(dir: &std::path::Path) -> Result<(std::path::PathBuf, u64), String> {
    use std::io::Write;
    let path = dir.join(FILL_FILE);
    let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let block = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let _ = f.sync_all();
    Ok((path, written))
}

impl LabAgent {
    /// The command that starts it (not yet spawned).
    pub(crate) fn command(&self, controllers: &str) -> anyhow::Result<std::process::Command> {
        let data_dir = &self.guard.data_dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = self.host.command(steward_bin());
        cmd.args(["agent", "--data-dir"])
            .arg(data_dir)
            .args(["--controllers", controllers, "--simulate-gpus", &self.gpus])
            .args([
                "--api-addr",
                &format!("{}:{LAB_AGENT_API_PORT}", self.host.ip),
            ])
            .args(AGENT_FLAGS)
            .args(self.extra);
        if !crate::harness::pki::insecure() {
            cmd.args(agent_tls_flags(data_dir)?);
        } else {
            cmd.arg("--insecure");
        }
        cmd.env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("STEWARD_SIMULATE_GPUS")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    fn spawn(&self, controllers: &str) -> anyhow::Result<std::process::Child> {
        self.command(controllers)?
            .spawn()
            .context("spawning steward agent")
    }

    /// Its node id, once it has one.
    pub(crate) fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.guard.data_dir.join("node-id"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

/// The environment that starts a process under libfaketime, its wall clock offset by
/// the seconds in `file` (re-read every second); the monotonic clock stays true, as a
/// skewed NTP would leave it.
fn faketime_env(lib: &str, file: &str) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", file),
        ("FAKETIME_CACHE_DURATION", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_filesystem_refuses_more_and_the_file_is_all_of_it() {
        // Root, as the namespaces need.
        if !netns::skip_unless_available("a_filled_filesystem_refuses_more") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount = TmpfsMount::new(dir.path(), 8 << 20).unwrap();
        let (path, bytes) = fill_filesystem(dir.path()).unwrap();
        assert!((7 << 20..=8 << 20).contains(&bytes), "{bytes}");
        assert!(std::fs::write(dir.path().join("more"), [0u8; 4096]).is_err());
        std::fs::remove_file(path).unwrap();
        std::fs::write(dir.path().join("more"), [0u8; 4096]).unwrap();
        drop(mount);
    }
}
