//! Background work behind one abstraction (after Garage's `util/background/worker.rs`).
//!
//! A [`Worker`] does its work one `step` at a time and says what it wants next: to run again
//! at once, to wait (for a time, or until woken), or to stop. The [`WorkerSet`] runs each
//! worker on a tracked task, records its state, counts its errors, backs off after an error
//! (exponentially, up to [`MAX_BACKOFF`]), and stops them all on shutdown. `steward status`
//! lists what [`WorkerSet::statuses`] returns, so no background task is invisible.
//!
//! A step must be cancel-safe: at shutdown the set drops the step's future at an `.await`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First pause after a failed step; doubles with each consecutive failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause after failed steps.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a worker wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Step again at once.
    Busy,
    /// Step again after this long, or sooner when woken.
    Wait(Duration),
    /// Step again when woken.
    Idle,
    /// The worker has finished.
    Done,
}

pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

pub trait Worker: Send + 'static {
    /// A short, stable name ("liveness", "proposer").
    fn name(&self) -> String;

    /// One unit of work. Cancel-safe.
    fn step(&mut self) -> impl Future<Output = Result<Next, WorkerError>> + Send;

    /// What it is doing now, for `steward status` ("3 proposals queued").
    fn detail(&self) -> String {
        String::new()
    }
}

/// A worker's state as `steward status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerState {
    Busy,
    Waiting,
    Idle,
    /// Paused after `consecutive_errors` failed steps.
    BackingOff,
    Done,
    Stopped,
}

impl WorkerState {
    pub fn name(&self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Waiting => "waiting",
            WorkerState::Idle => "idle",
            WorkerState::BackingOff => "backing off",
            WorkerState::Done => "done",
            WorkerState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    pub steps: u64,
    pub errors: u64,
    pub consecutive_errors: u32,
    /// The last error and when it happened.
    pub last_error: Option<(String, Instant)>,
    pub detail: String,
}

/// Runs workers and knows how each is doing.
#[derive(Clone)]
pub struct WorkerSet {
    statuses: Arc<Mutex<BTreeMap<u64, WorkerStatus>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for WorkerSet {
    fn default() -> Self {
        Self::new(CancellationToken::new())
    }
}

impl WorkerSet {
    /// A set whose workers stop when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Self {
        WorkerSet {
            statuses: Arc::default(),
            tracker: TaskTracker::new(),
            shutdown,
            next_id: Arc::default(),
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts `worker`; `wake`, when given, ends its waits early.
    pub fn spawn<W: Worker>(&self, worker: W, wake: Option<Arc<Notify>>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = WorkerStatus {
            name: worker.name(),
            state: WorkerState::Busy,
            steps: 0,
            errors: 0,
            consecutive_errors: 0,
            last_error: None,
            detail: String::new(),
        };
        self.lock().insert(id, status);
        let set = self.clone();
        self.tracker.spawn(async move {
            set.run(id, worker, wake.unwrap_or_default()).await;
        });
    }

    /// Runs `task` (a server, say) as a tracked task that shutdown waits for.
    pub fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, WorkerStatus>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut WorkerStatus)) {
        if let Some(s) = self.lock().get_mut(&id) {
            f(s);
        }
    }

    async fn run<W: Worker>(&self, id: u64, mut worker: W, wake: Arc<Notify>) {
        let stop = self.shutdown.clone();
        let mut next = Next::Busy;
        loop {
            let detail = worker.detail();
            self.update(id, |s| {
                s.detail = detail;
                s.state = match next {
                    Next::Busy => WorkerState::Busy,
                    Next::Wait(_) => WorkerState::Waiting,
                    Next::Idle => WorkerState::Idle,
                    Next::Done => WorkerState::Done,
                };
            });
            match next {
                Next::Done => return,
                Next::Busy => {}
                Next::Wait(d) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                        _ = wake.notified() => {}
                    }
                }
                Next::Idle => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = wake.notified() => {}
                    }
                }
            }
            let result = tokio::select! {
                _ = stop.cancelled() => break,
                r = worker.step() => r,
            };
            match result {
                Ok(n) => {
                    next = n;
                    self.update(id, |s| {
                        s.steps += 1;
                        s.consecutive_errors = 0;
                    });
                }
                Err(e) => {
                    let mut failures = 0;
                    self.update(id, |s| {
                        s.steps += 1;
                        s.errors += 1;
                        s.consecutive_errors += 1;
                        failures = s.consecutive_errors;
                        s.last_error = Some((e.to_string(), Instant::now()));
                        s.state = WorkerState::BackingOff;
                    });
                    let pause = backoff(failures);
                    tracing::warn!(worker = %worker.name(), error = %e, failures, ?pause, "worker step failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    next = Next::Busy;
                }
            }
        }
        self.update(id, |s| s.state = WorkerState::Stopped);
    }

    /// Every worker's status, in start order.
    pub fn statuses(&self) -> Vec<WorkerStatus> {
        self.lock().values().cloned().collect()
    }

    /// Stops every worker and waits for them (and every tracked task) to end.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Pause after `failures` consecutive failed steps, with up to 20 % jitter.
pub fn backoff(failures: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let base = exp.min(MAX_BACKOFF);
    let jitter = rand::random_range(0..=base.as_millis() as u64 / 5);
    base + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        calls: u32,
    }

    impl Worker for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        async fn step(&mut self) -> Result<Next, WorkerError> {
            self.calls += 1;
            match self.calls {
                1 => Err("first step fails".into()),
                2 => Ok(Next::Busy),
                _ => Ok(Next::Idle),
            }
        }
        fn detail(&self) -> String {
            format!("{} calls", self.calls)
        }
    }

    #[tokio::test]
    async fn errors_are_counted_backed_off_and_shutdown_stops_all() {
        let set = WorkerSet::default();
        let wake = Arc::new(Notify::new());
        set.spawn(Flaky { calls: 0 }, Some(wake.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = set.statuses().remove(0);
            if s.state == WorkerState::Idle {
                assert_eq!((s.errors, s.consecutive_errors, s.steps), (1, 0, 3));
                assert_eq!(
                    s.last_error.map(|e| e.0).as_deref(),
                    Some("first step fails")
                );
                assert_eq!(s.detail, "3 calls");
                break;
            }
            assert!(Instant::now() < deadline, "worker never went idle: {s:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wake.notify_one();
        set.shutdown().await;
        assert_eq!(set.statuses()[0].state, WorkerState::Stopped);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) >= FIRST_BACKOFF && backoff(1) <= FIRST_BACKOFF * 2);
        assert!(backoff(4) >= FIRST_BACKOFF * 8);
        assert!(backoff(40) <= MAX_BACKOFF + MAX_BACKOFF / 5);
    }
}
