//! Scenarios as files (`chaos/scenarios/*.toml`; the schema is documented in
//! `chaos/README.md`): the cluster to break, the workloads that run meanwhile, the fault
//! schedule and the pass criteria. A file is parsed strictly (an unknown field is an
//! error, not ignored) and checked as a whole before anything runs, with errors that name
//! the field.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Longest a scenario may run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most faults a schedule may inject (repeats counted).
pub const MAX_FAULTS: usize = 1000;
/// Largest scenario file read.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: {error}")]
    File { path: String, error: String },
    #[error("{0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

/// One scenario.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, as in reports (letters, digits and dashes).
    pub name: String,
    pub description: String,
    /// How long the workloads run.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(default)]
    pub cluster: ClusterShape,
    #[serde(default)]
    pub workload: Workloads,
    /// The fault schedule.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub pass: PassCriteria,
}

/// The cluster a local run starts (staging runs take theirs from the inventory).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterShape {
    /// 3 or 5.
    pub controllers: u32,
    pub agents: u32,
    /// Simulated GPUs per agent, as `--simulate-gpus` takes them (`H100:8`).
    pub gpus: String,
}

impl Default for ClusterShape {
    fn default() -> Self {
        ClusterShape {
            controllers: 3,
            agents: 0,
            gpus: "H100:8".into(),
        }
    }
}

/// The workloads (each absent: not run).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workloads {
    pub kv: Option<KvWorkload>,
    pub jobs: Option<JobWorkload>,
    pub objects: Option<ObjectWorkload>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvWorkload {
    pub clients: u32,
    pub keys: u32,
    pub read_percent: u32,
    pub cas_percent: u32,
}

