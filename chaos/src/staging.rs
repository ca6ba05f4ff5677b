//! The staging mode: a scenario run against running nodes, as an inventory file
//! describes them ([`Inventory`]), driven through their units' commands over an exec
//! prefix ([`StagingNodes`]).
//!
//! Every action is a shell command run on the victim's host: the host's exec prefix
//! (`ssh -o BatchMode=yes root@{address}` by default) with the command as its last
//! argument. Processes go through the unit commands (systemd's by default); partitions
//! are an nftables table per partition (`steward_chaos_*`) on the hosts of one side;
//! link impairments tc netem on the host's interface; bit-rot, disk full and the task
//! records work on the agent's data dir with standard tools (`find`, `od`, `dd`,
//! `fallocate`, `tar`). [`LocalUnits`] runs the same mode against a local lab, for the
//! mode's own test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::admin::Admin;
use crate::check::placement::TaskRun;
use crate::harness::netns::{Direction, Netem};
use crate::nodes::{leaderships_in, Nodes, StoppedControllers, Victim};
use crate::run::{Report, RunOptions};
use crate::scenario::{Action, Scenario, Target};

/// How long one remote command may run before it is killed and counts as failed. The
/// host's own `timeout` ends it [`REMOTE_MARGIN`] sooner, so that it does not run on
/// after the harness gave up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long copying a data dir's files out may take (a controller's Raft dir, an agent's
/// task records).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How much sooner than the harness a host's `timeout` ends a command.
const REMOTE_MARGIN: Duration = Duration::from_secs(5);
/// The most a remote command may print (task records, a controller's Raft dir); a
/// command that prints more is killed.
pub const MAX_OUTPUT_BYTES: usize = 1 << 30;
/// The most of a failed command's standard error an error message quotes.
const MAX_ERROR_BYTES: u64 = 16 << 10;
/// How long `disk-full` writes zeros after its `fallocate`, on filesystems without it.
const FILL_WRITE_SECS: u64 = 30;
/// The file a `disk-full` fault fills an agent's data filesystem with.
const FILL_FILE: &str = "chaos-fill";
/// The prefix of the nftables tables partitions add (`nft list tables` shows leftovers).
pub const TABLE_PREFIX: &str = "steward_chaos";

/// `ControlMaster=no`: a multiplexing master that an operator's ssh config would start
/// keeps the command's standard error open, and every command would hang until killed.
const DEFAULT_EXEC: &str =
    "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ControlMaster=no root@{address}";

/// The commands that act on a host's unit, run through its exec prefix. `{unit}`,
/// `{address}`, `{name}`, `{data_dir}` and `{iface}` are the host's (shell-quoted where
/// they need it); `{since}` (logs only) is the run's start in Unix seconds; `{offset}`
/// (set_clock only) the signed seconds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UnitCommands {
    pub start: String,
    pub stop: String,
    pub kill: String,
    pub pause: String,
    pub resume: String,
    /// The unit's log since `{since}` ("became leader" lines feed one-leader-per-term).
    pub logs: String,
    /// Moves the process's wall clock by `{offset}` seconds; none: clock-skew is refused.
    pub set_clock: Option<String>,
}

impl Default for UnitCommands {
    fn default() -> Self {
        UnitCommands {
            start: "systemctl start {unit}".into(),
            stop: "systemctl stop {unit}".into(),
            // The main process only, as a crash would; systemd then does what the unit
            // says (Restart=, KillMode=).
            kill: "systemctl kill --kill-whom=main --signal=SIGKILL {unit}".into(),
            pause: "systemctl kill --kill-whom=main --signal=SIGSTOP {unit}".into(),
            resume: "systemctl kill --kill-whom=main --signal=SIGCONT {unit}".into(),
            logs: "journalctl --unit {unit} --output cat --no-pager --since @{since}".into(),
            set_clock: None,
        }
    }
}

/// One machine's process: a controller or an agent.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InventoryHost {
    /// What the report calls it (default: its address).
    pub name: Option<String>,
    /// The host's IP address on the cluster's network: where the exec prefix reaches it,
    /// what the other side of a partition drops and what netem on its peers matches. A
    /// controller and an agent with one address are one machine, and are partitioned
    /// together.
    pub address: String,
    /// This host's exec prefix, instead of the inventory's.
    pub exec: Option<String>,
    /// The unit its commands act on (default `steward-controller` / `steward-agent`).
    pub unit: Option<String>,
    /// Its data dir (the `data_dir` of its config).
    pub data_dir: PathBuf,
    /// The interface netem impairs (default `eth0`).
    #[serde(default = "default_iface")]
    pub iface: String,
    /// Controllers: the id, the Raft address and the admin API address.
    pub id: Option<u64>,
    pub raft: Option<String>,
    pub api: Option<String>,
}

fn default_iface() -> String {
    "eth0".into()
}

/// A staging cluster as the harness drives it (see chaos/README.md, "Staging mode").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// How a command reaches a host: this prefix (split into words as a POSIX shell
    /// would, with the host's placeholders filled), then the command as one more
    /// argument, which the prefix must run with a shell (ssh does).
    #[serde(default = "default_exec")]
    pub exec: String,
    /// The admin's credentials: a TLS dir as `steward` takes it (`STEWARD_TLS_DIR`), or
    /// `insecure = true` for a plaintext cluster.
    pub tls_dir: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
    /// The fault actions this cluster accepts; a scenario with any other is refused
    /// before anything is done.
    pub allowed_faults: Vec<Action>,
    #[serde(default)]
    pub commands: UnitCommands,
    /// Stop every controller after a run with jobs, copy its Raft log out and replay it
    /// (no-gpu-overcommitted), then start it again. Default: true.
    #[serde(default = "yes")]
    pub replay_logs: bool,
    /// Where the clients keep their files (default: a temporary dir).
    pub scratch: Option<PathBuf>,
    #[serde(rename = "controller")]
    pub controllers: Vec<InventoryHost>,
    #[serde(rename = "agent", default)]
    pub agents: Vec<InventoryHost>,
}

fn default_exec() -> String {
    DEFAULT_EXEC.into()
}

fn yes() -> bool {
    true
}

/// The placeholders every command may use: the host's.
const HOST_PLACEHOLDERS: &[&str] = &["unit", "address", "name", "data_dir", "iface"];

