//! One allocation's supervisor: prepares its directory and cgroup, starts the shim (which
//! starts the task), restarts it in place per the job's restart policy with back-off,
//! stops it on order (SIGTERM to its process group, the grace, then SIGKILL to the group
//! and everything left in its cgroup), and reports every state change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use steward_proto::v1::AllocReportPb;
use tokio::sync::watch;

use super::shim::{self, ExitStatus};
use super::{write_json, AllocRecord, FinalRecord, Isolation, PidRecord, Runner, StopOrder};

/// How often an adopted shim (not this process's child) is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// The start time of `pid` in clock ticks since boot, from `/proc/PID/stat`.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    // rest starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is the same live (not zombie) process that started at `ticks`.
pub fn alive(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_some_and(|s| s == "Z" || s == "X");
    !zombie && start_ticks(pid) == Some(ticks)
}

/// Tries at staging an allocation's inputs, and the pause after a failed one.
const STAGE_ATTEMPTS: u32 = 3;
const STAGE_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// The environment of the task: the spec's, then what the agent sets.
fn environment(record: &AllocRecord, dir: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = record
        .spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let gpus = record.gpus.join(",");
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    // Bind by UUID, never by index: indexes differ between tools and after resets.
    set("CUDA_VISIBLE_DEVICES", gpus.clone());
    set(
        "NVIDIA_VISIBLE_DEVICES",
        if gpus.is_empty() { "void".into() } else { gpus },
    );
    if record.gpu_milli > 0 && record.gpu_milli < 1000 {
        set("STEWARD_GPU_MILLI", record.gpu_milli.to_string());
    }
    set("STEWARD_ALLOC_ID", record.id.clone());
    set("STEWARD_JOB_ID", record.job.clone());
    set("STEWARD_TASK_INDEX", record.task.to_string());
    set("STEWARD_GENERATION", record.generation.to_string());
    for input in &record.spec.inputs {
        if let Ok((name, _)) = steward_core::objects::VersionSelector::parse_reference(input) {
            set(
                &steward_core::job::input_env_name(&name),
                super::inputs::input_path(dir, &name).display().to_string(),
            );
        }
    }
    if let Some((addr, port, rank, world, local)) = &record.rendezvous {
        set("MASTER_ADDR", addr.clone());
        set("MASTER_PORT", port.to_string());
        set("RANK", rank.to_string());
        set("WORLD_SIZE", world.to_string());
        set("LOCAL_RANK", local.to_string());
    }
    env
}

/// Starts the shim for `record`; returns it (this process's child) and its pid record.
fn spawn_shim(
    runner: &Runner,
    record: &AllocRecord,
    dir: &Path,
    restarts: u32,
) -> std::io::Result<(tokio::process::Child, PidRecord)> {
    let _ = std::fs::remove_file(dir.join(shim::EXIT_STATUS_FILE));
    let _ = std::fs::remove_file(dir.join(super::isolation::OOM_KILLED_FILE));
    let confinement =
        runner
            .isolation()
            .create(&record.id, record.cpu_millicores, record.memory_mib)?;
    let mut cmd = tokio::process::Command::new(&runner.config.shim_exe);
    cmd.arg("agent-shim").arg("--alloc-dir").arg(dir);
    for p in &confinement.cgroup_procs {
        cmd.arg("--cgroup-procs").arg(p);
    }
    if let Some(mib) = confinement.memory_limit_mib {
        cmd.arg("--memory-limit-mib").arg(mib.to_string());
    }
    if record.spec.on_disconnect == steward_core::job::OnDisconnect::Stop {
        // The shim fences its task itself when the agent stops renewing the lease.
        cmd.arg("--fence-lease")
            .arg(runner.fence_lease_path())
            .arg("--fence-after-ms")
            .arg(runner.fence_after().as_millis().to_string())
            .arg("--fence-grace-ms")
            .arg(super::FENCE_KILL_GRACE.as_millis().to_string());
    }
    cmd.arg("--")
        .arg(&record.spec.command)
        .args(&record.spec.args);
    cmd.env_clear();
    for key in ["PATH", "HOME", "LANG", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    // Test builds: the shim arms the agent's fail points too (`agent-skip-fence`).
    #[cfg(feature = "failpoints")]
    if let Ok(v) = std::env::var("FAILPOINTS") {
        cmd.env("FAILPOINTS", v);
    }
    cmd.envs(environment(record, dir));
    cmd.current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("shim.log"))?,
        )
        // Its own process group, which the task joins: stopping signals the whole group,
        // and the agent's own signals (a Ctrl-C, a restart) never reach it.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .map(|p| p as i32)
        .ok_or_else(|| std::io::Error::other("the shim exited at once"))?;
    let record = PidRecord {
        pid,
        start_ticks: start_ticks(pid).unwrap_or(0),
        restarts,
    };
    if let Err(e) = write_json(dir, "pid.json", &record) {
        // Without its record the shim could not be re-adopted or fenced by pid: stop it.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(e);
    }
    Ok((child, record))
}