impl Default for KvWorkload {
    fn default() -> Self {
        KvWorkload {
            clients: 4,
            keys: 4,
            read_percent: 50,
            cas_percent: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobWorkload {
    /// Jobs submitted per second.
    pub per_second: f64,
    /// GPUs per task.
    pub gpus: u32,
    /// How long each task runs.
    #[serde(with = "humantime_serde")]
    pub runtime: Duration,
}

impl Default for JobWorkload {
    fn default() -> Self {
        JobWorkload {
            per_second: 1.0,
            gpus: 1,
            runtime: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectWorkload {
    pub clients: u32,
    /// Size of each object put.
    pub size_bytes: u64,
}

impl Default for ObjectWorkload {
    fn default() -> Self {
        ObjectWorkload {
            clients: 2,
            size_bytes: 4 << 20,
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When it starts, from the start of the run.
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub action: Action,
    pub target: Target,
    /// How long until it is reverted (a killed process restarted, a partition healed);
    /// absent for the one-shot actions (bit-rot, membership, GPU faults).
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Repeat every `every`, `times` times in all.
    pub repeat: Option<Repeat>,
    /// Netem settings (`action = "netem"`).
    pub netem: Option<Netem>,
    /// Clock offset (`action = "clock-skew"`), e.g. "+30s" or "-5m".
    pub offset: Option<String>,
    /// The XID for `action = "gpu-xid"`.
    pub xid: Option<u32>,
    /// Chunk files to damage (`action = "bit-rot"`).
    pub chunks: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL, restarted after `duration`.
    Kill,
    /// SIGSTOP, SIGCONT after `duration`.
    Pause,
    /// The target cut off from the rest, both ways.
    Partition,
    /// The target's outgoing packets dropped; incoming ones still arrive.
    PartitionOneWay,
    /// Latency, loss, duplication and reordering on the target's links.
    Netem,
    /// The target agent's data dir filesystem filled.
    DiskFull,
    /// Bytes flipped in chunk files on the target agent.
    BitRot,
    /// The target's clock moved by `offset`.
    ClockSkew,
    /// A simulated GPU XID on the target agent.
    GpuXid,
    /// A simulated double-bit ECC error.
    GpuEcc,
    /// A simulated GPU fallen off the bus.
    GpuLost,
    /// The target controller removed from the group and added back after `duration`.
    Membership,
}

impl Action {
    /// Its name in scenario files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Partition => "partition",
            Action::PartitionOneWay => "partition-one-way",
            Action::Netem => "netem",
            Action::DiskFull => "disk-full",
            Action::BitRot => "bit-rot",
            Action::ClockSkew => "clock-skew",
            Action::GpuXid => "gpu-xid",
            Action::GpuEcc => "gpu-ecc",
            Action::GpuLost => "gpu-lost",
            Action::Membership => "membership",
        }
    }

    /// Whether it lasts until reverted after `duration` (rather than happening once).
    pub fn lasts(self) -> bool {
        matches!(
            self,
            Action::Kill
                | Action::Pause
                | Action::Partition
                | Action::PartitionOneWay
                | Action::Netem
                | Action::DiskFull
                | Action::ClockSkew
                | Action::Membership
        )
    }

    /// Whether it acts on an agent (rather than on controllers or on either).
    fn agents_only(self) -> bool {
        matches!(
            self,
            Action::DiskFull | Action::BitRot | Action::GpuXid | Action::GpuEcc | Action::GpuLost
        )
    }
}

/// What a fault hits, resolved when it fires (the leader then, not at parse time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Leader,
    /// A follower, chosen by the run's seed.
    Follower,
    /// A minority of the controllers (1 of 3, 2 of 5), the leader among them.
    Minority,
    Controller(u32),
    /// An agent, chosen by the run's seed among those running tasks (any, if none is).
    AnyAgent,
    Agent(u32),
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Target::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let numbered = |prefix: &str| {
            text.strip_prefix(prefix)
                .map(|n| {
                    n.parse::<u32>()
                        .map_err(|_| format!("target `{text}`: `{n}` is not a number"))
                })
                .transpose()
        };
        Ok(match text {
            "leader" => Target::Leader,
            "follower" => Target::Follower,
            "minority" => Target::Minority,
            "agent" => Target::AnyAgent,
            _ => {
                if let Some(n) = numbered("controller:")? {
                    Target::Controller(n)
                } else if let Some(n) = numbered("agent:")? {
                    Target::Agent(n)
                } else {
                    return Err(format!(
                        "target `{text}`: expected leader, follower, minority, controller:N, agent or agent:N"
                    ));
                }
            }
        })
    }

    fn is_agent(&self) -> bool {
        matches!(self, Target::AnyAgent | Target::Agent(_))
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    pub times: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Netem {
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Fractions of packets, 0 to 1.
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

impl Default for Netem {
    fn default() -> Self {
        Netem {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// What must hold for the run to pass (each checker runs when its workload ran).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassCriteria {
    /// The cluster serves writes again within this of each fault's end.
    #[serde(with = "humantime_serde")]
    pub recover_within: Duration,
    /// Chunks back at their replication factor within this of a node's loss.
    #[serde(with = "humantime_serde")]
    pub rf_restored_within: Duration,
    /// A lost node's tasks running elsewhere within this.
    #[serde(with = "humantime_serde")]
    pub jobs_rescheduled_within: Duration,
    /// Clocks' slack when comparing agents' task records.
    #[serde(with = "humantime_serde")]
    pub clock_slack: Duration,
}

impl Default for PassCriteria {
    fn default() -> Self {
        PassCriteria {
            recover_within: Duration::from_secs(10),
            rf_restored_within: Duration::from_secs(120),
            jobs_rescheduled_within: Duration::from_secs(60),
            clock_slack: Duration::from_millis(250),
        }
    }
}

/// One firing of a fault: when, and until when (`None`: once).
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub fault: usize,
    pub at: Duration,
    pub until: Option<Duration>,
}

impl Scenario {
    /// Reads and checks the scenario file at `path`.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = |e: std::io::Error| ScenarioError::File {
            path: path.display().to_string(),
            error: e.to_string(),
        };
        let len = std::fs::metadata(path).map_err(file)?.len();
        if len > MAX_FILE_BYTES {
            return Err(ScenarioError::File {
                path: path.display().to_string(),
                error: format!("{len} bytes, over the {MAX_FILE_BYTES}-byte limit"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(file)?;
        Scenario::parse(&text).map_err(|e| ScenarioError::File {
            path: path.display().to_string(),
            error: e.to_string(),
        })
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| Err(ScenarioError::Invalid(m));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return bad(format!(
                "name `{}`: 1 to 64 letters, digits and dashes",
                self.name
            ));
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return bad(format!(
                "duration {:?}: more than 0 and at most {:?}",
                self.duration, MAX_DURATION
            ));
        }
        if ![3, 5].contains(&self.cluster.controllers) {
            return bad(format!(
                "cluster.controllers = {}: 3 or 5",
                self.cluster.controllers
            ));
        }
        if let Some(kv) = &self.workload.kv {
            if kv.clients == 0 || kv.keys == 0 || kv.read_percent + kv.cas_percent > 100 {
                return bad(format!(
                    "workload.kv: clients and keys at least 1, read_percent + cas_percent at most 100 (got {kv:?})"
                ));
            }
        }
        if let Some(j) = &self.workload.jobs {
            if !(j.per_second > 0.0 && j.per_second <= 100.0) || j.gpus == 0 {
                return bad(format!(
                    "workload.jobs: per_second in (0, 100], gpus at least 1 (got {j:?})"
                ));
            }
        }
        if (self.workload.jobs.is_some() || self.workload.objects.is_some())
            && self.cluster.agents == 0
        {
            return bad("workload.jobs and workload.objects need cluster.agents".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            let at = |m: String| {
                bad(format!(
                    "fault {} ({:?} at {:?}): {m}",
                    i + 1,
                    f.action,
                    f.at
                ))
            };
            if f.action.agents_only() && !f.target.is_agent() {
                return at(format!("acts on agents; target {:?} is not one", f.target));
            }
            match (f.action.lasts(), f.duration) {
                (true, None) => return at("needs a duration (when it is reverted)".into()),
                (false, Some(_)) => return at("happens once: no duration".into()),
                _ => {}
            }
            if f.target.is_agent() && self.cluster.agents == 0 {
                return at("targets an agent, and the cluster has none".into());
            }
            if let Target::Controller(n) = f.target {
                if n == 0 || n > self.cluster.controllers {
                    return at(format!(
                        "controller:{n}: the cluster has controllers 1 to {}",
                        self.cluster.controllers
                    ));
                }
            }
            if let Target::Agent(n) = f.target {
                if n == 0 || n > self.cluster.agents {
                    return at(format!(
                        "agent:{n}: the cluster has agents 1 to {}",
                        self.cluster.agents
                    ));
                }
            }
            match (f.action, &f.netem, &f.offset, f.xid) {
                (Action::Netem, None, _, _) => return at("needs [fault.netem]".into()),
                (Action::ClockSkew, _, None, _) => return at("needs an offset".into()),
                (Action::GpuXid, _, _, None) => return at("needs an xid".into()),
                _ => {}
            }
            if let Some(n) = &f.netem {
                for (what, p) in [
                    ("loss", n.loss),
                    ("duplicate", n.duplicate),
                    ("reorder", n.reorder),
                ] {
                    if !(0.0..=1.0).contains(&p) {
                        return at(format!("netem.{what} = {p}: a fraction from 0 to 1"));
                    }
                }
            }
            if let Some(o) = &f.offset {
                parse_offset(o)
                    .map_err(|e| ScenarioError::Invalid(format!("fault {}: {e}", i + 1)))?;
            }
            if let Some(r) = f.repeat {
                if r.times == 0 || r.every.is_zero() {
                    return at("repeat: every above 0 and times at least 1".into());
                }
                if let Some(d) = f.duration {
                    if d >= r.every {
                        return at(format!(
                            "repeat.every {:?} must exceed the duration {d:?} (one at a time)",
                            r.every
                        ));
                    }
                }
            }
        }
        let firings = self.firings();
        if firings.len() > MAX_FAULTS {
            return bad(format!(
                "{} faults in all; at most {MAX_FAULTS}",
                firings.len()
            ));
        }
        if let Some(late) = firings
            .iter()
            .find(|f| f.until.unwrap_or(f.at) > self.duration)
        {
            return bad(format!(
                "fault {} fires at {:?} and lasts until {:?}, past the duration {:?}",
                late.fault + 1,
                late.at,
                late.until.unwrap_or(late.at),
                self.duration
            ));
        }
        Ok(())
    }

    /// Every firing of the schedule, in time order.
    pub fn firings(&self) -> Vec<Firing> {
        let mut out = Vec::new();
        for (i, f) in self.faults.iter().enumerate() {
            let (every, times) = f.repeat.map_or((Duration::ZERO, 1), |r| {
                (r.every, r.times.min(MAX_FAULTS as u32 + 1))
            });
            for k in 0..times {
                let at = f.at + every * k;
                out.push(Firing {
                    fault: i,
                    at,
                    until: f.duration.map(|d| at + d),
                });
            }
        }
        out.sort_by_key(|f| f.at);
        out
    }
}

/// A clock offset: `+30s`, `-5m`; the signed number of milliseconds.
pub fn parse_offset(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(format!("offset `{text}`: starts with + or -")),
    };
    let d = humantime::parse_duration(rest).map_err(|e| format!("offset `{text}`: {e}"))?;
    Ok(sign * i64::try_from(d.as_millis()).map_err(|_| format!("offset `{text}`: too large"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER_KILLS: &str = r#"
name = "leader-kill-loop"
description = "The leader is killed every 10 s"
duration = "60s"
[workload.kv]
clients = 4
[[fault]]
at = "5s"
action = "kill"
target = "leader"
duration = "2s"
repeat = { every = "10s", times = 5 }
"#;

    #[test]
    fn a_scenario_parses_with_defaults_and_expands_its_repeats() {
        let s = Scenario::parse(LEADER_KILLS).expect("valid");
        assert_eq!(s.cluster.controllers, 3);
        assert_eq!(s.workload.kv.as_ref().map(|k| k.keys), Some(4));
        let f = s.firings();
        assert_eq!(f.len(), 5);
        assert_eq!(f[4].at, Duration::from_secs(45));
        assert_eq!(f[4].until, Some(Duration::from_secs(47)));
    }

    #[test]
    fn mistakes_are_refused_naming_the_field() {
        let cases: [(&str, &str); 8] = [
            ("duration = \"60s\"", "duration = \"2h\""),
            ("times = 5", "times = 7"),
            ("target = \"leader\"", "target = \"leaderr\""),
            ("action = \"kill\"", "action = \"bit-rot\""),
            ("duration = \"2s\"\n", ""),
            ("[workload.kv]", "[workload.kv]\ncas_percent = 90"),
            ("clients = 4", "clients = 4\ncolor = \"red\""),
            ("target = \"leader\"", "target = \"controller:4\""),
        ];
        let expect = [
            "at most",
            "past the duration",
            "expected leader",
            "acts on agents",
            "needs a duration",
            "at most 100",
            "unknown field",
            "controllers 1 to 3",
        ];
        for ((from, to), want) in cases.iter().zip(expect) {
            let text = LEADER_KILLS.replacen(from, to, 1);
            let e = Scenario::parse(&text).expect_err(to).to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    /// Every scenario the project ships parses and passes its checks, and their names
    /// are their file names.
    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
            .join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("chaos/scenarios") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    Some(s.name.as_str()),
                    path.file_stem().and_then(|n| n.to_str()),
                    "{}",
                    path.display()
                );
                names.push(s.name);
            }
        }
        names.sort();
        for required in [
            "leader-kill-loop",
            "leader-pause",
            "minority-partition",
            "one-way-partition",
            "flaky-network",
            "agent-loss-under-load",
            "agent-partitioned-alive",
            "bit-rot",
            "disk-full",
            "clock-skew",
            "membership-under-faults",
        ] {
            assert!(
                names.iter().any(|n| n == required),
                "{required} missing: {names:?}"
            );
        }
    }

    #[test]
    fn offsets_are_signed() {
        assert_eq!(parse_offset("+30s"), Ok(30_000));
        assert_eq!(parse_offset("-5m"), Ok(-300_000));
        assert!(parse_offset("30s").is_err());
    }
}
