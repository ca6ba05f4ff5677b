//! The agent's chunk store: content-addressed chunks on the node's disk.
//!
//! Layout under the store's root:
//! - `FORMAT`: `steward-chunks 1` (a store of another format is refused, not rewritten);
//! - `data/ab/cd/<64 hex>`: a chunk, by the first two bytes of its id (65,536 fan-out
//!   directories, so none grows past a few thousand entries at millions of chunks);
//! - `tmp/`: writes in progress; whatever is there at open is a crash's leftover and is
//!   removed;
//! - `quarantine/<64 hex>`: chunks whose bytes no longer match their id, kept for
//!   inspection and never served.
//!
//! A write goes to a temporary file, is fsynced, renamed into place, and the directory is
//! fsynced: a crash at any step leaves no chunk or a whole one. Every read re-hashes what
//! it read; a mismatch is never returned, the file is quarantined and the caller told, so
//! the chunk can be repaired from another replica. Writes are refused below a free-space
//! floor, so a full disk never loses what it already holds.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use steward_core::chunk::ChunkId;

/// The format line of `FORMAT`.
pub const FORMAT_LINE: &str = "steward-chunks 1";
/// Largest chunk the store takes (content-defined chunks average 4 MiB; the cut-point
/// limit is far below this).
pub const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0} is not stored here")]
    NotFound(ChunkId),
    #[error("chunk {id} on disk does not match its id (it hashes to {actual}); quarantined")]
    Corrupt { id: ChunkId, actual: ChunkId },
    #[error("the bytes sent as chunk {id} hash to {actual}: refused")]
    Mismatch { id: ChunkId, actual: ChunkId },
    #[error("chunk of {0} bytes is over the {MAX_CHUNK_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("{free} bytes free on the chunk disk, below its floor of {floor}: no new chunks")]
    SpaceLow { free: u64, floor: u64 },
    #[error("{0}")]
    Busy(String),
    #[error("{path}: holds `{found}`, not a `{FORMAT_LINE}` store")]
    Format { path: PathBuf, found: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ChunkError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ChunkError {
        let path = path.to_path_buf();
        move |source| ChunkError::Io { what, path, source }
    }
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Leftover temporary files of interrupted writes, removed.
    pub temp_removed: usize,
    /// Chunks found in the store.
    pub chunks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The chunk was already here (and verified): nothing written.
    AlreadyPresent,
}

/// The steps of a write, in order; a crash can stop it after any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PutStep {
    TempCreated,
    TempWritten,
    TempSynced,
    Renamed,
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "a crash point only the tests stop at")
    )]
    DirectorySynced,
}

#[cfg(test)]
impl PutStep {
    pub(crate) const ALL: [PutStep; 5] = [
        PutStep::TempCreated,
        PutStep::TempWritten,
        PutStep::TempSynced,
        PutStep::Renamed,
        PutStep::DirectorySynced,
    ];
}

pub struct ChunkStore {
    root: PathBuf,
    free_floor_bytes: u64,
    temp_seq: AtomicU64,
    /// Chunks and bytes stored (counted at open, kept up to date by every change here).
    chunks: AtomicU64,
    bytes: AtomicU64,
    /// Changes not yet reported to the leader.
    changes: std::sync::Mutex<Changes>,
    /// Garbage collection: chunks removed, and when the last pass ended (unix ms).
    pub gc_removed: AtomicU64,
    pub last_gc_unix_ms: AtomicU64,
    /// Chunks and bytes pulled from peers (copies: repair, rebalancing, staging).
    pub copied_in_chunks: AtomicU64,
    pub copied_in_bytes: AtomicU64,
    /// Held while a chunk is found present and its time refreshed (a writer about to rely
    /// on it), and while garbage collection checks a chunk's time and removes it: a chunk
    /// is never removed after a writer was told it is here.
    keep_lock: std::sync::Mutex<()>,
    /// Chunk bytes that transfers may hold in memory at once, shared by everything that
    /// moves this store's chunks (the chunk service, the repair copies, input staging).
    pub(crate) memory: TransferMemory,
}

/// Chunk bytes held in memory by transfers in progress, in two budgets: bytes on their
/// way into the store (puts, copies pulled from peers, staging) and bytes on their way out
/// (gets served to clients and peers). A transfer reserves its chunk's size before it
/// buffers a byte, waits up to [`MEMORY_WAIT`] for room, then is refused with
/// RESOURCE_EXHAUSTED: the agent's memory stays bounded however many streams arrive.
pub(crate) struct TransferMemory {
    pub(crate) incoming: MemoryBudget,
    pub(crate) outgoing: MemoryBudget,
}

