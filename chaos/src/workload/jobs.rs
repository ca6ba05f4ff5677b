//! The job workload: submits jobs at a steady rate through any controller, each task a
//! small shell script that records, in its own allocation directory, when it started and
//! when it stopped (wall-clock nanoseconds, one line per event). Those records are the
//! agents' own account of what ran where, which the no-task-on-two-nodes checker reads
//! ([`collect_runs`]), independent of what the controllers believe.

use std::path::Path;
use std::time::{Duration, Instant};

use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::SubmitJobRequest;
use tokio_util::sync::CancellationToken;

use crate::check::placement::TaskRun;
use crate::history::Nanos;
use crate::workload::kv::Connect;

/// The file a task appends its start times to, in its allocation directory.
pub const STARTED_FILE: &str = "started";
/// The file a task appends its stop times to (SIGTERM, or the end of its runtime).
pub const STOPPED_FILE: &str = "stopped";
/// Most jobs one workload submits.
pub const MAX_JOBS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct JobMix {
    pub per_second: f64,
    pub gpus: u32,
    pub runtime: Duration,
    /// Where the records' times count from.
    pub epoch: Instant,
    pub call_timeout: Duration,
}

/// How one submission ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Accepted(String),
    Refused(String),
    /// No answer: the job may or may not exist.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct JobOp {
    pub invoked: Nanos,
    pub completed: Option<Nanos>,
    pub outcome: Submitted,
}

/// The task's shell script: records its start, runs `runtime`, records its stop; on
/// SIGTERM records its stop at once and exits.
pub fn task_script(runtime: Duration) -> String {
    format!(
        "trap 'date +%s%N >> {STOPPED_FILE}; exit 0' TERM; date +%s%N >> {STARTED_FILE}; \
         sleep {:.3} & wait $!; date +%s%N >> {STOPPED_FILE}",
        runtime.as_secs_f64()
    )
}

/// Submits jobs at `mix.per_second` through `addrs` (round robin) until `stop`.
pub async fn run(
    mix: JobMix,
    addrs: Vec<String>,
    connect: Connect,
    stop: CancellationToken,
) -> Vec<JobOp> {
    let mut ops = Vec::new();
    let every = Duration::from_secs_f64(1.0 / mix.per_second.max(0.001));
    let mut next = Instant::now();
    let mut n = 0usize;
    while !stop.is_cancelled() && ops.len() < MAX_JOBS {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next += every;
        n += 1;
        let spec = serde_json::json!({
            "name": format!("chaos-{n}"),
            "command": "/bin/sh",
            "args": ["-c", task_script(mix.runtime)],
            "kill_timeout": "5s",
            "resources": { "gpus": mix.gpus, "cpu_millicores": 10, "memory_mib": 16 },
            "restart": { "mode": "never" },
        });
        let invoked = mix.epoch.elapsed().as_nanos() as Nanos;
        let addr = addrs[n % addrs.len()].clone();
        let outcome = match connect(addr).await {
            None => Submitted::Unknown,
            Some(ch) => {
                let mut req = tonic::Request::new(SubmitJobRequest {
                    spec_json: spec.to_string(),
                    request_id: None,
                });
                req.set_timeout(mix.call_timeout);
                match AdminClient::new(ch).submit_job(req).await {
                    Ok(r) => Submitted::Accepted(r.into_inner().job_id),
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                        ) =>
                    {
                        Submitted::Refused(s.message().to_string())
                    }
                    Err(_) => Submitted::Unknown,
                }
            }
        };
        let completed =
            (outcome != Submitted::Unknown).then(|| mix.epoch.elapsed().as_nanos() as Nanos);
        ops.push(JobOp {
            invoked,
            completed,
            outcome,
        });
    }
    ops
}

/// Every run of every task the agent with data dir `data_dir` (node `node`) started, from
/// the tasks' own records: task `JOB/INDEX`, times in wall-clock milliseconds. A start
/// without a matching stop is a run still going (or one killed without SIGTERM).
pub fn collect_runs(node: &str, data_dir: &Path) -> Vec<TaskRun> {
    #[derive(serde::Deserialize)]
    struct Alloc {
        job: String,
        task: u32,
    }
    let stamps = |path: &Path| -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u128>().ok())
            .map(|ns| (ns / 1_000_000) as u64)
            .collect()
    };
    let mut runs = Vec::new();
    let Ok(entries) = std::fs::read_dir(data_dir.join("allocs")) else {
        return runs;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Some(alloc) = std::fs::read_to_string(dir.join("alloc.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Alloc>(&t).ok())
        else {
            continue;
        };
        let started = stamps(&dir.join(STARTED_FILE));
        let stopped = stamps(&dir.join(STOPPED_FILE));
        for (i, s) in started.iter().enumerate() {
            runs.push(TaskRun {
                task: format!("{}/{}", alloc.job, alloc.task),
                node: node.to_string(),
                started_ms: *s,
                stopped_ms: stopped.get(i).copied(),
            });
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_script_records_its_start_and_its_stop() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", &task_script(Duration::from_millis(50))])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let alloc = dir.path().join("allocs").join("a1");
        std::fs::create_dir_all(&alloc).unwrap();
        std::fs::write(
            alloc.join("alloc.json"),
            r#"{"job":"j1","task":0,"other":1}"#,
        )
        .unwrap();
        for f in [STARTED_FILE, STOPPED_FILE] {
            std::fs::rename(dir.path().join(f), alloc.join(f)).unwrap();
        }
        let runs = collect_runs("n1", dir.path());
        assert_eq!(runs.len(), 1);
        let r = &runs[0];
        assert_eq!((r.task.as_str(), r.node.as_str()), ("j1/0", "n1"));
        let stopped = r.stopped_ms.expect("stopped");
        assert!(stopped >= r.started_ms + 40, "{r:?}");
    }
}
