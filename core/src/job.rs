//! Job specifications: what a user submits. Parsed from TOML or JSON, validated with errors
//! that name the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Highest priority a job may have.
pub const MAX_PRIORITY: u32 = 1000;
/// Most tasks in one job.
pub const MAX_TASKS: u32 = 10_000;
/// Most GPUs one task may ask for.
pub const MAX_GPUS_PER_TASK: u32 = 8;

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
    /// Objects (by name or BLAKE3 hash) the tasks read; the scheduler prefers nodes holding them.
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// May be evicted for a higher-priority job.
    #[serde(default)]
    pub preemptible: bool,
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "policy", deny_unknown_fields)]
pub enum RestartPolicy {
    #[default]
    Never,
    OnFailure {
        max_retries: u32,
    },
    Always,
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
        if r.cpu_millicores == 0 {
            return Err(invalid("resources.cpu_millicores", "must be above 0"));
        }
        if r.memory_mib == 0 {
            return Err(invalid("resources.memory_mib", "must be above 0"));
        }
        if r.gpus == 0 && r.gpu_milli == 0 && (!r.gpu_models.is_empty() || r.min_gpu_memory_mib > 0)
        {
            return Err(invalid(
                "resources.gpu_models",
                "GPU constraints given but no GPU requested",
            ));
        }
        if let RestartPolicy::OnFailure { max_retries } = self.restart {
            if max_retries == 0 || max_retries > 100 {
                return Err(invalid(
                    "restart.max_retries",
                    format!("{max_retries} must be between 1 and 100"),
                ));
            }
        }
        Ok(())
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
restart = { policy = "on-failure", max_retries = 3 }

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
        assert_eq!(t.restart, RestartPolicy::OnFailure { max_retries: 3 });
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
        let bad = TOML.replace("name = \"train-llama\"", "name = \"bad name\"");
        assert!(JobSpec::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("`name`"));
    }
}