/// What the task's end means: its final state (or a restart) and why.
fn describe_exit(
    isolation: &Isolation,
    dir: &Path,
    record: &AllocRecord,
    status: Option<ExitStatus>,
) -> (Option<i32>, bool, String) {
    let oom = isolation.oom_killed(&record.id, dir);
    match status {
        _ if oom => {
            // A process-group shim wrote what it measured.
            let measured = std::fs::read_to_string(dir.join(super::isolation::OOM_KILLED_FILE))
                .map(|t| format!(": {}", t.trim()))
                .unwrap_or_default();
            (
                Some(137),
                false,
                format!(
                    "out of memory: killed at its limit of {} MiB ({}{measured})",
                    record.memory_mib,
                    isolation.name()
                ),
            )
        }
        Some(ExitStatus::Code(0)) => (Some(0), true, String::new()),
        Some(ExitStatus::Code(c)) => (Some(c), false, format!("exited with code {c}")),
        Some(ExitStatus::Signal(s)) => (Some(128 + s), false, format!("killed by signal {s}")),
        Some(ExitStatus::StartFailed(msg)) => (None, false, msg),
        Some(ExitStatus::Fenced) => (
            None,
            false,
            "fenced by its shim: no heartbeat acknowledged by a leader in time".into(),
        ),
        None => (None, false, "the task's shim was killed".into()),
    }
}