/// `{x}` words in `template` that are not in `known`.
fn unknown_placeholders(template: &str, known: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let word = &rest[open + 1..open + close];
        // Shell braces (`${x}`, `{ a; }`) are not placeholders: only bare words are.
        let bare = !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        let dollar = open > 0 && rest.as_bytes()[open - 1] == b'$';
        if bare && !dollar && !known.contains(&word) {
            out.push(format!("{{{word}}}"));
        }
        rest = &rest[open + close + 1..];
    }
    out
}

impl Inventory {
    /// Reads and checks an inventory file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the inventory {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("the inventory {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let inv: Inventory = toml::from_str(text)?;
        inv.validate()?;
        Ok(inv)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.controllers.is_empty() {
            bail!("it names no controller ([[controller]])");
        }
        if self.tls_dir.is_some() == self.insecure {
            bail!("set exactly one of tls_dir (the admin's TLS dir) and insecure = true");
        }
        let mut ids = BTreeSet::new();
        for c in &self.controllers {
            let what = format!("controller at {}", c.address);
            let id = c.id.ok_or_else(|| anyhow!("the {what} has no id"))?;
            if !ids.insert(id) {
                bail!("controller id {id} appears twice");
            }
            let (Some(api), Some(raft)) = (&c.api, &c.raft) else {
                bail!("controller {id} needs both api (admin API address) and raft (Raft address)");
            };
            // A partition drops packets by `address`: the controller's traffic must
            // come from it, or the partition would quietly cut nothing.
            for (what, addr) in [("api", api), ("raft", raft)] {
                if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
                    if c.address.parse::<std::net::IpAddr>().ok() != Some(sock.ip()) {
                        bail!(
                            "controller {id}: its {what} address {addr} is not on its address {}; \
                             partitions drop packets by address",
                            c.address
                        );
                    }
                }
            }
        }
        for a in &self.agents {
            if a.id.is_some() || a.api.is_some() || a.raft.is_some() {
                bail!(
                    "the agent at {}: id, api and raft are a controller's fields",
                    a.address
                );
            }
        }
        // (what, template, the placeholders beyond the host's it may use)
        let mut templates: Vec<(&str, &str, &[&str])> = vec![
            ("exec", &self.exec, &[]),
            ("commands.start", &self.commands.start, &[]),
            ("commands.stop", &self.commands.stop, &[]),
            ("commands.kill", &self.commands.kill, &[]),
            ("commands.pause", &self.commands.pause, &[]),
            ("commands.resume", &self.commands.resume, &[]),
            ("commands.logs", &self.commands.logs, &["since"]),
        ];
        if let Some(s) = &self.commands.set_clock {
            templates.push(("commands.set_clock", s, &["offset"]));
        }
        for h in self.controllers.iter().chain(&self.agents) {
            if h.address.parse::<std::net::IpAddr>().is_err() {
                bail!(
                    "host address `{}` is not an IP address: partitions and netem match \
                     packets by it (name the host with `name`)",
                    h.address
                );
            }
            if !h.data_dir.is_absolute() {
                bail!(
                    "host {}: data_dir {} is not an absolute path",
                    h.address,
                    h.data_dir.display()
                );
            }
            if let Some(e) = &h.exec {
                templates.push(("a host's exec", e, &[]));
            }
        }
        for (what, t, extra) in templates {
            if shlex::split(t).is_none_or(|w| w.is_empty()) {
                bail!("{what} `{t}` is empty or has an unclosed quote");
            }
            let known: Vec<&str> = HOST_PLACEHOLDERS.iter().chain(extra).copied().collect();
            let unknown = unknown_placeholders(t, &known);
            if !unknown.is_empty() {
                bail!(
                    "{what} uses {}; it may use {}",
                    unknown.join(", "),
                    known
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(())
    }

    /// The admin credentials it names.
    pub fn admin(&self) -> Admin {
        match &self.tls_dir {
            Some(dir) => Admin::TlsDir(dir.clone()),
            None => Admin::Insecure,
        }
    }

    /// Refuses `scenario` when it needs what this cluster does not allow or have.
    pub fn admits(&self, scenario: &Scenario) -> anyhow::Result<()> {
        let refused: BTreeSet<&str> = scenario
            .faults
            .iter()
            .map(|f| f.action)
            .filter(|a| !self.allowed_faults.contains(a))
            .map(Action::name)
            .collect();
        if !refused.is_empty() {
            bail!(
                "scenario {} injects {}, which the inventory's allowed_faults does not allow",
                scenario.name,
                refused.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        if scenario
            .faults
            .iter()
            .any(|f| f.action == Action::ClockSkew)
            && self.commands.set_clock.is_none()
        {
            bail!("scenario {} moves clocks: the inventory needs commands.set_clock (how a unit's clock is moved, e.g. a libfaketime offset file it reads)", scenario.name);
        }
        for f in &scenario.faults {
            let missing = match f.target {
                Target::Controller(id) => {
                    (!self.controllers.iter().any(|c| c.id == Some(id.into())))
                        .then(|| format!("controller {id}"))
                }
                Target::Agent(i) => (i == 0 || i as usize > self.agents.len())
                    .then(|| format!("agent {i} (it has {})", self.agents.len())),
                _ => None,
            };
            if let Some(m) = missing {
                bail!(
                    "scenario {}: a {} fault targets {m}, which the inventory does not name",
                    scenario.name,
                    f.action.name()
                );
            }
        }
        crate::run::check_workloads(scenario, self.agents.len() as u32)
    }
}

/// Runs `scenario` against the staging cluster `inventory` describes.
pub async fn run_staging(
    scenario: &Scenario,
    inventory: &Inventory,
    options: &RunOptions,
) -> anyhow::Result<Report> {
    if options.bug.is_some() {
        bail!("--bug reintroduces a bug through a test build's fail points: local runs only");
    }
    inventory.admits(scenario)?;
    let admin = inventory.admin();
    admin.validate()?;
    let scratch_dir = match &inventory.scratch {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("steward-chaos").tempdir()?),
    };
    let scratch = inventory
        .scratch
        .clone()
        .or_else(|| scratch_dir.as_ref().map(|d| d.path().to_path_buf()))
        .expect("one of the two");
    let nodes = Arc::new(StagingNodes::new(inventory.clone()));
    nodes.check_reachable()?;
    crate::run::run_on(nodes, admin, scratch, scenario, options).await
}

/// Running nodes driven through an [`Inventory`].
pub struct StagingNodes {
    inventory: Inventory,
    /// The run's start, Unix seconds (`{since}` of the logs command).
    since: u64,
    /// Partition id -> (table, the addresses holding it).
    partitions: Mutex<BTreeMap<u64, (String, Vec<String>)>>,
    next_partition: std::sync::atomic::AtomicU64,
}

impl StagingNodes {
    pub fn new(inventory: Inventory) -> Self {
        StagingNodes {
            inventory,
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs().saturating_sub(5)),
            partitions: Mutex::new(BTreeMap::new()),
            next_partition: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn host(&self, v: Victim) -> Result<&InventoryHost, String> {
        match v {
            Victim::Controller(id) => self
                .inventory
                .controllers
                .iter()
                .find(|c| c.id == Some(id))
                .ok_or_else(|| format!("the inventory has no controller {id}")),
            Victim::Agent(i) => self
                .inventory
                .agents
                .get((i as usize).wrapping_sub(1))
                .ok_or_else(|| format!("the inventory has no agent {i}")),
        }
    }

    fn unit(&self, v: Victim) -> Result<String, String> {
        let h = self.host(v)?;
        Ok(h.unit.clone().unwrap_or_else(|| {
            match v {
                Victim::Controller(_) => "steward-controller",
                Victim::Agent(_) => "steward-agent",
            }
            .to_string()
        }))
    }

    /// `template` with `v`'s placeholders (and `extra`) filled, each value shell-quoted
    /// where it needs it.
    fn fill(&self, v: Victim, template: &str, extra: &[(&str, &str)]) -> Result<String, String> {
        let h = self.host(v)?;
        let unit = self.unit(v)?;
        let since = self.since.to_string();
        let data_dir = h.data_dir.display().to_string();
        let mut out = template.to_string();
        for (k, val) in [
            ("unit", unit.as_str()),
            ("address", h.address.as_str()),
            ("name", h.name.as_deref().unwrap_or(&h.address)),
            ("data_dir", data_dir.as_str()),
            ("iface", h.iface.as_str()),
            ("since", since.as_str()),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            let quoted =
                shlex::try_quote(val).map_err(|e| format!("{{{k}}} of {}: {e}", v.name()))?;
            out = out.replace(&format!("{{{k}}}"), &quoted);
        }
        Ok(out)
    }

    /// Runs `command` on `v`'s host, with `stdin`; its standard output.
    fn exec(&self, v: Victim, command: &str, stdin: Option<&[u8]>) -> Result<Vec<u8>, String> {
        self.exec_within(v, command, stdin, COMMAND_TIMEOUT)
    }

    /// Runs the shell script `script` on `v`'s host, stopping at its first failing
    /// command (it goes on standard input: no limit on an argument's length).
    fn exec_script(&self, v: Victim, script: &str) -> Result<Vec<u8>, String> {
        self.exec(v, "sh -es", Some(script.as_bytes()))
    }

    /// [`StagingNodes::exec`] with its own time limit: the host's `timeout` ends the
    /// command [`REMOTE_MARGIN`] before the harness kills its side.
    fn exec_within(
        &self,
        v: Victim,
        command: &str,
        stdin: Option<&[u8]>,
        limit: Duration,
    ) -> Result<Vec<u8>, String> {
        let h = self.host(v)?;
        let prefix = self.fill(v, h.exec.as_deref().unwrap_or(&self.inventory.exec), &[])?;
        let words = shlex::split(&prefix)
            .filter(|w| !w.is_empty())
            .ok_or_else(|| format!("the exec prefix `{prefix}` is empty or badly quoted"))?;
        let remote_secs = limit.saturating_sub(REMOTE_MARGIN).as_secs().max(1);
        let wrapped = format!(
            "timeout -k {} {remote_secs} sh -c {}",
            REMOTE_MARGIN.as_secs(),
            shell_quote(command)
        );
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]).arg(wrapped);
        run_with_timeout(cmd, stdin, limit).map_err(|e| {
            format!(
                "on {} ({}): `{command}`: {e}",
                v.name(),
                h.name.as_deref().unwrap_or(&h.address)
            )
        })
    }

    /// Runs the unit command `template` for `v`.
    fn unit_command(&self, v: Victim, template: &str) -> Result<(), String> {
        let command = self.fill(v, template, &[])?;
        self.exec(v, &command, None).map(|_| ())
    }

    /// Every process of the cluster.
    fn everyone(&self) -> Vec<Victim> {
        let mut all: Vec<Victim> = self
            .inventory
            .controllers
            .iter()
            .filter_map(|c| c.id.map(Victim::Controller))
            .collect();
        all.extend((1..=self.inventory.agents.len() as u32).map(Victim::Agent));
        all
    }

    /// Checks that every host answers through its exec prefix, before a run.
    pub fn check_reachable(&self) -> anyhow::Result<()> {
        for v in self.everyone() {
            self.exec(v, "true", None)
                .map_err(|e| anyhow!("the host cannot be reached: {e}"))?;
        }
        Ok(())
    }

    /// The addresses of `victims`, and one victim per address to run commands through.
    fn machines(&self, victims: &[Victim]) -> BTreeMap<String, Victim> {
        let mut out = BTreeMap::new();
        for &v in victims {
            if let Ok(h) = self.host(v) {
                out.entry(h.address.clone()).or_insert(v);
            }
        }
        out
    }

    /// Fetches the files `select` (a shell command run in `dir` that prints relative
    /// paths) from `v`'s host into a new local temporary dir.
    fn fetch(&self, v: Victim, dir: &Path, select: &str) -> Result<tempfile::TempDir, String> {
        let command = format!(
            "cd {} && {select} | tar -cf - -T -",
            shell_quote(&dir.display().to_string())
        );
        let tar = self.exec_within(v, &command, None, FETCH_TIMEOUT)?;
        let local = tempfile::Builder::new()
            .prefix("steward-chaos-fetch")
            .tempdir()
            .map_err(|e| format!("a local temporary dir: {e}"))?;
        let mut cmd = Command::new("tar");
        cmd.arg("-xf").arg("-").arg("-C").arg(local.path());
        run_with_timeout(cmd, Some(&tar), FETCH_TIMEOUT)
            .map_err(|e| format!("unpacking what {} sent: {e}", v.name()))?;
        Ok(local)
    }
}

impl Nodes for StagingNodes {
    fn describe(&self) -> String {
        format!(
            "staging nodes: {} controllers and {} agents from an inventory",
            self.inventory.controllers.len(),
            self.inventory.agents.len()
        )
    }

    fn controllers(&self) -> BTreeMap<u64, String> {
        self.inventory
            .controllers
            .iter()
            .filter_map(|c| Some((c.id?, c.api.clone()?)))
            .collect()
    }

    fn controller_addrs(&self, id: u64) -> Option<(String, String)> {
        let c = self.host(Victim::Controller(id)).ok()?;
        Some((c.raft.clone()?, c.api.clone()?))
    }

    fn agents(&self) -> Vec<u32> {
        (1..=self.inventory.agents.len() as u32).collect()
    }

    fn node_id(&self, agent: u32) -> Option<String> {
        let v = Victim::Agent(agent);
        let dir = self.host(v).ok()?.data_dir.join("node-id");
        let out = self
            .exec(
                v,
                &format!("cat {}", shell_quote(&dir.display().to_string())),
                None,
            )
            .ok()?;
        let id = String::from_utf8_lossy(&out).trim().to_string();
        (!id.is_empty()).then_some(id)
    }

    fn task_runs(&self, agent: u32) -> Vec<TaskRun> {
        let v = Victim::Agent(agent);
        let (Some(node), Ok(h)) = (self.node_id(agent), self.host(v)) else {
            return Vec::new();
        };
        let select = format!(
            "find allocs -mindepth 2 -maxdepth 2 -type f \\( -name alloc.json -o -name {} -o -name {} \\) 2>/dev/null",
            crate::workload::jobs::STARTED_FILE,
            crate::workload::jobs::STOPPED_FILE
        );
        match self.fetch(v, &h.data_dir, &select) {
            Ok(copy) => crate::workload::jobs::collect_runs(&node, copy.path()),
            Err(_) => Vec::new(),
        }
    }

    fn kill(&self, v: Victim) -> Result<(), String> {
        self.unit_command(v, &self.inventory.commands.kill)
    }

    fn start(&self, v: Victim) -> Result<(), String> {
        self.unit_command(v, &self.inventory.commands.start)
    }

    fn pause(&self, v: Victim) -> Result<(), String> {
        self.unit_command(v, &self.inventory.commands.pause)
    }

    fn resume(&self, v: Victim) -> Result<(), String> {
        self.unit_command(v, &self.inventory.commands.resume)
    }

    fn partition(&self, victims: &[Victim], direction: Direction) -> Result<u64, String> {
        let mine = self.machines(victims);
        let others: BTreeMap<String, Victim> = self
            .machines(&self.everyone())
            .into_iter()
            .filter(|(a, _)| !mine.contains_key(a))
            .collect();
        if mine.is_empty() || others.is_empty() {
            return Err("a partition needs machines on both sides".into());
        }
        let id = self
            .next_partition
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = format!("{TABLE_PREFIX}_{}_{id}", std::process::id());
        // (where the table goes, whose packets it drops)
        let mut plan: Vec<(&String, Victim, &BTreeMap<String, Victim>)> = Vec::new();
        match direction {
            Direction::Both => {
                plan.extend(mine.iter().map(|(a, v)| (a, *v, &others)));
                plan.extend(others.iter().map(|(a, v)| (a, *v, &mine)));
            }
            // The victims' packets dropped where they arrive.
            Direction::OneWay => plan.extend(others.iter().map(|(a, v)| (a, *v, &mine))),
        }
        let mut result = Ok(());
        for (address, v, drop_from) in plan {
            // Recorded before it is tried: a command that timed out may still have
            // added the table, and healing deletes it.
            self.partitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(id)
                .or_insert_with(|| (table.clone(), Vec::new()))
                .1
                .push(address.clone());
            let script = partition_script(&table, drop_from.keys());
            if let Err(e) = self.exec(v, "nft -f -", Some(script.as_bytes())) {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => Ok(id),
            Err(e) => {
                let _ = self.heal(id);
                Err(e)
            }
        }
    }

    fn heal(&self, id: u64) -> Result<(), String> {
        let Some((table, addresses)) = self
            .partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
        else {
            return Ok(());
        };
        let all = self.machines(&self.everyone());
        let mut left = Vec::new();
        let mut first_error = None;
        for address in addresses {
            let Some(v) = all.get(&address) else { continue };
            // A table that is not there (never added, or deleted already) is healed.
            let command = format!(
                "nft list table inet {table} >/dev/null 2>&1 || exit 0; nft delete table inet {table}"
            );
            if let Err(e) = self.exec(*v, &command, None) {
                first_error.get_or_insert(e);
                left.push(address);
            }
        }
        let mut partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        match first_error {
            None => {
                partitions.remove(&id);
                Ok(())
            }
            Some(e) => {
                // Kept, for a later heal to try again where it failed.
                partitions.insert(id, (table, left));
                Err(e)
            }
        }
    }

    fn netem_unavailable(&self) -> Option<String> {
        // Tried on the hosts only when a fault applies it (touching a real host's
        // qdiscs to probe is not harmless); a kernel without it fails that fault.
        None
    }

    fn netem(&self, v: Victim, netem: &Netem) -> Result<(), String> {
        let args = netem.validated_args().map_err(|e| format!("{e:#}"))?;
        let own = self.host(v)?.address.clone();
        let peers: Vec<String> = self
            .machines(&self.everyone())
            .into_keys()
            .filter(|a| *a != own)
            .collect();
        let iface = self.fill(v, "{iface}", &[])?;
        self.exec_script(v, &netem_script(&iface, &args, &peers))
            .map(|_| ())
    }

    fn clear_netem(&self, v: Victim) -> Result<(), String> {
        // "No such file" when nothing is there: nothing to clear.
        let command = self.fill(v, "tc qdisc del dev {iface} root 2>/dev/null; true", &[])?;
        self.exec(v, &command, None).map(|_| ())
    }

    fn bit_rot(&self, agent: u32, count: usize, seed: u64) -> Result<usize, String> {
        let v = Victim::Agent(agent);
        let store = self.host(v)?.data_dir.join("chunks").join("data");
        let listing = self.exec(
            v,
            &format!(
                "find {} -type f -size +0 -printf '%s %p\\n' 2>/dev/null; true",
                shell_quote(&store.display().to_string())
            ),
            None,
        )?;
        let mut files: Vec<(String, u64)> = String::from_utf8_lossy(&listing)
            .lines()
            .filter_map(|l| {
                let (size, path) = l.split_once(' ')?;
                let name = path.rsplit('/').next()?;
                (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Some((path.to_string(), size.parse().ok()?)))?
            })
            .collect();
        files.sort();
        if files.len() < count {
            return Err(format!(
                "{}: {} non-empty chunk files, {count} asked for",
                store.display(),
                files.len()
            ));
        }
        let count = count.min(crate::fault::MAX_ROTTED_CHUNKS);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut script = String::new();
        for _ in 0..count {
            let (path, len) = files.swap_remove(rng.random_range(0..files.len()));
            let offset = rng.random_range(0..len);
            let mask = 1u8 << rng.random_range(0..8);
            script.push_str(&flip_command(&path, offset, mask));
            script.push_str(" || exit 1\n");
        }
        self.exec_script(v, &script)?;
        Ok(count)
    }

    fn fill_disk(&self, agent: u32) -> Result<(), String> {
        let v = Victim::Agent(agent);
        let dir = self.host(v)?.data_dir.display().to_string();
        self.exec(v, &fill_command(&dir), None).map(|_| ())
    }

    fn free_disk(&self, agent: u32) -> Result<(), String> {
        let v = Victim::Agent(agent);
        let fill = self.host(v)?.data_dir.join(FILL_FILE);
        self.exec(
            v,
            &format!("rm -f {}", shell_quote(&fill.display().to_string())),
            None,
        )
        .map(|_| ())
    }

    fn clock_skew_unavailable(&self) -> Option<String> {
        self.inventory
            .commands
            .set_clock
            .is_none()
            .then(|| "the inventory has no commands.set_clock".to_string())
    }

    fn set_clock(&self, v: Victim, offset: &str) -> Result<(), String> {
        let template = self
            .inventory
            .commands
            .set_clock
            .as_deref()
            .ok_or("the inventory has no commands.set_clock")?;
        let command = self.fill(v, template, &[("offset", offset)])?;
        self.exec(v, &command, None).map(|_| ())
    }

    fn leaderships(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for c in &self.inventory.controllers {
            let Some(id) = c.id else { continue };
            let v = Victim::Controller(id);
            if let Ok(command) = self.fill(v, &self.inventory.commands.logs, &[]) {
                if let Ok(log) = self.exec(v, &command, None) {
                    out.extend(leaderships_in(&String::from_utf8_lossy(&log)));
                }
            }
        }
        out
    }

    fn stop_controllers(&self) -> Result<StoppedControllers, String> {
        if !self.inventory.replay_logs {
            return Err("the inventory turns the replay off (replay_logs = false)".into());
        }
        let copy = tempfile::Builder::new()
            .prefix("steward-chaos-logs")
            .tempdir()
            .map_err(|e| format!("a local temporary dir: {e}"))?;
        let mut data_dirs = Vec::new();
        // On an error some are stopped: the caller starts them again (after_replay).
        for c in &self.inventory.controllers {
            let Some(id) = c.id else { continue };
            let v = Victim::Controller(id);
            self.unit_command(v, &self.inventory.commands.stop)?;
            let fetched = self.fetch(v, &c.data_dir, "echo raft")?;
            let to = copy.path().join(format!("controller-{id}"));
            std::fs::rename(fetched.path(), &to)
                .or_else(|_| copy_dir(fetched.path(), &to))
                .map_err(|e| format!("keeping controller {id}'s log copy: {e}"))?;
            data_dirs.push((id, to));
        }
        Ok(StoppedControllers {
            data_dirs,
            _copy: Some(copy),
        })
    }

    fn after_replay(&self) -> Result<(), String> {
        let mut first_error = None;
        for c in &self.inventory.controllers {
            if let Some(id) = c.id {
                if let Err(e) = self.start(Victim::Controller(id)) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Copies `from` into a new dir `to` (when a rename cannot: another filesystem).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// `s` in single quotes, for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The nft script of a partition: table `table` dropping packets from `addresses` (IP
/// literals, as the inventory checks).
fn partition_script<'a>(table: &str, addresses: impl Iterator<Item = &'a String>) -> String {
    let (v6, v4): (Vec<&String>, Vec<&String>) = addresses.partition(|a| a.contains(':'));
    let mut script = format!(
        "add table inet {table}\n\
         add chain inet {table} input {{ type filter hook input priority 0 ; policy accept ; }}\n"
    );
    for (family, set) in [("ip", v4), ("ip6", v6)] {
        if !set.is_empty() {
            let set = set
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            script.push_str(&format!(
                "add rule inet {table} input {family} saddr {{ {set} }} drop\n"
            ));
        }
    }
    script
}

/// The tc script of a netem fault on `iface` that impairs only the packets to `peers`
/// (the cluster's other machines): a `prio` root with a fourth band, which no TOS value
/// maps to, holding netem, and one filter per peer into it. The harness's own traffic to
/// the host (ssh) goes on unimpaired, so that it can take the fault off again.
fn netem_script(iface: &str, args: &[String], peers: &[String]) -> String {
    let mut script = format!(
        "tc qdisc del dev {iface} root 2>/dev/null || true\n\
         tc qdisc add dev {iface} root handle 1: prio bands 4\n\
         tc qdisc add dev {iface} parent 1:4 handle 40: {}\n",
        args.join(" ")
    );
    for peer in peers {
        let (protocol, field, bits) = if peer.contains(':') {
            ("ipv6", "ip6", 128)
        } else {
            ("ip", "ip", 32)
        };
        script.push_str(&format!(
            "tc filter add dev {iface} parent 1: protocol {protocol} prio 1 u32 match {field} dst {peer}/{bits} flowid 1:4\n"
        ));
    }
    script
}

/// A shell command that flips the bits `mask` of the byte at `offset` of `path`.
fn flip_command(path: &str, offset: u64, mask: u8) -> String {
    let f = shell_quote(path);
    format!(
        "b=$(od -An -tu1 -j {offset} -N1 {f} | tr -d ' ') && \
         printf \"$(printf '\\\\%03o' $((b ^ {mask})))\" | dd of={f} bs=1 seek={offset} conv=notrunc status=none"
    )
}

/// A shell command that fills the filesystem of `dir` with [`FILL_FILE`]: one
/// `fallocate` of its free blocks (reserved ones too: the harness runs as root), a little
/// less where that much does not fit, then zeros appended for at most
/// [`FILL_WRITE_SECS`] (tmpfs and others without `fallocate`). A filesystem that
/// compresses zeros (ZFS, btrfs with compression) is not filled by them.
fn fill_command(dir: &str) -> String {
    let d = shell_quote(dir);
    let f = shell_quote(&format!("{}/{FILL_FILE}", dir.trim_end_matches('/')));
    format!(
        "free=$(( $(stat -f -c %f {d}) * $(stat -f -c %S {d}) )) && \
         {{ fallocate -l \"$free\" {f} 2>/dev/null || fallocate -l \"$((free / 100 * 98))\" {f} 2>/dev/null || touch {f}; }} && \
         {{ timeout {FILL_WRITE_SECS} dd if=/dev/zero bs=1M >> {f} 2>/dev/null; true; }} && test -e {f}"
    )
}

/// Runs `cmd` with `stdin`, killed (its whole process group) after `timeout` or once
/// it prints more than [`MAX_OUTPUT_BYTES`]; its standard output when it exits 0, else
/// its exit and standard error. It runs in a process group of its own, so that a Ctrl-C
/// at the terminal does not kill the commands that undo the faults.
fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let kill_group = move || {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    };
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group();
        return Err("the command's output pipes were not set up".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads both pipes (each to its end: a full pipe would stall the command), then
    // reaps the command: until then its process group cannot be reused.
    std::thread::spawn(move || {
        let errors = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(MAX_ERROR_BYTES).read_to_end(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        });
        let mut out = Vec::new();
        let read = (&mut stdout)
            .take(MAX_OUTPUT_BYTES as u64 + 1)
            .read_to_end(&mut out);
        let too_much = out.len() > MAX_OUTPUT_BYTES;
        if too_much {
            kill_group();
            out.clear();
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        }
        let status = child.wait();
        let errors = errors.join().unwrap_or_default();
        let _ = tx.send((read.and(status), too_much, out, errors));
    });
    let (status, too_much, out, errors) = match rx.recv_timeout(timeout) {
        Ok(done) => done,
        Err(_) => {
            kill_group();
            return Err(format!("no answer within {timeout:?}; killed"));
        }
    };
    let status = status.map_err(|e| e.to_string())?;
    if too_much {
        return Err(format!(
            "printed more than the {MAX_OUTPUT_BYTES} bytes a command may; killed"
        ));
    }
    if !status.success() {
        let errors = String::from_utf8_lossy(&errors);
        return Err(if status.code() == Some(124) {
            format!("timed out on the host; {}", errors.trim())
        } else {
            format!("{status}: {}", errors.trim())
        });
    }
    Ok(out)
}

/// The faults a local lab's units take (clock-skew needs a unit of its own: not here).
const LOCAL_UNIT_FAULTS: &[&str] = &[
    "kill",
    "pause",
    "partition",
    "partition-one-way",
    "netem",
    "bit-rot",
    "disk-full",
    "gpu-xid",
    "gpu-ecc",
    "gpu-lost",
    "membership",
];

/// A stand-in for a systemd unit, one per process: `ctl start|stop|kill|pause|resume`,
/// with the process's pid in `pid` and its output in `log`, next to the script.
const CTL_SCRIPT: &str = r#"#!/bin/sh
# A stand-in for a systemd unit (steward-chaos LocalUnits).
u=$(cd "$(dirname "$0")" && pwd)
pid() { cat "$u/pid" 2>/dev/null; }
alive() { p=$(pid); [ -n "$p" ] && [ -r "/proc/$p/stat" ] && ! cut -d')' -f2 "/proc/$p/stat" | grep -q '^ Z'; }
wait_gone() { i=0; while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done; ! alive; }
case "$1" in
  start) alive || { sh "$u/run" </dev/null >/dev/null 2>&1 & echo $! > "$u/pid"; } ;;
  kill) if alive; then kill -KILL "$(pid)"; fi; wait_gone ;;
  stop) if alive; then kill -TERM "$(pid)"; fi; wait_gone || { kill -KILL "$(pid)"; wait_gone; } ;;
  pause) kill -STOP "$(pid)" ;;
  resume) if alive; then kill -CONT "$(pid)"; fi ;;
  *) echo "usage: ctl start|stop|kill|pause|resume" >&2; exit 2 ;;
