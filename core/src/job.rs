//! Job specifications: what a user submits. Parsed from TOML or JSON, validated with errors
//! that name the field.
//!
//! A submitted spec is stored in the cluster state (`crate::jobs`), so this layout is part of
//! the stored format: a change to it is a new state version with a migration (`codec`).
//!
//! Defaults, next to Nomad's for batch jobs (Nomad's in brackets):
//! - restarts in place: 3 attempts per 24 h, first after 1 s, doubling up to 30 s
//!   [3 per 24 h, 15 s fixed]. A GPU left idle for 15 s after every crash of a fast-failing
//!   job is the most expensive thing in the building; the doubling still keeps a crash loop
//!   from spinning.
//! - reschedules after a failure: 1 per 24 h, after 5 s, doubling up to 1 h [1 per 24 h
//!   after 5 s]. Allocations *lost* with their node, a failed GPU, a drain or a preemption
//!   are replaced at once and do not count: losing them was not the job's fault.
//! - `kill_timeout` 30 s [5 s]: time to write a checkpoint after SIGTERM.
//! - `on_disconnect = "stop"`: a node cut off from the controllers stops the work, which is
//!   placed again elsewhere; no task runs twice [Nomad keeps it running by default].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Highest priority a job may have.
pub const MAX_PRIORITY: u32 = 1000;
/// Most tasks in one job.
pub const MAX_TASKS: u32 = 10_000;
/// Most GPUs one task may ask for.
pub const MAX_GPUS_PER_TASK: u32 = 8;
/// Most environment variables, arguments and label constraints of one job.
pub const MAX_ENV: usize = 256;
pub const MAX_ARGS: usize = 1024;
pub const MAX_CONSTRAINTS: usize = 32;
/// Largest encoded spec, in bytes (command, arguments, environment together).
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Largest CPU (milli-cores, 100,000 cores) and memory (64 TiB) one task may ask for.
pub const MAX_TASK_CPU_MILLICORES: u64 = 100_000_000;
pub const MAX_TASK_MEMORY_MIB: u64 = 64 * 1024 * 1024;
/// Most tasks of a gang (all are placed in one command).
pub const MAX_GANG_TASKS: u32 = 4_096;
/// Longest kill grace period.
pub const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most inputs one job may read.
pub const MAX_INPUTS: usize = 16;
/// Most restart or reschedule attempts per interval.
pub const MAX_ATTEMPTS: u32 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resources of each task.
    pub resources: TaskResources,
    /// 0 (lowest) to 1000; higher runs first and may preempt lower.
    #[serde(default)]
    pub priority: u32,
    /// Value of running this job, for weighted admission (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Number of tasks.
    #[serde(default = "default_tasks")]
    pub tasks: u32,
    /// Start all tasks or none.
    #[serde(default)]
    pub gang: bool,
    /// Objects the tasks read: `NAME`, `NAME@VERSION` or `NAME:TAG`. The cluster pins each
    /// to one version when it accepts the job (`NAME@VERSION`), so every task and every
    /// restart reads the same bytes; the agent stages the file in the allocation's
    /// directory before the task starts and names it in `STEWARD_INPUT_<NAME>`
    /// ([`input_env_name`]). The scheduler prefers nodes holding the inputs' chunks.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Restarts in place, on the same node, when the process exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Placing a failed task again, preferably on another node, once restarts are spent.
    #[serde(default)]
    pub reschedule: ReschedulePolicy,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[serde(default = "default_kill_timeout", with = "humantime_serde")]
    pub kill_timeout: Duration,
    /// What a node cut off from the controllers does with this job's tasks.
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    /// Node label constraints; all must hold.
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// May be evicted for a higher-priority job.
    #[serde(default)]
    pub preemptible: bool,
}

fn default_kill_timeout() -> Duration {
    Duration::from_secs(30)
}

/// What a node cut off from the controllers does with a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDisconnect {
    /// The agent stops it once it has had no heartbeat acknowledged for `fence_after`, and
    /// the controller places it again once the node is down.
    #[default]
    Stop,
    /// It keeps running; the controller does not place it again while the node is away.
    Keep,
}

