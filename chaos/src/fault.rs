//! Fault actions and the guard that undoes them.
//!
//! Every lasting fault is applied through [`UndoGuard::apply`]: the undo is recorded
//! before the fault takes effect, so a run that fails, panics or is interrupted (Ctrl-C,
//! [`UndoGuard::undo_on_ctrl_c`]) still resumes paused processes and heals what it broke.
//! Undos run newest first, each at most once; one that fails is reported and the rest
//! still run.
//!
//! Built so far: pausing processes (SIGSTOP/SIGCONT), killing them, and bit-rot in an
//! agent's chunk files. Partitions, netem, disk full and clock skew come with the network
//! namespaces (ARCHITECTURE.md, "Chaos harness").

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};

/// Chunk files one bit-rot fault damages at most.
pub const MAX_ROTTED_CHUNKS: usize = 1024;

type Undo = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The undos of the faults in effect, newest last.
#[derive(Default)]
pub struct UndoGuard {
    /// (id, what, undo), newest last.
    undos: Mutex<Vec<(u64, String, Undo)>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl UndoGuard {
    pub fn new() -> Arc<Self> {
        Arc::new(UndoGuard::default())
    }

    /// Records `undo` (described as `what`), then applies the fault with `apply`; when
    /// applying fails the undo runs at once and the error is returned.
    pub fn apply(
        &self,
        what: impl Into<String>,
        apply: impl FnOnce() -> Result<(), String>,
        undo: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        self.apply_tracked(what, apply, undo).map(|_| ())
    }

    /// Like [`UndoGuard::apply`]; returns the fault's id, for [`UndoGuard::undo`] when
    /// faults that overlap in time end in another order than they began.
    pub fn apply_tracked(
        &self,
        what: impl Into<String>,
        apply: impl FnOnce() -> Result<(), String>,
        undo: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<u64, String> {
        let what = what.into();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().push((id, what.clone(), Box::new(undo)));
        match apply() {
            Ok(()) => Ok(id),
            Err(e) => {
                let undone = self.undo(id);
                Err(format!(
                    "{what}: {e}{}",
                    undone.map_or(String::new(), |u| format!(" (and undoing it: {u})"))
                ))
            }
        }
    }

    /// Undoes fault `id` if it is still in effect; the error, if undoing failed.
    pub fn undo(&self, id: u64) -> Option<String> {
        let found = {
            let mut undos = self.lock();
            let at = undos.iter().position(|(i, _, _)| *i == id)?;
            undos.remove(at)
        };
        let (_, what, undo) = found;
        undo().err().map(|e| format!("{what}: {e}"))
    }

    /// Undoes the most recent fault still in effect.
    pub fn undo_last(&self) -> Option<String> {
        let last = self.lock().pop();
        last.and_then(|(_, what, undo)| undo().err().map(|e| format!("{what}: {e}")))
    }

    /// Undoes every fault still in effect, newest first; the failures.
    pub fn undo_all(&self) -> Vec<String> {
        let mut failed = Vec::new();
        loop {
            let Some((_, what, undo)) = self.lock().pop() else {
                break;
            };
            if let Err(e) = undo() {
                failed.push(format!("{what}: {e}"));
            }
        }
        failed
    }

    /// Faults in effect, oldest first.
    pub fn in_effect(&self) -> Vec<String> {
        self.lock().iter().map(|(_, w, _)| w.clone()).collect()
    }

    /// On Ctrl-C: undo everything, say so, and exit with status 130.
    pub fn undo_on_ctrl_c(self: &Arc<Self>) {
        let guard = self.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let failed = guard.undo_all();
                eprintln!("interrupted: faults undone ({} failed)", failed.len());
                for f in failed {
                    eprintln!("  could not undo {f}");
                }
                std::process::exit(130);
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, String, Undo)>> {
        self.undos.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for UndoGuard {
    fn drop(&mut self) {
        for f in self.undo_all() {
            eprintln!("could not undo {f}");
        }
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: Signal) -> Result<(), String> {
    let pid = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    kill(Pid::from_raw(pid), sig).map_err(|e| format!("{sig} to pid {pid}: {e}"))
}

/// Pauses process `pid` (SIGSTOP) until the guard resumes it (SIGCONT).
pub fn pause(guard: &UndoGuard, pid: u32) -> Result<(), String> {
    guard.apply(
        format!("pause of pid {pid}"),
        || signal(pid, Signal::SIGSTOP),
        move || signal(pid, Signal::SIGCONT),
    )
}

/// Kills process `pid` (SIGKILL). Not undone here: the runner restarts what it killed.
pub fn kill_9(pid: u32) -> Result<(), String> {
    signal(pid, Signal::SIGKILL)
}

/// One damaged chunk file: where, which byte, what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotted {
    pub path: PathBuf,
    pub offset: u64,
    pub was: u8,
}

/// Flips one byte in each of `count` chunk files (chosen by `seed`) of the chunk store
/// at `store` (an agent's `DATA_DIR/chunks`). Not undone: finding and repairing it is
/// what the scenario checks.
pub fn bit_rot(store: &Path, count: usize, seed: u64) -> Result<Vec<Rotted>, String> {
    let count = count.min(MAX_ROTTED_CHUNKS);
    let mut files = Vec::new();
    collect_chunks(&store.join("data"), &mut files)?;
    files.sort();
    if files.len() < count {
        // Refused before any file is touched.
        return Err(format!(
            "{}: {} non-empty chunk files, {count} asked for",
            store.display(),
            files.len()
        ));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut rotted = Vec::new();
    while rotted.len() < count {
        let (path, len) = files.swap_remove(rng.random_range(0..files.len()));
        let offset = rng.random_range(0..len);
        let mut bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let was = bytes[offset as usize];
        bytes[offset as usize] = was ^ (1 << rng.random_range(0..8));
        std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        rotted.push(Rotted { path, offset, was });
    }
    Ok(rotted)
}

/// Non-empty files named like chunk ids (64 hex digits) under `dir`, with their sizes.
fn collect_chunks(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<(), String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            collect_chunks(&path, out)?;
        } else if meta.len() > 0
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            out.push((path, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state letter of process `pid` (`T`: stopped).
    fn state(pid: u32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .expect("state")
    }

    fn wait_state(pid: u32, want: impl Fn(char) -> bool) -> char {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = state(pid);
            if want(s) || std::time::Instant::now() > deadline {
                return s;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_paused_process_is_resumed_when_the_guard_goes() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        {
            let guard = UndoGuard::new();
            pause(&guard, pid).expect("pause");
            assert_eq!(wait_state(pid, |s| s == 'T'), 'T');
            assert_eq!(guard.in_effect(), vec![format!("pause of pid {pid}")]);
        }
        assert_ne!(
            wait_state(pid, |s| s != 'T'),
            'T',
            "resumed by the guard's drop"
        );
        kill_9(pid).expect("kill");
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }

    #[test]
    fn undos_run_newest_first_once_and_a_failed_apply_is_undone_at_once() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let guard = UndoGuard::new();
        for n in 1..=3 {
            let l = log.clone();
            guard
                .apply(
                    format!("f{n}"),
                    || Ok(()),
                    move || {
                        l.lock().expect("lock").push(n);
                        Ok(())
                    },
                )
                .expect("apply");
        }
        let l = log.clone();
        let e = guard
            .apply(
                "f4",
                || Err("refused".into()),
                move || {
                    l.lock().expect("lock").push(4);
                    Err("could not".into())
                },
            )
            .expect_err("apply fails");
        assert!(e.contains("refused") && e.contains("could not"), "{e}");
        assert!(guard.undo_all().is_empty());
        assert!(guard.undo_all().is_empty(), "each undo runs once");
        assert_eq!(*log.lock().expect("lock"), vec![4, 3, 2, 1]);
    }

    #[test]
    fn bit_rot_flips_one_byte_in_chosen_chunk_files_by_seed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path();
        let mut originals = Vec::new();
        for i in 0..6u8 {
            let id = blake3::hash(&[i]).to_hex().to_string();
            let path = store.join("data").join(&id[0..2]).join(&id[2..4]).join(&id);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let bytes = vec![i; 100];
            std::fs::write(&path, &bytes).expect("write");
            originals.push((path, bytes));
        }
        let rotted = bit_rot(store, 3, 7).expect("rot");
        assert_eq!(rotted.len(), 3);
        for r in &rotted {
            let now = std::fs::read(&r.path).expect("read");
            let (_, before) = originals.iter().find(|(p, _)| *p == r.path).expect("known");
            let differing: Vec<usize> = (0..now.len()).filter(|i| now[*i] != before[*i]).collect();
            assert_eq!(differing, vec![r.offset as usize], "one byte flipped");
            assert_eq!(before[r.offset as usize], r.was);
        }
        let untouched = originals
            .iter()
            .filter(|(p, b)| std::fs::read(p).expect("read") == *b)
            .count();
        assert_eq!(untouched, 3);
        // More than the store holds: an error that says how many there are, and nothing
        // more is damaged.
        let e = bit_rot(store, 10, 7).expect_err("only 6");
        assert!(e.contains("6 non-empty chunk files"), "{e}");
        let still = originals
            .iter()
            .filter(|(p, b)| std::fs::read(p).expect("read") == *b)
            .count();
        assert_eq!(still, 3);
    }
}