esac
"#;

/// A local lab run as if it were a staging cluster: every controller and agent started
/// by a unit script (`units/NAME/ctl`) in its host's namespace, and an inventory that
/// reaches each host through `ip netns exec NS sh -c`. The staging mode's code path, run
/// where CI can run it. Dropping it kills every unit's process, then the lab.
pub struct LocalUnits {
    inventory_path: PathBuf,
    units: Vec<PathBuf>,
    nodes: crate::local::LocalNodes,
}

impl LocalUnits {
    /// Starts the scenario's cluster in a lab and hands its controllers over to units;
    /// the agents' units are started by the run, as a staging run starts what is down.
    pub fn start(scenario: &Scenario) -> anyhow::Result<Self> {
        let nodes = crate::local::LocalNodes::start(scenario, None)?;
        let dir = nodes.dir();
        let mut me = LocalUnits {
            inventory_path: dir.join("inventory.toml"),
            units: Vec::new(),
            nodes,
        };
        let mut text =
            String::from("# Made by steward-chaos LocalUnits: a local lab as staging nodes.\n");
        if crate::harness::pki::insecure() {
            text.push_str("insecure = true\n");
        } else {
            text.push_str(&format!(
                "tls_dir = {:?}\n",
                crate::harness::pki::pki().admin_dir()
            ));
        }
        text.push_str(&format!(
            "allowed_faults = {:?}\nscratch = {:?}\n\n[commands]\n",
            LOCAL_UNIT_FAULTS,
            dir.join("scratch")
        ));
        for action in ["start", "stop", "kill", "pause", "resume"] {
            text.push_str(&format!("{action} = \"sh {{unit}}/ctl {action}\"\n"));
        }
        text.push_str("logs = \"cat {unit}/log\"\n");
        let controllers: Vec<u64> = me.nodes.cluster().nodes.keys().copied().collect();
        for id in &controllers {
            let (cmd, node) = {
                let mut c = me.nodes.cluster();
                let cmd = c.command(*id)?;
                let n = c.node(*id);
                (
                    cmd,
                    (
                        n.host.clone(),
                        n.data_dir.clone(),
                        n.raft_addr.clone(),
                        n.api_addr.clone(),
                    ),
                )
            };
            let (host, data_dir, raft, api) = node;
            let host = host.ok_or_else(|| anyhow!("controller {id} is not in the lab"))?;
            let unit = me.write_unit(&dir, &host.name, &cmd)?;
            text.push_str(&format!(
                "\n[[controller]]\nname = {:?}\nid = {id}\naddress = \"{}\"\nexec = \"ip netns exec {} sh -c\"\nunit = {unit:?}\ndata_dir = {data_dir:?}\nraft = {raft:?}\napi = {api:?}\n",
                host.name, host.ip, host.netns
            ));
        }
        let api: Vec<String> = me.nodes.controllers().values().cloned().collect();
        let agents: Vec<u32> = me.nodes.agents();
        for i in agents {
            let (cmd, host, data_dir) = {
                let agents = me.nodes.lab_agents();
                let a = &agents[&i];
                (
                    a.command(&api.join(","))?,
                    a.host.clone(),
                    a.guard.data_dir.clone(),
                )
            };
            let unit = me.write_unit(&dir, &host.name, &cmd)?;
            text.push_str(&format!(
                "\n[[agent]]\nname = {:?}\naddress = \"{}\"\nexec = \"ip netns exec {} sh -c\"\nunit = {unit:?}\ndata_dir = {data_dir:?}\n",
                host.name, host.ip, host.netns
            ));
        }
        std::fs::write(&me.inventory_path, text)?;
        // The hand-over: the harness's own controller processes go, the units' come.
        for id in &controllers {
            me.nodes.cluster().kill(*id);
        }
        let inventory = Inventory::load(&me.inventory_path)?;
        let staging = StagingNodes::new(inventory);
        for id in &controllers {
            staging
                .start(Victim::Controller(*id))
                .map_err(|e| anyhow!(e))?;
        }
        Ok(me)
    }

