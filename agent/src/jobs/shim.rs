//! The allocation shim: the process the agent starts for each allocation, which starts the
//! task and outlives the agent (Nomad splits the same job between its executor and
//! logmon). It runs `steward agent-shim`:
//!
//! - joins the allocation's cgroups (the agent made them and set the limits) before
//!   starting the task, so the task and everything it forks are inside from the start;
//! - starts the task in the shim's own process group, with stdin closed, and copies its
//!   stdout and stderr into size-capped rotating files ([`RotatingLog`]): a task that
//!   prints without pause never holds more than `max_files × max_bytes` per stream;
//! - waits for the task and writes its exit status durably to `exit-status`, so an agent
//!   that restarted meanwhile still learns how the task ended;
//! - survives SIGTERM sent to the group (it waits for the task to finish its shutdown);
//!   SIGKILL ends it with the task.
//!
//! Synchronous std code on purpose: a few threads, no runtime.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Nomad's default for each stream: 10 files of 10 MB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_LOG_FILES: u32 = 10;
/// The file the shim writes the task's exit status to ("exit N" or "signal N").
pub const EXIT_STATUS_FILE: &str = "exit-status";

/// What the shim is asked to do (the agent passes it as arguments).
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// The allocation's directory: logs and the exit status go here.
    pub alloc_dir: PathBuf,
    /// `cgroup.procs` (v2) or `tasks`/`cgroup.procs` (v1) files to write the shim's pid to.
    pub cgroup_procs: Vec<PathBuf>,
    pub max_log_bytes: u64,
    pub max_log_files: u32,
    /// The task's program and arguments.
    pub command: Vec<String>,
    /// Fencing: the agent's lease file (a CLOCK_MONOTONIC deadline in ns). Past it, the
    /// shim stops the task itself (SIGTERM, `fence_grace`, SIGKILL): the agent may be
    /// paused or gone, and the controllers will place the work elsewhere.
    pub fence_lease: Option<PathBuf>,
    /// The deadline while the lease file does not exist yet: start + this.
    pub fence_after: std::time::Duration,
    pub fence_grace: std::time::Duration,
    /// Process-group isolation (no cgroup): the shim sets the task's RLIMIT_DATA and kills
    /// the group when its resident memory passes this limit.
    pub memory_limit_mib: Option<u64>,
}

/// How long the shim waits for the task's output pipes to close after the task exited (a
/// daemonised child may hold them open forever).
const DRAIN_OUTPUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A log stream kept as `NAME`, `NAME.1` ... `NAME.(max_files-1)`, newest first, each at
/// most `max_bytes`.
pub struct RotatingLog {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    max_files: u32,
    file: File,
    size: u64,
}

impl RotatingLog {
    pub fn open(dir: &Path, name: &str, max_bytes: u64, max_files: u32) -> std::io::Result<Self> {
        let path = dir.join(name);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            max_bytes: max_bytes.max(1),
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let path = |i: u32| {
            if i == 0 {
                self.dir.join(&self.name)
            } else {
                self.dir.join(format!("{}.{i}", self.name))
            }
        };
        let last = self.max_files - 1;
        if last == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(path(last));
        for i in (0..last).rev() {
            if path(i).exists() {
                std::fs::rename(path(i), path(i + 1))?;
            }
        }
        self.file = OpenOptions::new().create(true).append(true).open(path(0))?;
        self.size = 0;
        Ok(())
    }

    pub fn write(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.max_bytes {
                self.rotate()?;
            }
            let room = (self.max_bytes - self.size) as usize;
            let n = room.min(buf.len());
            self.file.write_all(&buf[..n])?;
            self.size += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }
}

/// The files of a stream, oldest first.
pub fn log_files(dir: &Path, name: &str, max_files: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..max_files.max(1))
        .rev()
        .map(|i| dir.join(format!("{name}.{i}")))
        .filter(|p| p.exists())
        .collect();
    let current = dir.join(name);
    if current.exists() {
        files.push(current);
    }
    files
}