/// One node label constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub label: String,
    #[serde(default)]
    pub operator: ConstraintOp,
    /// One value for `=` and `!=`, any number for `in` and `not-in`, none for `exists`.
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    #[default]
    #[serde(rename = "=")]
    Equals,
    #[serde(rename = "!=")]
    NotEquals,
    #[serde(rename = "in")]
    In,
    #[serde(rename = "not-in")]
    NotIn,
    #[serde(rename = "exists")]
    Exists,
}

impl Constraint {
    /// Why a node with `labels` does not satisfy this constraint, or `None` when it does.
    pub fn refuses(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        let have = labels.get(&self.label);
        let ok = match self.operator {
            ConstraintOp::Equals | ConstraintOp::In => {
                have.is_some_and(|v| self.values.iter().any(|w| w == v))
            }
            ConstraintOp::NotEquals | ConstraintOp::NotIn => {
                have.is_none_or(|v| self.values.iter().all(|w| w != v))
            }
            ConstraintOp::Exists => have.is_some(),
        };
        (!ok).then(|| {
            let have = have.map_or("unset".to_string(), |v| format!("`{v}`"));
            match self.operator {
                ConstraintOp::Exists => format!("label {} is unset", self.label),
                op => format!(
                    "label {} is {have}, constraint {} {} [{}]",
                    self.label,
                    self.label,
                    op.symbol(),
                    self.values.join(", ")
                ),
            }
        })
    }
}

impl ConstraintOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ConstraintOp::Equals => "=",
            ConstraintOp::NotEquals => "!=",
            ConstraintOp::In => "in",
            ConstraintOp::NotIn => "not-in",
            ConstraintOp::Exists => "exists",
        }
    }
}

fn default_weight() -> f64 {
    1.0
}

fn default_tasks() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResources {
    /// Whole GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// A share of one GPU, in milli-GPU (1..999); exclusive with `gpus`.
    #[serde(default)]
    pub gpu_milli: u32,
    /// Allowed GPU models; empty means any.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Minimum memory of each GPU, MiB.
    #[serde(default)]
    pub min_gpu_memory_mib: u64,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
}

/// When a task's process exits, whether to start it again on the same node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Restart after a non-zero exit (or a signal); an exit with 0 completes the task.
    #[default]
    OnFailure,
    /// Restart after any exit, 0 included (a service).
    Always,
    /// Never restart in place; a failure goes to the reschedule policy.
    Never,
}

/// Restarts in place: at most `attempts` within `interval`, the n-th after
/// `delay · 2^(n-1)`, capped at `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::OnFailure,
            attempts: 3,
            interval: Duration::from_secs(24 * 3600),
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Placing a failed task again once its restarts are spent: at most `attempts` within
/// `interval`, the n-th after `delay · 2^(n-1)` capped at `max_delay`, on another node when
/// one can take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReschedulePolicy {
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for ReschedulePolicy {
    fn default() -> Self {
        ReschedulePolicy {
            attempts: 1,
            interval: Duration::from_secs(24 * 3600),
            delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
        }
    }
}

/// The wait before attempt `n` (1-based): `delay · 2^(n-1)`, at most `max_delay`.
pub fn backoff(delay: Duration, max_delay: Duration, n: u32) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(20);
    delay.saturating_mul(factor).min(max_delay.max(delay))
}

impl RestartPolicy {
    /// Whether an exit with `code` (`None`: killed by a signal) is restarted by the mode.
    pub fn restarts_after(&self, code: Option<i32>) -> bool {
        match self.mode {
            RestartMode::Never => false,
            RestartMode::Always => true,
            RestartMode::OnFailure => code != Some(0),
        }
    }

    /// The wait before restart `n` (1-based).
    pub fn delay_before(&self, n: u32) -> Duration {
        backoff(self.delay, self.max_delay, n)
    }
}

