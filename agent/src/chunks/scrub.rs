//! The scrubber: every chunk re-read and re-hashed, so rot is found before a read needs the
//! chunk. A rotten chunk is quarantined by the store's own check and reported with the
//! next change report, and the leader's repair copies it back from a good replica.
//!
//! One pass visits the chunks in id order, limited to `bytes_per_sec`, and records where it
//! is in `scrub.json` (every 100 chunks and at the end), so a restarted agent resumes the
//! pass instead of starting over. Passes start `interval` apart (default 7 days) with ±10 %
//! jitter, so a fleet started together does not scrub together; `StartScrub` (`steward
//! node scrub ID`) starts one now. It runs on its own thread: every step is blocking disk
//! I/O.
//!
//! It gives way to the node's work: every [`BUSY_CHECK`] it reads how busy the data dir's
//! block device was (`/proc/diskstats`, the share of time with I/O in flight); at
//! [`BUSY_PAUSE_PCT`] or more it pauses, and resumes once the device, without the
//! scrubber, is below [`BUSY_RESUME_PCT`]. On a filesystem without a block device of its
//! own (tmpfs, overlay) it never pauses.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use steward_core::chunk::ChunkId;

use super::{ChunkError, ChunkStore};

/// Default time between passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default read rate of a pass.
pub const DEFAULT_BYTES_PER_SEC: u64 = 50 << 20;
/// Chunks between checkpoint writes.
const CHECKPOINT_EVERY: u64 = 100;
/// Longest one wait lasts before the stop flag is looked at again.
const POLL: Duration = Duration::from_millis(200);
/// How often a pass measures how busy the disk is.
pub const BUSY_CHECK: Duration = Duration::from_secs(1);
/// Device utilisation (%) at which a pass pauses for the node's own I/O, and below which
/// it resumes.
pub const BUSY_PAUSE_PCT: f64 = 80.0;
pub const BUSY_RESUME_PCT: f64 = 50.0;

/// How busy one block device is: the growth of its "time spent doing I/O" (`io_ticks`,
/// milliseconds, field 13 of `/proc/diskstats`) over wall time.
pub struct DiskBusy {
    device: Option<(u64, u64)>,
    read_ticks: fn((u64, u64)) -> Option<u64>,
    last: Option<(Instant, u64)>,
}

/// The `io_ticks` of device `major:minor` from `/proc/diskstats`.
fn diskstats_ticks(device: (u64, u64)) -> Option<u64> {
    parse_io_ticks(&std::fs::read_to_string("/proc/diskstats").ok()?, device)
}

/// `io_ticks` of `device` in a `/proc/diskstats` text.
pub fn parse_io_ticks(text: &str, (major, minor): (u64, u64)) -> Option<u64> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 13
            && f[0].parse::<u64>().ok() == Some(major)
            && f[1].parse::<u64>().ok() == Some(minor))
        .then(|| f[12].parse().ok())
        .flatten()
    })
}

impl DiskBusy {
    /// For the device holding `path` (none when it has no block device of its own).
    pub fn for_path(path: &std::path::Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let device = std::fs::metadata(path).ok().map(|m| {
            let dev = m.dev();
            // glibc's encoding of dev_t.
            let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
            let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
            (major, minor)
        });
        Self::with_reader(device.filter(|(major, _)| *major != 0), diskstats_ticks)
    }

    pub fn with_reader(
        device: Option<(u64, u64)>,
        read_ticks: fn((u64, u64)) -> Option<u64>,
    ) -> Self {
        DiskBusy {
            device,
            read_ticks,
            last: None,
        }
    }

    /// The device's utilisation (%) since the previous call (None: the first call, or no
    /// device to read).
    pub fn utilisation(&mut self) -> Option<f64> {
        let ticks = (self.read_ticks)(self.device?)?;
        let now = Instant::now();
        let previous = self.last.replace((now, ticks));
        let (at, before) = previous?;
        let wall_ms = now.duration_since(at).as_secs_f64() * 1000.0;
        (wall_ms > 0.0).then(|| (ticks.saturating_sub(before) as f64 / wall_ms * 100.0).min(100.0))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ScrubConfig {
    pub interval: Duration,
    pub bytes_per_sec: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            interval: DEFAULT_INTERVAL,
            bytes_per_sec: DEFAULT_BYTES_PER_SEC,
        }
    }
}

/// Where the scrubber is, kept in `scrub.json` beside the store's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubState {
    pub passes: u64,
    pub last_pass_ended_unix_ms: u64,
    /// A pass is under way; it resumes after `after`.
    pub in_pass: bool,
    pub after: Option<String>,
    /// Of the current (or last) pass.
    pub checked: u64,
    pub corrupt_found: u64,
}