fn copy_stream(mut from: impl Read, mut to: RotatingLog) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = to.write(&buf[..n]) {
                    eprintln!("steward-shim: writing the log failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Publishes `contents` as `dir/name` durably (temporary file, fsync, rename, fsync dir).
pub fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// Runs the shim; returns the process exit code.
pub fn run(args: ShimArgs) -> i32 {
    let pid = std::process::id();
    for procs in &args.cgroup_procs {
        if let Err(e) = std::fs::write(procs, pid.to_string()) {
            eprintln!("steward-shim: joining cgroup {}: {e}", procs.display());
            return 125;
        }
    }
    // The group's SIGTERM is the task's to handle: the shim waits for it. Handlers (not
    // SIG_IGN, which the task would inherit; exec resets handlers) keep the shim alive.
    // tokio's signal registration installs them; nothing ever polls them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    let _signals: Vec<tokio::signal::unix::Signal> = match &runtime {
        Ok(rt) => {
            let _entered = rt.enter();
            use tokio::signal::unix::{signal, SignalKind};
            [
                SignalKind::terminate(),
                SignalKind::interrupt(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|k| signal(k).ok())
            .collect()
        }
        Err(_) => Vec::new(),
    };
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("steward-shim: no command");
        return 125;
    };
    let open = |name: &str| {
        RotatingLog::open(
            &args.alloc_dir,
            name,
            args.max_log_bytes,
            args.max_log_files,
        )
    };
    let (out, err) = match (open("stdout.log"), open("stderr.log")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("steward-shim: opening the logs: {e}");
            return 125;
        }
    };
    if let Some(limit) = args.memory_limit_mib {
        // Set on the shim and inherited by the task: the shim's own few MiB fit under it.
        let data = super::isolation::data_rlimit_bytes(limit);
        if let Err(e) =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_DATA, data, data)
        {
            eprintln!("steward-shim: setting RLIMIT_DATA: {e}");
            return 125;
        }
    }
    let child = Command::new(program)
        .args(rest)
        .current_dir(&args.alloc_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot start `{program}`: {e}");
            let _ = write_durably(
                &args.alloc_dir,
                EXIT_STATUS_FILE,
                format!("error {msg}\n").as_bytes(),
            );
            eprintln!("steward-shim: {msg}");
            return 127;
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut copiers = 0;
    for (stream, log) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            out,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            err,
        ),
    ] {
        if let Some(stream) = stream {
            let done = done_tx.clone();
            copiers += 1;
            std::thread::spawn(move || {
                copy_stream(stream, log);
                let _ = done.send(());
            });
        }
    }
    let fenced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(lease) = args.fence_lease.clone() {
        let (task, fenced) = (child.id() as i32, fenced.clone());
        let fallback = super::monotonic_ns() + args.fence_after.as_nanos() as u64;
        let grace = args.fence_grace;
        let (fence_after, dir, procs) = (
            args.fence_after,
            args.alloc_dir.clone(),
            args.cgroup_procs.clone(),
        );
        std::thread::spawn(move || {
            fence_watch(
                &lease,
                fallback,
                fence_after,
                task,
                grace,
                &fenced,
                &dir,
                &procs,
            )
        });
    }
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = args.memory_limit_mib.map(|limit| {
        let (finished, dir) = (finished.clone(), args.alloc_dir.clone());
        std::thread::spawn(move || memory_watch(limit, &dir, &finished))
    });
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("steward-shim: waiting for the task: {e}");
                return 125;
            }
        }
    };
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    // Its out-of-memory record, if it killed the task, is written before the exit status.
    if let Some(w) = watch {
        let _ = w.join();
    }
    let drain_until = std::time::Instant::now() + DRAIN_OUTPUT;
    for _ in 0..copiers {
        let left = drain_until.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            eprintln!("steward-shim: the task exited but something still holds its output open; not waiting");
            break;
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let (line, code) = match (status.code(), status.signal()) {
        _ if fenced.load(std::sync::atomic::Ordering::SeqCst) => ("fenced\n".to_string(), 137),
        (Some(c), _) => (format!("exit {c}\n"), c),
        (None, Some(s)) => (format!("signal {s}\n"), 128 + s),
        _ => ("exit 255\n".to_string(), 255),
    };
    if let Err(e) = write_durably(&args.alloc_dir, EXIT_STATUS_FILE, line.as_bytes()) {
        eprintln!("steward-shim: recording the exit status: {e}");
    }
    code
}

/// How a task ended, as the shim recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// The program could not be started.
    StartFailed(String),
    /// The shim stopped it: the agent's fence lease ran out.
    Fenced,
}

pub fn read_exit_status(alloc_dir: &Path) -> Option<ExitStatus> {
    let text = std::fs::read_to_string(alloc_dir.join(EXIT_STATUS_FILE)).ok()?;
    let text = text.trim();
    if text == "fenced" {
        return Some(ExitStatus::Fenced);
    }
    if let Some(msg) = text.strip_prefix("error ") {
        return Some(ExitStatus::StartFailed(msg.to_string()));
    }
    let (kind, n) = text.split_once(' ')?;
    let n: i32 = n.parse().ok()?;
    match kind {
        "exit" => Some(ExitStatus::Code(n)),
        "signal" => Some(ExitStatus::Signal(n)),
        _ => None,
    }
}