/// Chunk bytes all incoming transfers (puts, copies, staging) may hold together.
pub const INCOMING_MEMORY_BYTES: usize = 512 * 1024 * 1024;
/// Chunk bytes all gets being served may hold together.
pub const OUTGOING_MEMORY_BYTES: usize = 512 * 1024 * 1024;
/// How long a transfer waits for memory before it is refused.
pub const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Memory permits are counted in KiB (a semaphore holds at most `u32::MAX` permits).
const MEMORY_PERMIT_BYTES: usize = 1024;

impl TransferMemory {
    fn new() -> Self {
        TransferMemory {
            incoming: MemoryBudget::new(INCOMING_MEMORY_BYTES, MEMORY_WAIT),
            outgoing: MemoryBudget::new(OUTGOING_MEMORY_BYTES, MEMORY_WAIT),
        }
    }
}

/// One budget of bytes in memory.
pub(crate) struct MemoryBudget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    bytes: usize,
    wait: std::time::Duration,
}

impl MemoryBudget {
    fn new(bytes: usize, wait: std::time::Duration) -> Self {
        MemoryBudget {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(bytes / MEMORY_PERMIT_BYTES)),
            bytes,
            wait,
        }
    }

    /// Reserves `bytes` (at most the whole budget); the permit gives them back when
    /// dropped. Waits up to its wait ([`MEMORY_WAIT`] in the agent), then refuses with
    /// [`ChunkError::Busy`].
    pub(crate) async fn reserve(
        &self,
        bytes: usize,
        what: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ChunkError> {
        let permits = bytes.min(self.bytes).div_ceil(MEMORY_PERMIT_BYTES).max(1);
        let permits = u32::try_from(permits).unwrap_or(u32::MAX);
        let acquire = self.permits.clone().acquire_many_owned(permits);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ChunkError::Busy(format!("{what}: the agent is stopping"))),
            Err(_) => Err(ChunkError::Busy(format!(
                "{what}: the agent's transfer memory ({} MiB) stayed full for {:?}; retry later",
                self.bytes >> 20,
                self.wait
            ))),
        }
    }
}

/// Most changes remembered between two reports; past it the next report is a full list.
pub const MAX_PENDING_CHANGES: usize = 100_000;

/// What changed in the store since the last report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<ChunkId>,
    pub removed: Vec<ChunkId>,
    /// Found rotten and quarantined (also in `removed`).
    pub corrupt: Vec<ChunkId>,
    /// More than [`MAX_PENDING_CHANGES`] happened: only a full list says what is here.
    pub overflowed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && !self.overflowed
    }

    fn push(list: &mut Vec<ChunkId>, id: ChunkId, overflowed: &mut bool) {
        if list.len() >= MAX_PENDING_CHANGES {
            *overflowed = true;
        } else {
            list.push(id);
        }
    }
}

/// What the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub chunks: u64,
    pub bytes: u64,
}

impl ChunkStore {
    /// Opens (creating if empty) the store at `root`; removes interrupted writes' leftovers.
    pub fn open(
        root: impl Into<PathBuf>,
        free_floor_bytes: u64,
    ) -> Result<(Self, OpenReport), ChunkError> {
        let root = root.into();
        for dir in ["", "data", "tmp", "quarantine"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(ChunkError::io("creating", &p))?;
        }
        let format = root.join("FORMAT");
        match fs::read_to_string(&format) {
            Ok(text) if text.trim() == FORMAT_LINE => {}
            Ok(text) => {
                return Err(ChunkError::Format {
                    path: format,
                    found: text.trim().chars().take(80).collect(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = root.join("tmp").join("FORMAT.tmp");
                write_synced(&tmp, format!("{FORMAT_LINE}\n").as_bytes())?;
                fs::rename(&tmp, &format).map_err(ChunkError::io("renaming", &format))?;
                sync_dir(&root)?;
            }
            Err(e) => return Err(ChunkError::io("reading", &format)(e)),
        }
        let mut report = OpenReport::default();
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(ChunkError::io("listing", &tmp))? {
            let entry = entry.map_err(ChunkError::io("listing", &tmp))?;
            let p = entry.path();
            fs::remove_file(&p).map_err(ChunkError::io("removing", &p))?;
            report.temp_removed += 1;
        }
        if report.temp_removed > 0 {
            sync_dir(&tmp)?;
        }
        let store = ChunkStore {
            root,
            free_floor_bytes,
            temp_seq: AtomicU64::new(0),
            keep_lock: std::sync::Mutex::new(()),
            chunks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            changes: Default::default(),
            gc_removed: AtomicU64::new(0),
            last_gc_unix_ms: AtomicU64::new(0),
            copied_in_chunks: AtomicU64::new(0),
            copied_in_bytes: AtomicU64::new(0),
            memory: TransferMemory::new(),
        };
        for id in store.list()? {
            let path = store.path_of(&id);
            let len = fs::metadata(&path)
                .map_err(ChunkError::io("reading metadata of", &path))?
                .len();
            store.chunks.fetch_add(1, Ordering::Relaxed);
            store.bytes.fetch_add(len, Ordering::Relaxed);
        }
        report.chunks = store.stats().chunks;
        Ok((store, report))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Below this many free bytes, new chunks are refused.
    pub fn free_floor_bytes(&self) -> u64 {
        self.free_floor_bytes
    }

    /// Chunks and bytes held.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The changes since the last call (for the leader's replica tracking).
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note(&self, id: ChunkId, change: fn(&mut Changes) -> &mut Vec<ChunkId>) {
        let mut c = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        let mut overflowed = c.overflowed;
        Changes::push(change(&mut c), id, &mut overflowed);
        c.overflowed = overflowed;
    }

    fn count(&self, added: bool, len: u64) {
        if added {
            self.chunks.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(len, Ordering::Relaxed);
        } else {
            let _ = self
                .chunks
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(1));
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(len))
                });
        }
    }