pub struct Scrubber {
    store: Arc<ChunkStore>,
    config: ScrubConfig,
    path: PathBuf,
    state: Mutex<ScrubState>,
    running: AtomicBool,
    /// Paused for the node's own disk I/O.
    paused: AtomicBool,
    requested: Mutex<bool>,
    wake: Condvar,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Scrubber {
    pub fn new(store: Arc<ChunkStore>, config: ScrubConfig) -> Arc<Self> {
        let path = store.root().join("scrub.json");
        let state = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Arc::new(Scrubber {
            store,
            config,
            path,
            state: Mutex::new(state),
            running: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            requested: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    pub fn status(&self) -> (bool, ScrubState) {
        (
            self.running.load(Ordering::Relaxed),
            self.state.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.config.bytes_per_sec
    }

    /// Asks for a pass now; false when one is running.
    pub fn request(&self) -> bool {
        if self.running.load(Ordering::Relaxed) {
            return false;
        }
        *self.requested.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
        true
    }

    /// Runs the scrubber on its own thread until `stop` is set.
    pub fn spawn(self: &Arc<Self>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("steward-scrub".into())
            .spawn(move || me.run(&stop))
            .map(|_| ())
    }

    fn save(&self, state: &ScrubState) {
        let tmp = self.path.with_extension("json.tmp");
        let ok = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = ok {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot record the scrub position");
        }
    }

    /// When the next pass is due (jittered ±10 % around the interval).
    fn due_in(&self, state: &ScrubState) -> Duration {
        if state.in_pass {
            return Duration::ZERO;
        }
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        let next = state.last_pass_ended_unix_ms
            + (self.config.interval.as_millis() as f64 * jitter) as u64;
        Duration::from_millis(next.saturating_sub(now_ms()))
    }

    /// Pauses while the disk is busy with other I/O (the node's jobs).
    fn wait_for_quiet_disk(&self, busy: &mut DiskBusy, stop: &AtomicBool) {
        tracing::info!("scrub paused: the disk is busy");
        self.paused.store(true, Ordering::Relaxed);
        let since = Instant::now();
        loop {
            let slept = Instant::now();
            while slept.elapsed() < BUSY_CHECK && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(POLL);
            }
            if stop.load(Ordering::Relaxed)
                || busy.utilisation().is_none_or(|u| u < BUSY_RESUME_PCT)
            {
                break;
            }
        }
        self.paused.store(false, Ordering::Relaxed);
        tracing::info!(
            paused_ms = since.elapsed().as_millis() as u64,
            "scrub resumed"
        );
    }

    /// Whether a pass is paused for the node's own disk I/O.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    fn run(&self, stop: &AtomicBool) {
        let mut due = Instant::now() + self.due_in(&self.status().1);
        while !stop.load(Ordering::Relaxed) {
            let requested = {
                let guard = self.requested.lock().unwrap_or_else(|p| p.into_inner());
                let (mut guard, _) = self
                    .wake
                    .wait_timeout(guard, POLL)
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::take(&mut *guard)
            };
            if requested || Instant::now() >= due {
                self.pass(stop);
                due = Instant::now() + self.due_in(&self.status().1);
            }
        }
    }

    /// One pass (or the rest of an interrupted one).
    fn pass(&self, stop: &AtomicBool) {
        self.running.store(true, Ordering::Relaxed);
        let mut state = self.status().1;
        if !state.in_pass {
            state.in_pass = true;
            state.after = None;
            state.checked = 0;
            state.corrupt_found = 0;
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
        let ids = match self.store.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: cannot list the chunk store");
                self.running.store(false, Ordering::Relaxed);
                return;
            }
        };
        let after: Option<ChunkId> = state.after.as_deref().and_then(|a| ChunkId::parse(a).ok());
        let mut started = Instant::now();
        let mut read = 0u64;
        let mut busy = DiskBusy::for_path(self.store.root());
        let _ = busy.utilisation();
        let mut last_check = Instant::now();
        for id in ids.into_iter().filter(|id| after.is_none_or(|a| *id > a)) {
            if stop.load(Ordering::Relaxed) {
                self.save(&state);
                self.running.store(false, Ordering::Relaxed);
                return;
            }
            match self.store.get(&id) {
                Ok(bytes) => read += bytes.len() as u64,
                Err(ChunkError::Corrupt { .. }) => {
                    state.corrupt_found += 1;
                    tracing::warn!(chunk = %id, "scrub found a rotten chunk; quarantined, repair follows");
                }
                // Removed meanwhile.
                Err(ChunkError::NotFound(_)) => {}
                Err(e) => tracing::warn!(chunk = %id, error = %e, "scrub could not read a chunk"),
            }
            state.checked += 1;
            state.after = Some(id.to_string());
            if state.checked.is_multiple_of(CHECKPOINT_EVERY) {
                self.save(&state);
            }
            *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
            // The rate limit: never ahead of bytes_per_sec.
            let target =
                Duration::from_secs_f64(read as f64 / self.config.bytes_per_sec.max(1) as f64);
            while started.elapsed() < target && !stop.load(Ordering::Relaxed) {
                std::thread::sleep((target - started.elapsed()).min(POLL));
            }
            if last_check.elapsed() >= BUSY_CHECK {
                last_check = Instant::now();
                if busy.utilisation().is_some_and(|u| u >= BUSY_PAUSE_PCT) {
                    self.wait_for_quiet_disk(&mut busy, stop);
                    // The rate limit counts from the resumption.
                    (started, read) = (Instant::now(), 0);
                }
            }
        }
        state.in_pass = false;
        state.passes += 1;
        state.last_pass_ended_unix_ms = now_ms();
        self.save(&state);
        tracing::info!(
            checked = state.checked,
            corrupt = state.corrupt_found,
            "scrub pass finished"
        );
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.running.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_utilisation_comes_from_diskstats_io_ticks() {
        let text = "   8       0 sda 100 0 800 50 10 0 80 5 0 1234 55 0 0 0 0\n 253       1 vda1 1 2 3 4 5 6 7 8 9 777 11 12 13 14 15 16 17\n";
        assert_eq!(parse_io_ticks(text, (8, 0)), Some(1234));
        assert_eq!(parse_io_ticks(text, (253, 1)), Some(777));
        assert_eq!(parse_io_ticks(text, (9, 9)), None);
        assert_eq!(parse_io_ticks("8 0 sda 1 2", (8, 0)), None, "a short line");
        // A device whose ticks grow as fast as the clock is 100 % busy; one that does not
        // grow is idle; no device is never busy.
        static TICKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut busy = DiskBusy::with_reader(Some((8, 0)), |_| Some(TICKS.load(Ordering::Relaxed)));
        assert_eq!(busy.utilisation(), None, "the first reading only starts");
        std::thread::sleep(Duration::from_millis(50));
        TICKS.store(1_000, Ordering::Relaxed);
        assert_eq!(busy.utilisation(), Some(100.0));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(busy.utilisation(), Some(0.0));
        let mut none = DiskBusy::with_reader(None, |_| Some(1));
        assert_eq!(none.utilisation(), None);
        // The real device of a temp dir reads, or has no device of its own.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut real = DiskBusy::for_path(dir.path());
        let _ = real.utilisation();
        assert!(real
            .utilisation()
            .is_none_or(|u| (0.0..=100.0).contains(&u)));
    }

    #[test]
    fn a_pass_finds_every_rotten_chunk_and_records_where_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ChunkStore::open(dir.path(), 0).expect("open").0);
        let mut ids = Vec::new();
        for i in 0..30u32 {
            let b = format!("chunk {i}").repeat(100).into_bytes();
            let id = ChunkId::of(&b);
            store.put(&id, &b).expect("put");
            ids.push(id);
        }
        for id in ids.iter().take(7) {
            let p = store.path_of(id);
            let mut b = std::fs::read(&p).expect("read");
            b[3] ^= 1;
            std::fs::write(&p, b).expect("write");
        }
        let s = Scrubber::new(
            store.clone(),
            ScrubConfig {
                interval: DEFAULT_INTERVAL,
                bytes_per_sec: 1 << 30,
            },
        );
        s.pass(&AtomicBool::new(false));
        let (running, state) = s.status();
        assert!(!running);
        assert_eq!(
            (state.checked, state.corrupt_found, state.passes),
            (30, 7, 1)
        );
        assert!(!state.in_pass);
        assert_eq!(store.quarantined().expect("q").len(), 7);
        // Recorded on disk: a new scrubber knows the pass ended.
        let again = Scrubber::new(store.clone(), ScrubConfig::default());
        assert_eq!(again.status().1.passes, 1);
        assert!(again.due_in(&again.status().1) > Duration::from_secs(24 * 3600));
        // The changes name the rotten chunks for the leader.
        let changes = store.take_changes();
        assert_eq!(changes.corrupt.len(), 7);
    }

    #[test]
    fn a_stopped_pass_resumes_where_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(ChunkStore::open(dir.path(), 0).expect("open").0);
        for i in 0..10u32 {
            let b = vec![i as u8; 100];
            store.put(&ChunkId::of(&b), &b).expect("put");
        }
        let s = Scrubber::new(store.clone(), ScrubConfig::default());
        s.pass(&AtomicBool::new(true));
        let state = s.status().1;
        assert!(
            state.in_pass && state.checked == 0,
            "stopped at once: {state:?}"
        );
        let mut half = state.clone();
        half.after = Some(store.list().expect("list")[4].to_string());
        half.checked = 5;
        s.save(&half);
        let resumed = Scrubber::new(store, ScrubConfig::default());
        assert_eq!(resumed.due_in(&resumed.status().1), Duration::ZERO);
        resumed.pass(&AtomicBool::new(false));
        assert_eq!(resumed.status().1.checked, 10, "5 before the stop, 5 after");
    }
}