impl ReschedulePolicy {
    /// The wait before reschedule `n` (1-based).
    pub fn delay_before(&self, n: u32) -> Duration {
        backoff(self.delay, self.max_delay, n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobSpecError {
    #[error("job spec (TOML): {0}")]
    Toml(#[from] toml::de::Error),
    #[error("job spec (JSON): {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The variable that names where input `object` (an object name) is staged:
/// `STEWARD_INPUT_` and the name in upper case, every character other than a letter or digit
/// made `_` (`datasets/tokens-v3` -> `STEWARD_INPUT_DATASETS_TOKENS_V3`).
pub fn input_env_name(object: &str) -> String {
    let mut name = String::from("STEWARD_INPUT_");
    name.extend(object.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// Checks `inputs`: at most [`MAX_INPUTS`], each a valid object reference, and no two
/// with the same variable name. (Separate from [`JobSpec::validate`]: clusters below
/// [`crate::features::OBJECTS_LEVEL`] accepted any strings here, and must go on
/// applying old entries the same way.)
pub fn validate_inputs(inputs: &[String]) -> Result<(), JobSpecError> {
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(
            "inputs",
            format!("{} inputs, the limit is {MAX_INPUTS}", inputs.len()),
        ));
    }
    let mut names = BTreeMap::new();
    for input in inputs {
        let (name, _) = crate::objects::VersionSelector::parse_reference(input)
            .map_err(|e| invalid("inputs", e))?;
        let var = input_env_name(&name);
        if let Some(other) = names.insert(var.clone(), name.clone()) {
            return Err(invalid(
                "inputs",
                format!(
                    "`{other}` and `{name}` would both be staged as {var}; read one object once"
                ),
            ));
        }
    }
    Ok(())
}

fn invalid(field: &'static str, message: impl Into<String>) -> JobSpecError {
    JobSpecError::Invalid {
        field,
        message: message.into(),
    }
}

impl JobSpec {
    pub fn from_toml(text: &str) -> Result<Self, JobSpecError> {
        let spec: JobSpec = toml::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_json(text: &str) -> Result<Self, JobSpecError> {
        let spec: JobSpec = serde_json::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<(), JobSpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(invalid(
                "name",
                format!(
                    "`{}` must be 1-128 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    self.name
                ),
            ));
        }
        if self.command.trim().is_empty() {
            return Err(invalid("command", "is empty"));
        }
        if self.priority > MAX_PRIORITY {
            return Err(invalid(
                "priority",
                format!("{} is above {MAX_PRIORITY}", self.priority),
            ));
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(invalid(
                "weight",
                format!("{} must be a positive number", self.weight),
            ));
        }
        if self.tasks == 0 || self.tasks > MAX_TASKS {
            return Err(invalid(
                "tasks",
                format!("{} must be between 1 and {MAX_TASKS}", self.tasks),
            ));
        }
        let r = &self.resources;
        if r.gpus > 0 && r.gpu_milli > 0 {
            return Err(invalid(
                "resources.gpu_milli",
                "cannot be combined with resources.gpus: ask for whole GPUs or a share of one",
            ));
        }
        if r.gpus > MAX_GPUS_PER_TASK {
            return Err(invalid(
                "resources.gpus",
                format!(
                    "{} is above {MAX_GPUS_PER_TASK} per task; use more tasks with gang = true",
                    r.gpus
                ),
            ));
        }
        if r.gpu_milli >= 1000 {
            return Err(invalid(
                "resources.gpu_milli",
                format!(
                    "{} must be below 1000 (use gpus = 1 for a whole GPU)",
                    r.gpu_milli
                ),
            ));
        }
        if r.cpu_millicores == 0 || r.cpu_millicores > MAX_TASK_CPU_MILLICORES {
            return Err(invalid(
                "resources.cpu_millicores",
                format!(
                    "{} must be between 1 and {MAX_TASK_CPU_MILLICORES}",
                    r.cpu_millicores
                ),
            ));
        }
        if r.memory_mib == 0 || r.memory_mib > MAX_TASK_MEMORY_MIB {
            return Err(invalid(
                "resources.memory_mib",
                format!(
                    "{} must be between 1 and {MAX_TASK_MEMORY_MIB}",
                    r.memory_mib
                ),
            ));
        }
        if self.gang && self.tasks > MAX_GANG_TASKS {
            return Err(invalid(
                "tasks",
                format!(
                    "a gang has at most {MAX_GANG_TASKS} tasks, not {}",
                    self.tasks
                ),
            ));
        }
        if r.gpus == 0 && r.gpu_milli == 0 && (!r.gpu_models.is_empty() || r.min_gpu_memory_mib > 0)
        {
            return Err(invalid(
                "resources.gpu_models",
                "GPU constraints given but no GPU requested",
            ));
        }
        if self.args.len() > MAX_ARGS {
            return Err(invalid(
                "args",
                format!("{} arguments, the limit is {MAX_ARGS}", self.args.len()),
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(invalid(
                "env",
                format!("{} variables, the limit is {MAX_ENV}", self.env.len()),
            ));
        }
        for name in self.env.keys() {
            let ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(invalid(
                    "env",
                    format!("`{name}` is not a variable name (A-Z, a-z, 0-9, _, not starting with a digit)"),
                ));
            }
            if name.starts_with("STEWARD_") {
                return Err(invalid(
                    "env",
                    format!("`{name}`: STEWARD_* variables are set by the agent"),
                ));
            }
        }
        let size = self.command.len()
            + self.args.iter().map(String::len).sum::<usize>()
            + self
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.inputs.iter().map(String::len).sum::<usize>();
        if size > MAX_SPEC_BYTES {
            return Err(invalid(
                "command",
                format!("command, arguments, environment and inputs take {size} bytes, the limit is {MAX_SPEC_BYTES}"),
            ));
        }
        for (field, attempts, interval, delay, max_delay) in [
            (
                "restart",
                self.restart.attempts,
                self.restart.interval,
                self.restart.delay,
                self.restart.max_delay,
            ),
            (
                "reschedule",
                self.reschedule.attempts,
                self.reschedule.interval,
                self.reschedule.delay,
                self.reschedule.max_delay,
            ),
        ] {
            if attempts > MAX_ATTEMPTS {
                return Err(invalid(
                    field,
                    format!("attempts = {attempts} is above {MAX_ATTEMPTS}"),
                ));
            }
            if attempts > 0 && interval.is_zero() {
                return Err(invalid(field, "interval must be above 0 when attempts > 0"));
            }
            if max_delay < delay {
                return Err(invalid(
                    field,
                    format!("max_delay ({max_delay:?}) is below delay ({delay:?})"),
                ));
            }
        }
        if self.kill_timeout > MAX_KILL_TIMEOUT {
            return Err(invalid(
                "kill_timeout",
                format!("{:?} is above {MAX_KILL_TIMEOUT:?}", self.kill_timeout),
            ));
        }
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(invalid(
                "constraints",
                format!(
                    "{} constraints, the limit is {MAX_CONSTRAINTS}",
                    self.constraints.len()
                ),
            ));
        }
        for c in &self.constraints {
            if c.label.is_empty() {
                return Err(invalid("constraints", "a constraint has an empty label"));
            }
            let n = c.values.len();
            let ok = match c.operator {
                ConstraintOp::Equals | ConstraintOp::NotEquals => n == 1,
                ConstraintOp::In | ConstraintOp::NotIn => n >= 1,
                ConstraintOp::Exists => n == 0,
            };
            if !ok {
                return Err(invalid(
                    "constraints",
                    format!(
                        "label {}: operator `{}` takes {}, got {n} values",
                        c.label,
                        c.operator.symbol(),
                        match c.operator {
                            ConstraintOp::Equals | ConstraintOp::NotEquals => "exactly one value",
                            ConstraintOp::In | ConstraintOp::NotIn => "at least one value",
                            ConstraintOp::Exists => "no values",
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Why a node with `labels` fails this job's constraints, or `None` when all hold.
    pub fn constraint_refusal(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        let why: Vec<String> = self
            .constraints
            .iter()
            .filter_map(|c| c.refuses(labels))
            .collect();
        (!why.is_empty()).then(|| why.join("; "))
    }
}

impl JobSpec {
    /// The scheduler's view of one task of this job.
    pub fn task_shape(
        &self,
        models: &mut crate::scheduler::GpuModels,
    ) -> Result<crate::scheduler::TaskShape, JobSpecError> {
        let r = &self.resources;
        let mut mask = 0u64;
        for name in &r.gpu_models {
            mask |= 1u64
                << models
                    .intern(name)
                    .map_err(|m| invalid("resources.gpu_models", m))?;
        }
        let (num_gpu, gpu_milli) = if r.gpus > 0 {
            (r.gpus as u8, 1000)
        } else if r.gpu_milli > 0 {
            (1, r.gpu_milli as u16)
        } else {
            (0, 0)
        };
        Ok(crate::scheduler::TaskShape {
            cpu: r.cpu_millicores as i64,
            mem: r.memory_mib as i64,
            num_gpu,
            gpu_milli,
            models: mask,
            min_gpu_mem_mib: r.min_gpu_memory_mib.min(u32::MAX as u64) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "train-llama"
command = "python"
args = ["train.py", "--epochs", "3"]
priority = 700
weight = 5.0
tasks = 4
gang = true
preemptible = false
inputs = ["datasets/tokens-v3"]
kill_timeout = "2m"
restart = { mode = "on-failure", attempts = 3, delay = "2s" }
constraints = [{ label = "zone", values = ["eu-1"] }]

[resources]
gpus = 8
gpu_models = ["H100", "A100"]
cpu_millicores = 64000
memory_mib = 512000
"#;

    #[test]
    fn parses_toml_and_json_alike() {
        let t = JobSpec::from_toml(TOML).expect("toml");
        assert_eq!(t.resources.gpus, 8);
        assert_eq!(t.restart.attempts, 3);
        assert_eq!(t.restart.delay, Duration::from_secs(2));
        assert_eq!(t.restart.max_delay, Duration::from_secs(30), "default kept");
        assert_eq!(t.kill_timeout, Duration::from_secs(120));
        assert_eq!(t.reschedule, ReschedulePolicy::default());
        assert_eq!(t.on_disconnect, OnDisconnect::Stop);
        let json = serde_json::to_string(&t).expect("to json");
        assert_eq!(JobSpec::from_json(&json).expect("json"), t);
    }

    #[test]
    fn converts_to_the_scheduler_shape() {
        let t = JobSpec::from_toml(TOML).expect("toml");
        let mut models = crate::scheduler::GpuModels::default();
        let shape = t.task_shape(&mut models).expect("shape");
        assert_eq!(
            (shape.num_gpu, shape.gpu_milli, shape.cpu),
            (8, 1000, 64_000)
        );
        let a100 = models.intern("A100").expect("model");
        assert!(shape.model_allowed(a100));
        assert!(!shape.model_allowed(models.intern("T4").expect("model")));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RestartPolicy::default();
        let d: Vec<u64> = (1..=7).map(|n| p.delay_before(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            backoff(Duration::from_secs(5), Duration::from_secs(1), 3),
            Duration::from_secs(5),
            "a cap below the delay never shortens it"
        );
        assert!(p.restarts_after(Some(1)) && p.restarts_after(None));
        assert!(!p.restarts_after(Some(0)));
    }

    #[test]
    fn constraints_explain_refusals() {
        let t = JobSpec::from_toml(TOML).expect("toml");
        let mut labels = BTreeMap::new();
        assert_eq!(
            t.constraint_refusal(&labels).as_deref(),
            Some("label zone is unset, constraint zone = [eu-1]")
        );
        labels.insert("zone".to_string(), "eu-1".to_string());
        assert_eq!(t.constraint_refusal(&labels), None);
        let not_in = Constraint {
            label: "zone".into(),
            operator: ConstraintOp::NotIn,
            values: vec!["eu-1".into(), "eu-2".into()],
        };
        assert!(not_in.refuses(&labels).is_some());
        assert!(not_in.refuses(&BTreeMap::new()).is_none());
        let bad = TOML.replace(
            r#"values = ["eu-1"]"#,
            r#"operator = "exists", values = ["x"]"#,
        );
        let err = JobSpec::from_toml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("`constraints`") && err.contains("no values"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = TOML.replace("priority = 700", "priority = 1001");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`priority`"));
        let bad = TOML.replace("gpus = 8", "gpus = 8\ngpu_milli = 500");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("resources.gpu_milli"));
        let bad = TOML.replace("tasks = 4", "tasks = 4\ncolour = \"red\"");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("colour"));
        let bad = TOML.replace("gpus = 8", "gpus = 16");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("gang"));
        let bad = TOML.replace("kill_timeout = \"2m\"", "kill_timeout = \"2h\"");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`kill_timeout`"));
        let bad = TOML.replace("delay = \"2s\"", "delay = \"2m\"");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`restart`: max_delay"));
        let bad = TOML.replace(
            "[resources]",
            "env = { STEWARD_JOB_ID = \"x\" }\n[resources]",
        );
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`env`"));
        let bad = TOML.replace("name = \"train-llama\"", "name = \"bad name\"");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`name`"));
    }
}