    /// Where chunk `id` lives: `data/ab/cd/<id>`.
    pub fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.root
            .join("data")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    /// Bytes available to the store's filesystem.
    pub fn free_bytes(&self) -> Result<u64, ChunkError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| ChunkError::Io {
            what: "statvfs",
            path: self.root.clone(),
            source: std::io::Error::from(e),
        })?;
        #[allow(
            clippy::useless_conversion,
            reason = "the field types differ by platform"
        )]
        Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
    }

    /// Whether writes are refused for lack of space (`None`: they are taken).
    pub fn space_low(&self) -> Result<Option<ChunkError>, ChunkError> {
        let free = self.free_bytes()?;
        Ok(
            (free < self.free_floor_bytes).then_some(ChunkError::SpaceLow {
                free,
                floor: self.free_floor_bytes,
            }),
        )
    }

    /// Stores `bytes` as chunk `id` after checking that they hash to it.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<PutOutcome, ChunkError> {
        self.put_until(id, bytes, None)
    }

    /// [`ChunkStore::put`], stopping after `crash_after` as a crash would (tests).
    pub(crate) fn put_until(
        &self,
        id: &ChunkId,
        bytes: &[u8],
        crash_after: Option<PutStep>,
    ) -> Result<PutOutcome, ChunkError> {
        if bytes.len() > MAX_CHUNK_BYTES {
            return Err(ChunkError::TooLarge(bytes.len()));
        }
        let actual = ChunkId::of(bytes);
        if actual != *id {
            return Err(ChunkError::Mismatch { id: *id, actual });
        }
        let path = self.path_of(id);
        if path.exists() && self.get(id).is_ok() && self.touch_if_present(id) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        if let Some(low) = self.space_low()? {
            return Err(low);
        }
        let dir = path
            .parent()
            .expect("a chunk path has a parent")
            .to_path_buf();
        fs::create_dir_all(&dir).map_err(ChunkError::io("creating", &dir))?;
        let tmp = self.root.join("tmp").join(format!(
            "{id}.{}.{}.tmp",
            std::process::id(),
            self.temp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let stop = |step: PutStep| crash_after == Some(step);
        let mut f = File::create(&tmp).map_err(ChunkError::io("creating", &tmp))?;
        if stop(PutStep::TempCreated) {
            return Ok(PutOutcome::Stored);
        }
        f.write_all(bytes)
            .map_err(ChunkError::io("writing", &tmp))?;
        if stop(PutStep::TempWritten) {
            return Ok(PutOutcome::Stored);
        }
        f.sync_all().map_err(ChunkError::io("syncing", &tmp))?;
        drop(f);
        if stop(PutStep::TempSynced) {
            return Ok(PutOutcome::Stored);
        }
        let replaced = path.exists();
        fs::rename(&tmp, &path).map_err(ChunkError::io("renaming into place", &path))?;
        if !replaced {
            self.count(true, bytes.len() as u64);
            self.note(*id, |c| &mut c.added);
        }
        if stop(PutStep::Renamed) {
            return Ok(PutOutcome::Stored);
        }
        sync_dir(&dir)?;
        Ok(PutOutcome::Stored)
    }

    /// Reads chunk `id`, verified; a chunk whose bytes no longer match is quarantined and
    /// reported, never returned.
    pub fn get(&self, id: &ChunkId) -> Result<Vec<u8>, ChunkError> {
        let path = self.path_of(id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChunkError::NotFound(*id))
            }
            Err(e) => return Err(ChunkError::io("opening", &path)(e)),
        };
        // Sized from the file's length (one allocation, no regrowth); at most one byte past
        // the largest chunk is read, so a grown file cannot make it allocate more.
        let len = f
            .metadata()
            .map_or(0, |m| m.len())
            .min(MAX_CHUNK_BYTES as u64 + 1);
        let mut bytes = Vec::with_capacity(len as usize + 1);
        f.take(MAX_CHUNK_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(ChunkError::io("reading", &path))?;
        let actual = ChunkId::of(&bytes);
        if actual != *id {
            self.quarantine(id)?;
            return Err(ChunkError::Corrupt { id: *id, actual });
        }
        Ok(bytes)
    }

    /// Re-reads and re-hashes chunk `id` (the scrubber's check); quarantines it on a
    /// mismatch.
    pub fn verify(&self, id: &ChunkId) -> Result<(), ChunkError> {
        self.get(id).map(|_| ())
    }

    /// The size of chunk `id`'s file here (None: not here), from its metadata.
    pub fn stored_size(&self, id: &ChunkId) -> Option<u64> {
        fs::metadata(self.path_of(id)).ok().map(|m| m.len())
    }

    /// When chunk `id` was written here (None: not here).
    pub fn written_at(&self, id: &ChunkId) -> Option<std::time::SystemTime> {
        fs::metadata(self.path_of(id)).ok()?.modified().ok()
    }

    /// Whether chunk `id` is here; when it is, its time moves to now, so garbage
    /// collection (which removes only chunks older than its grace, checked under the same
    /// lock) keeps it for a writer that counts on it (a put that skips sending it).
    pub fn touch_if_present(&self, id: &ChunkId) -> bool {
        let _keep = self.keep_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path_of(id);
        match File::options().write(true).open(&path) {
            Ok(f) => {
                let _ = f.set_modified(std::time::SystemTime::now());
                true
            }
            Err(_) => false,
        }
    }

    /// Removes chunk `id` if its time is before `cutoff` (garbage collection: a chunk
    /// touched since it was listed stays); true when removed.
    pub fn remove_if_older(
        &self,
        id: &ChunkId,
        cutoff: std::time::SystemTime,
    ) -> Result<bool, ChunkError> {
        let _keep = self.keep_lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.written_at(id) {
            Some(t) if t < cutoff => self.remove(id),
            _ => Ok(false),
        }
    }

    /// Whether chunk `id` is here (not verified: [`ChunkStore::verify`] checks).
    pub fn has(&self, id: &ChunkId) -> bool {
        self.path_of(id).is_file()
    }

    /// Removes chunk `id`; false when it was not here.
    pub fn remove(&self, id: &ChunkId) -> Result<bool, ChunkError> {
        let path = self.path_of(id);
        let len = fs::metadata(&path).map_or(0, |m| m.len());
        match fs::remove_file(&path) {
            Ok(()) => {
                self.count(false, len);
                self.note(*id, |c| &mut c.removed);
                sync_dir(path.parent().expect("a chunk path has a parent"))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ChunkError::io("removing", &path)(e)),
        }
    }

    /// Every stored chunk's id (files whose names are not chunk ids are skipped).
    pub fn list(&self) -> Result<Vec<ChunkId>, ChunkError> {
        let mut out = Vec::new();
        let data = self.root.join("data");
        for a in read_dir_sorted(&data)? {
            for b in read_dir_sorted(&a)? {
                for c in read_dir_sorted(&b)? {
                    if let Some(id) = c
                        .file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| ChunkId::parse(n).ok())
                    {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The quarantined chunks' ids.
    pub fn quarantined(&self) -> Result<Vec<ChunkId>, ChunkError> {
        Ok(read_dir_sorted(&self.root.join("quarantine"))?
            .iter()
            .filter_map(|p| p.file_name()?.to_str().and_then(|n| ChunkId::parse(n).ok()))
            .collect())
    }

    fn quarantine(&self, id: &ChunkId) -> Result<(), ChunkError> {
        let from = self.path_of(id);
        let to = self.root.join("quarantine").join(id.to_string());
        let len = fs::metadata(&from).map_or(0, |m| m.len());
        match fs::rename(&from, &to) {
            Ok(()) => {
                self.count(false, len);
                self.note(*id, |c| &mut c.removed);
                self.note(*id, |c| &mut c.corrupt);
            }
            // A concurrent read of the same chunk quarantined it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ChunkError::io("quarantining", &from)(e)),
        }
        sync_dir(from.parent().expect("a chunk path has a parent"))?;
        tracing::warn!(chunk = %id, "a chunk's bytes no longer match its id: quarantined");
        Ok(())
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, ChunkError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(ChunkError::io("listing", dir))? {
        out.push(entry.map_err(ChunkError::io("listing", dir))?.path());
    }
    out.sort();
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ChunkError> {
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(ChunkError::io("creating", path))?;
    f.write_all(bytes)
        .map_err(ChunkError::io("writing", path))?;
    f.sync_all().map_err(ChunkError::io("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ChunkError::io("syncing directory", dir))
}

pub mod report;
pub mod scrub;
pub mod service;

#[cfg(test)]
mod tests;