    /// Writes `units/NAME/{run,ctl}` for the process `cmd` would start; the unit's dir.
    fn write_unit(&mut self, dir: &Path, name: &str, cmd: &Command) -> anyhow::Result<PathBuf> {
        let unit = dir.join("units").join(name);
        std::fs::create_dir_all(&unit)?;
        // `env -u NAME...` before the `NAME=VALUE`s, as env takes them.
        let mut line = String::from("exec env");
        let (set, unset): (Vec<_>, Vec<_>) = cmd.get_envs().partition(|(_, v)| v.is_some());
        for (k, _) in unset {
            line.push_str(&format!(" -u {}", shell_quote(&k.to_string_lossy())));
        }
        for (k, v) in set {
            let v = v.map(|v| v.to_string_lossy()).unwrap_or_default();
            line.push_str(&format!(
                " {}",
                shell_quote(&format!("{}={v}", k.to_string_lossy()))
            ));
        }
        line.push(' ');
        line.push_str(&shell_quote(&cmd.get_program().to_string_lossy()));
        for a in cmd.get_args() {
            line.push(' ');
            line.push_str(&shell_quote(&a.to_string_lossy()));
        }
        let log = unit.join("log");
        line.push_str(&format!(
            " >> {} 2>&1\n",
            shell_quote(&log.display().to_string())
        ));
        std::fs::write(unit.join("run"), format!("#!/bin/sh\n{line}"))?;
        std::fs::write(unit.join("ctl"), CTL_SCRIPT)?;
        self.units.push(unit.clone());
        Ok(unit)
    }