/// Reports and records how an allocation that ended while the agent was away ended.
pub fn conclude_away(
    isolation: &Isolation,
    dir: &Path,
    record: &AllocRecord,
    pid: Option<&PidRecord>,
) -> FinalRecord {
    let restarts = pid.map_or(0, |p| p.restarts);
    if let Some(p) = pid {
        // The shim is gone; anything its task left behind in the group goes with it. Only
        // when no process has the pid now: a live process with it (after a reboot or pid
        // wrap-around) is someone else, and Linux gives no new process the id of a group
        // that still has members.
        if !Path::new(&format!("/proc/{}", p.pid)).exists() {
            let _ = killpg(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
    let status = shim::read_exit_status(dir);
    let fenced = status == Some(ExitStatus::Fenced);
    let (code, ok, reason) = describe_exit(isolation, dir, record, status);
    let fin = FinalRecord {
        state: if fenced {
            "lost"
        } else if ok {
            "complete"
        } else {
            "failed"
        }
        .into(),
        exit_code: code,
        restarts,
        reason: if ok {
            "exited with 0 while the agent was down".into()
        } else {
            format!("{reason} (while the agent was down)")
        },
    };
    let _ = write_json(dir, "final.json", &fin);
    isolation.kill_all(&record.id);
    isolation.remove(&record.id);
    fin
}

/// Waits for the shim to exit: this process's child, or an adopted pid.
async fn wait_exit(child: &mut Option<tokio::process::Child>, pid: &PidRecord) {
    match child {
        Some(c) => {
            let _ = c.wait().await;
        }
        None => {
            while alive(pid.pid, pid.start_ticks) {
                tokio::time::sleep(ADOPTED_POLL).await;
            }
        }
    }
}

/// Stops the task: SIGTERM to its group, the grace (cut short when a shorter stop order
/// arrives, e.g. a fence during a cancel), then SIGKILL to the group and anything left in
/// its cgroup.
async fn stop_task(
    isolation: &Isolation,
    id: &str,
    child: &mut Option<tokio::process::Child>,
    pid: &PidRecord,
    grace: Duration,
    stop: &mut watch::Receiver<Option<StopOrder>>,
) {
    let group = Pid::from_raw(pid.pid);
    let _ = killpg(group, Signal::SIGTERM);
    let mut deadline = tokio::time::Instant::now() + grace;
    let exited = loop {
        tokio::select! {
            _ = wait_exit(child, pid) => break true,
            _ = tokio::time::sleep_until(deadline) => break false,
            changed = stop.changed() => {
                if changed.is_err() {
                    continue;
                }
                if let Some(o) = stop.borrow_and_update().clone() {
                    deadline = deadline.min(tokio::time::Instant::now() + o.grace);
                }
            }
        }
    };
    if !exited {
        tracing::info!(alloc = %id, grace_ms = grace.as_millis() as u64, "did not stop after SIGTERM; SIGKILL");
    }
    kill_leftovers(isolation, id, pid);
    wait_exit(child, pid).await;
}

/// SIGKILLs what is left of an allocation: its process group (a task's leftovers after the
/// shim exited; the only handle without a cgroup) and everything in its cgroup.
fn kill_leftovers(isolation: &Isolation, id: &str, pid: &PidRecord) {
    let _ = killpg(Pid::from_raw(pid.pid), Signal::SIGKILL);
    isolation.kill_all(id);
}

pub async fn run(
    runner: Arc<Runner>,
    record: AllocRecord,
    adopt: Option<PidRecord>,
    mut stop: watch::Receiver<Option<StopOrder>>,
) {
    let dir = runner.alloc_dir(&record.id);
    let report = |state: &str, exit_code: Option<i32>, restarts: u32, reason: String| {
        runner.report(AllocReportPb {
            alloc_id: record.id.clone(),
            generation: record.generation,
            state: state.into(),
            exit_code,
            restarts,
            reason,
        })
    };
    if adopt.is_none() {
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|_| write_json(&dir, "alloc.json", &record))
        {
            report(
                "failed",
                None,
                0,
                format!("cannot prepare {}: {e}", dir.display()),
            );
            return;
        }
    }
    if adopt.is_none() && !record.spec.inputs.is_empty() {
        let staged = tokio::select! {
            r = stage_inputs(&runner, &record, &dir, &report) => r,
            order = wait_order(&mut stop) => Err(order),
        };
        if let Err(order) = staged {
            let fin = FinalRecord {
                state: order.report_as.into(),
                exit_code: None,
                restarts: 0,
                reason: order.reason,
            };
            if let Err(e) = write_json(&dir, "final.json", &fin) {
                tracing::warn!(alloc = %record.id, error = %e, "cannot record how the allocation ended");
            }
            tracing::info!(alloc = %record.id, state = %fin.state, reason = %fin.reason, "allocation ended before it started");
            report(&fin.state, None, 0, fin.reason);
            return;
        }
    }
    let policy = record.spec.restart;
    let mut restarts = adopt.as_ref().map_or(0, |p| p.restarts);
    let mut restart_times: Vec<Instant> = Vec::new();
    let mut adopted = adopt;
    let fin = loop {
        let (mut child, pid) = match adopted.take() {
            Some(p) => (None, p),
            None => {
                report("starting", None, restarts, String::new());
                match spawn_shim(&runner, &record, &dir, restarts) {
                    Ok((c, p)) => (Some(c), p),
                    Err(e) => {
                        break FinalRecord {
                            state: "failed".into(),
                            exit_code: None,
                            restarts,
                            reason: format!("cannot start the task: {e}"),
                        }
                    }
                }
            }
        };
        report("running", None, restarts, String::new());
        let order = tokio::select! {
            _ = wait_exit(&mut child, &pid) => None,
            order = wait_order(&mut stop) => Some(order),
        };
        if let Some(order) = order {
            stop_task(
                runner.isolation(),
                &record.id,
                &mut child,
                &pid,
                order.grace,
                &mut stop,
            )
            .await;
            break FinalRecord {
                state: order.report_as.into(),
                exit_code: None,
                restarts,
                reason: order.reason,
            };
        }
        let status = shim::read_exit_status(&dir);
        let fenced = status == Some(ExitStatus::Fenced);
        let (code, ok, reason) = describe_exit(runner.isolation(), &dir, &record, status);
        // What the task left behind (daemonised children) does not outlive it.
        kill_leftovers(runner.isolation(), &record.id, &pid);
        if fenced {
            // Cut off: the work is placed elsewhere; never restart it here.
            break FinalRecord {
                state: "lost".into(),
                exit_code: None,
                restarts,
                reason,
            };
        }
        let interval = policy.interval;
        restart_times.retain(|t| t.elapsed() < interval);
        let may_restart = policy.restarts_after(if ok { Some(0) } else { code.or(Some(-1)) })
            && (restart_times.len() as u32) < policy.attempts
            && !reason.starts_with("out of memory");
        if !may_restart {
            break FinalRecord {
                state: if ok { "complete" } else { "failed" }.into(),
                exit_code: code,
                restarts,
                reason: if ok || restarts == 0 {
                    reason
                } else {
                    format!("{reason}; {restarts} restarts spent")
                },
            };
        }
        restart_times.push(Instant::now());
        restarts += 1;
        let delay = policy.delay_before(restart_times.len() as u32);
        report(
            "starting",
            code,
            restarts,
            format!(
                "{}; restart {restarts} in {} ms",
                if ok { "exited with 0".into() } else { reason },
                delay.as_millis()
            ),
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            order = wait_order(&mut stop) => {
                break FinalRecord { state: order.report_as.into(), exit_code: code, restarts, reason: order.reason };
            }
        }
    };
    if let Err(e) = write_json(&dir, "final.json", &fin) {
        tracing::warn!(alloc = %record.id, error = %e, "cannot record how the allocation ended");
    }
    runner.isolation().kill_all(&record.id);
    runner.isolation().remove(&record.id);
    tracing::info!(alloc = %record.id, state = %fin.state, reason = %fin.reason, "allocation ended");
    report(&fin.state, fin.exit_code, fin.restarts, fin.reason.clone());
}

/// Stages the allocation's inputs in its directory, retrying a failed attempt; the error
/// is the order to end it as failed.
async fn stage_inputs(
    runner: &Runner,
    record: &AllocRecord,
    dir: &Path,
    report: &impl Fn(&str, Option<i32>, u32, String),
) -> Result<(), StopOrder> {
    let failed = |reason: String| StopOrder {
        grace: Duration::ZERO,
        report_as: "failed",
        reason,
    };
    let Some(stager) = runner.stager() else {
        return Err(failed(
            "this agent has no chunk store to stage inputs".into(),
        ));
    };
    let mut last = String::new();
    for attempt in 1..=STAGE_ATTEMPTS {
        report(
            "starting",
            None,
            0,
            format!(
                "staging {} input(s){}",
                record.spec.inputs.len(),
                if attempt > 1 {
                    format!(" (attempt {attempt} of {STAGE_ATTEMPTS}; {last})")
                } else {
                    String::new()
                }
            ),
        );
        let leader = runner.leader_addr().await;
        let started = Instant::now();
        match stager
            .stage_all(&leader, dir, &record.job, &record.spec.inputs)
            .await
        {
            Ok(staged) => {
                let bytes: u64 = staged.iter().map(|s| s.bytes).sum();
                let pulled: u64 = staged.iter().flat_map(|s| s.chunks_from.values()).sum();
                tracing::info!(
                    alloc = %record.id,
                    inputs = staged.len(),
                    bytes,
                    chunks_pulled = pulled,
                    ms = started.elapsed().as_millis() as u64,
                    "inputs staged"
                );
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(alloc = %record.id, attempt, error = %e, "staging inputs failed");
                last = e;
            }
        }
        if attempt < STAGE_ATTEMPTS {
            tokio::time::sleep(STAGE_RETRY_PAUSE * attempt).await;
        }
    }
    Err(failed(last))
}

/// Resolves once a stop order is given (at once if one already was).
async fn wait_order(stop: &mut watch::Receiver<Option<StopOrder>>) -> StopOrder {
    loop {
        if let Some(o) = stop.borrow_and_update().clone() {
            return o;
        }
        if stop.changed().await.is_err() {
            // The runner forgot this allocation: never happens while it runs; wait forever.
            std::future::pending::<()>().await;
        }
    }
}