/// Watches the agent's fence lease; once it runs out while the task still runs, stops it:
/// SIGTERM to the shim's process group (the task is in it; the shim survives SIGTERM),
/// the grace, then records `fenced` durably and SIGKILLs the whole group (the shim with it)
/// and everything in the task's cgroups (children that left the group too).
#[allow(clippy::too_many_arguments)]
fn fence_watch(
    lease: &Path,
    fallback: u64,
    fence_after: std::time::Duration,
    task: i32,
    grace: std::time::Duration,
    fenced: &std::sync::atomic::AtomicBool,
    alloc_dir: &Path,
    cgroup_procs: &[PathBuf],
) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::{getpgrp, Pid};
    // Test builds: never fence (see the agent's `agent-skip-fence`).
    fail::fail_point!("agent-skip-fence", |_| ());
    loop {
        let deadline = super::read_fence_lease(lease, fence_after).unwrap_or(fallback);
        if super::monotonic_ns() > deadline {
            break;
        }
        std::thread::sleep(super::FENCE_CHECK);
    }
    if kill(Pid::from_raw(task), None).is_err() {
        // The task already ended on its own: nothing to fence.
        return;
    }
    fenced.store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!("steward-shim: the agent's fence lease ran out: stopping the task");
    let _ = killpg(getpgrp(), Signal::SIGTERM);
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until && kill(Pid::from_raw(task), None).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = write_durably(alloc_dir, EXIT_STATUS_FILE, b"fenced\n");
    for procs in cgroup_procs {
        if let Some(dir) = procs.parent() {
            // cgroup v2 kills everything inside at once; v1 has no such file.
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    if pid != std::process::id() as i32 {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
    }
    let _ = killpg(getpgrp(), Signal::SIGKILL);
}

/// Process-group isolation's memory limit: every [`MEMORY_WATCH_INTERVAL`], sums the
/// resident memory of the shim's process group (the task and its children, not the shim);
/// past `limit_mib`, records why durably and SIGKILLs every member until the task is gone.
///
/// [`MEMORY_WATCH_INTERVAL`]: super::isolation::MEMORY_WATCH_INTERVAL
fn memory_watch(limit_mib: u64, alloc_dir: &Path, finished: &std::sync::atomic::AtomicBool) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::{getpgrp, Pid};
    let limit = limit_mib.saturating_mul(1024 * 1024);
    let (group, me) = (getpgrp().as_raw(), std::process::id() as i32);
    while !finished.load(std::sync::atomic::Ordering::SeqCst) {
        let (members, resident) = super::isolation::group_resident(group, me);
        if resident > limit {
            // Kill first (the task keeps growing while a record is synced), then record
            // why; `run` joins this thread before it writes the exit status.
            let kill_members = |members: &[i32]| {
                for &pid in members {
                    // Still ours: a pid freed and reused since the scan is left alone.
                    if super::isolation::process_group_of(pid) == Some(group) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            };
            kill_members(&members);
            let why = format!(
                "resident memory {} MiB over the limit of {limit_mib} MiB\n",
                resident / (1024 * 1024)
            );
            eprintln!("steward-shim: {}", why.trim_end());
            let _ = write_durably(alloc_dir, super::isolation::OOM_KILLED_FILE, why.as_bytes());
            while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                kill_members(&super::isolation::group_resident(group, me).0);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            return;
        }
        std::thread::sleep(super::isolation::MEMORY_WATCH_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_log_stays_under_its_cap() {
        let dir = tempfile::tempdir().expect("dir");
        let mut log = RotatingLog::open(dir.path(), "stdout.log", 1000, 3).expect("open");
        for i in 0..200u32 {
            log.write(format!("line {i:04} ..........\n").as_bytes())
                .expect("write");
        }
        let files = log_files(dir.path(), "stdout.log", 3);
        assert_eq!(files.len(), 3);
        let total: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).expect("meta").len())
            .sum();
        assert!(total <= 3000, "{total}");
        let last = std::fs::read_to_string(files.last().expect("current")).expect("read");
        assert!(last.ends_with("line 0199 ..........\n"), "{last}");
        let first = std::fs::read_to_string(&files[0]).expect("read");
        assert!(!first.contains("line 0000"), "the oldest was dropped");
    }
}