    /// The inventory file it wrote.
    pub fn inventory_path(&self) -> &Path {
        &self.inventory_path
    }
}

impl Drop for LocalUnits {
    fn drop(&mut self) {
        for unit in &self.units {
            let _ = Command::new("sh")
                .arg(unit.join("ctl"))
                .arg("kill")
                .stdin(Stdio::null())
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MINIMAL: &str = r#"
        insecure = true
        allowed_faults = ["kill", "partition"]

        [[controller]]
        id = 1
        address = "10.0.0.1"
        api = "10.0.0.1:7000"
        raft = "10.0.0.1:7001"
        data_dir = "/var/lib/steward"

        [[agent]]
        address = "10.0.0.2"
        data_dir = "/var/lib/steward"
    "#;

    #[test]
    fn an_inventory_takes_systemd_and_ssh_by_default() {
        let inv = Inventory::parse(MINIMAL).unwrap();
        assert_eq!(inv.exec, DEFAULT_EXEC);
        assert_eq!(inv.commands, UnitCommands::default());
        assert!(inv.replay_logs);
        assert_eq!(inv.admin(), Admin::Insecure);
        let nodes = StagingNodes::new(inv);
        let v = Victim::Agent(1);
        assert_eq!(
            nodes.fill(v, &nodes.inventory.commands.kill, &[]).unwrap(),
            "systemctl kill --kill-whom=main --signal=SIGKILL steward-agent"
        );
        assert_eq!(
            nodes.fill(v, &nodes.inventory.exec, &[]).unwrap(),
            "ssh -o BatchMode=yes -o ConnectTimeout=10 -o ControlMaster=no root@10.0.0.2"
        );
        // Values that a shell would split or expand are quoted.
        let mut odd = nodes.inventory.clone();
        odd.agents[0].unit = Some("steward agent$x".into());
        let odd = StagingNodes::new(odd);
        assert_eq!(
            odd.fill(v, "systemctl start {unit}", &[]).unwrap(),
            "systemctl start 'steward agent$x'"
        );
        assert_eq!(
            nodes.controllers(),
            BTreeMap::from([(1, "10.0.0.1:7000".to_string())])
        );
        assert_eq!(nodes.agents(), vec![1]);
        assert!(nodes.host(Victim::Agent(2)).is_err());
    }

    #[test]
    fn a_bad_inventory_is_refused_with_the_reason() {
        let cases = [
            (MINIMAL.replace("insecure = true", ""), "tls_dir"),
            (MINIMAL.replace("id = 1", ""), "no id"),
            (MINIMAL.replace("raft = \"10.0.0.1:7001\"", ""), "raft"),
            (
                MINIMAL.replace("allowed_faults = [", "allowed_faults = [\"meltdown\", "),
                "meltdown",
            ),
            (
                format!("exec = \"ssh {{user}}@{{address}}\"\n{MINIMAL}"),
                "{user}",
            ),
            (format!("{MINIMAL}\ncolour = \"blue\"\n"), "colour"),
            (
                MINIMAL.replace("[[agent]]", "[[agent]]\nid = 3"),
                "controller's fields",
            ),
            (
                MINIMAL.replace("address = \"10.0.0.2\"", "address = \"gpu-2.lab\""),
                "not an IP address",
            ),
            (
                MINIMAL.replace("raft = \"10.0.0.1:7001\"", "raft = \"10.9.0.1:7001\""),
                "partitions drop packets by address",
            ),
            (
                MINIMAL.replace(
                    "data_dir = \"/var/lib/steward\"\n\n        [[agent]]",
                    "data_dir = \"steward\"\n\n        [[agent]]",
                ),
                "absolute",
            ),
            (
                MINIMAL.replace(
                    "[[controller]]",
                    "[commands]\nstart = \"systemctl start {unit} # {since}\"\n\n[[controller]]",
                ),
                "commands.start uses {since}",
            ),
            (
                format!("exec = \"ssh 'root@{{address}}\"\n{MINIMAL}"),
                "unclosed quote",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", Inventory::parse(&text).unwrap_err());
            assert!(err.contains(want), "{want:?} not in: {err}");
        }
        // Shell braces are not placeholders.
        let shell = MINIMAL.replace(
            "[[controller]]",
            "[commands]\nstart = \"x=1; echo ${x} && {unit}\"\n\n[[controller]]",
        );
        Inventory::parse(&shell).unwrap();
    }

    #[test]
    fn a_scenario_with_a_fault_the_inventory_does_not_allow_is_refused() {
        let inv = Inventory::parse(MINIMAL).unwrap();
        let aimed = |action: &str, target: &str| {
            Scenario::parse(&format!(
                "name = \"s\"\ndescription = \"a test\"\nduration = \"10s\"\n[cluster]\ncontrollers = 5\nagents = 3\n[[fault]]\nat = \"1s\"\naction = \"{action}\"\ntarget = \"{target}\"\nduration = \"1s\"\n{}",
                if action == "clock-skew" { "offset = \"+30s\"\n" } else { "" }
            ))
            .unwrap()
        };
        let scenario = |action: &str| aimed(action, "leader");
        inv.admits(&scenario("kill")).unwrap();
        let err = inv.admits(&scenario("pause")).unwrap_err().to_string();
        assert!(
            err.contains("pause") && err.contains("allowed_faults"),
            "{err}"
        );
        let mut skew = inv.clone();
        skew.allowed_faults.push(Action::ClockSkew);
        let err = skew
            .admits(&scenario("clock-skew"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("set_clock"), "{err}");
        // A target the inventory does not name, and a workload it has no agents for.
        let err = inv
            .admits(&aimed("kill", "agent:2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("agent 2") && err.contains("has 1"), "{err}");
        let err = inv
            .admits(&aimed("kill", "controller:3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("controller 3"), "{err}");
        let mut no_agents = inv.clone();
        no_agents.agents.clear();
        let mut jobs = scenario("kill");
        jobs.workload.jobs = Some(Default::default());
        let err = no_agents.admits(&jobs).unwrap_err().to_string();
        assert!(err.contains("needs agents"), "{err}");
    }

    #[test]
    fn the_flip_command_flips_exactly_the_bits_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("it's a chunk");
        let bytes: Vec<u8> = (0..=255u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        for (offset, mask) in [(0u64, 1u8), (200, 0x80), (255, 0x10), (10, 0x04)] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(flip_command(&path.display().to_string(), offset, mask))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), 256);
        let mut want = bytes.clone();
        want[0] ^= 1;
        want[200] ^= 0x80;
        want[255] ^= 0x10;
        want[10] ^= 0x04;
        assert_eq!(after, want);
    }

    #[test]
    fn a_fill_leaves_no_room_and_its_file_is_removable() {
        if !crate::harness::netns::skip_unless_available("a_fill_leaves_no_room") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mount = crate::local::TmpfsMount::new(dir.path(), 8 << 20).unwrap();
        let d = dir.path().display().to_string();
        let out = Command::new("sh")
            .arg("-c")
            .arg(fill_command(&d))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(std::fs::write(dir.path().join("more"), [0u8; 4096]).is_err());
        let size = std::fs::metadata(dir.path().join(FILL_FILE)).unwrap().len();
        assert!((7 << 20..=8 << 20).contains(&size), "{size}");
        std::fs::remove_file(dir.path().join(FILL_FILE)).unwrap();
        std::fs::write(dir.path().join("more"), [0u8; 4096]).unwrap();
        drop(mount);
    }

    #[test]
    fn a_remote_command_gets_its_input_and_is_killed_past_its_timeout() {
        let mut cat = Command::new("sh");
        cat.args(["-c", "cat"]);
        assert_eq!(
            run_with_timeout(cat, Some(b"table\n"), Duration::from_secs(10)).unwrap(),
            b"table\n"
        );
        let mut fails = Command::new("sh");
        fails.args(["-c", "echo nope >&2; exit 3"]);
        let err = run_with_timeout(fails, None, Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("nope") && err.contains('3'), "{err}");
        // Past its timeout the whole command goes, what it started in the background
        // too (it would hold the output pipes, and run on after the harness gave up).
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut slow = Command::new("sh");
        slow.arg("-c").arg(format!(
            "sleep 30 & echo $! > {}; wait",
            shell_quote(&pid_file.display().to_string())
        ));
        let started = Instant::now();
        let err = run_with_timeout(slow, None, Duration::from_millis(500)).unwrap_err();
        assert!(err.contains("killed"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the background sleep {pid} outlived the timeout");
    }

    #[test]
    fn a_partition_table_drops_the_other_side() {
        let a = ["10.0.0.1".to_string(), "10.0.0.2".to_string()];
        let s = partition_script("steward_chaos_1_1", a.iter());
        assert!(s.contains("add table inet steward_chaos_1_1"), "{s}");
        assert!(s.contains("ip saddr { 10.0.0.1, 10.0.0.2 } drop"), "{s}");
        assert!(!s.contains("ip6"), "{s}");
        let mixed = ["10.0.0.1".to_string(), "fd00::2".to_string()];
        let s = partition_script("t", mixed.iter());
        assert!(s.contains("ip saddr { 10.0.0.1 } drop"), "{s}");
        assert!(s.contains("ip6 saddr { fd00::2 } drop"), "{s}");
    }

    #[test]
    fn netem_impairs_only_the_packets_to_the_peers() {
        let args = vec!["netem".to_string(), "delay".into(), "50ms".into()];
        let peers = vec!["10.0.0.2".to_string(), "fd00::3".to_string()];
        let s = netem_script("eth1", &args, &peers);
        assert!(s.contains("root handle 1: prio bands 4"), "{s}");
        assert!(s.contains("parent 1:4 handle 40: netem delay 50ms"), "{s}");
        assert!(
            s.contains("protocol ip prio 1 u32 match ip dst 10.0.0.2/32 flowid 1:4"),
            "{s}"
        );
        assert!(
            s.contains("protocol ipv6 prio 1 u32 match ip6 dst fd00::3/128 flowid 1:4"),
            "{s}"
        );
    }
}

#[cfg(test)]
mod example {
    /// The example in chaos/ is a valid inventory, and says what it should.
    #[test]
    fn the_shipped_example_inventory_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("staging.example.toml");
        let inv = super::Inventory::load(&path).unwrap();
        assert_eq!(inv.controllers.len(), 3);
        assert_eq!(inv.agents.len(), 2);
        assert_eq!(inv.commands, super::UnitCommands::default());
        assert!(inv.agents[1].exec.as_deref().unwrap().contains("bastion"));
    }
}
