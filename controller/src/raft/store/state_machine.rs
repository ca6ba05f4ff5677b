//! The replicated state machine (`RaftStateMachine`): an in-memory [`ClusterState`] fed by
//! committed entries, plus durable snapshots in the `snapshot` column family.
//!
//! On start it restores the newest stored snapshot; openraft then re-applies committed
//! entries after it. Readers (the admin API) see the state through [`StateView`].
//!
//! Snapshots are stored under their own key (the last log index, big-endian), so a build
//! that finishes after a newer snapshot was installed cannot replace it: the newest stored
//! snapshot is the current one, and older records are deleted once a newer one is durable.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId};
use serde::{Deserialize, Serialize};
use steward_core::{codec, ClusterState, Command, CommandResult};

use super::log_store::purge_upto;
use super::{record, Db, StoreError, CF_SNAPSHOT};
use crate::raft::timings::WriteTimings;
use crate::raft::typ::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    TypeConfig,
};

/// Where format 1 kept its only snapshot; moved to a keyed record on open.
const LEGACY_SNAPSHOT_KEY: &[u8] = b"current";
/// Prefix of keyed snapshot records: `s` + (last log index + 1, big-endian; 0: none).
const SNAPSHOT_PREFIX: u8 = b's';

fn snapshot_key(last: Option<LogId>) -> [u8; 9] {
    let mut key = [SNAPSHOT_PREFIX; 9];
    key[1..].copy_from_slice(&last.map_or(0, |l| l.index + 1).to_be_bytes());
    key
}

/// What `snapshot` holds: openraft's metadata and the encoded cluster state.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The applied state and its position in the log. Cloning it is cheap (the state's maps
/// are persistent), so readers that encode or digest it clone it and let go of the lock.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    /// Snapshots received from a leader and installed since this process started.
    pub snapshots_installed: u64,
}

/// Read access to the applied state, shared with the API servers.
#[derive(Clone)]
pub struct StateView {
    inner: Arc<RwLock<Applied>>,
    /// The applied state's feature level, readable without the lock: every write proposal
    /// checks it, and must not wait behind an apply that holds the lock.
    level: Arc<std::sync::atomic::AtomicU32>,
    /// The applied state's revision, published after every apply that changed it: the
    /// control loops and the agents' assignment streams wait on it.
    revision: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for StateView {
    fn default() -> Self {
        StateView {
            inner: Arc::default(),
            level: Arc::default(),
            revision: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl StateView {
    /// Read guard over the applied state. Hold it briefly: apply waits for it, and it
    /// waits for apply.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic while applying, which aborts the process anyway.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the applied state (O(1)), for work that must not hold up `apply`:
    /// encoding, digests, snapshot files.
    pub fn copy(&self) -> Applied {
        self.read().clone()
    }

    /// The applied state's cluster feature level, without taking the lock.
    pub fn cluster_level(&self) -> u32 {
        self.level.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A receiver of the applied revision: `changed()` wakes after each apply that moved it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn write(&self) -> AppliedWriteGuard<'_> {
        AppliedWriteGuard {
            guard: self.inner.write().unwrap_or_else(|p| p.into_inner()),
            level: &self.level,
            revision: &self.revision,
        }
    }
}

/// Write access to the applied state; publishes its feature level and revision when
/// dropped.
struct AppliedWriteGuard<'a> {
    guard: std::sync::RwLockWriteGuard<'a, Applied>,
    level: &'a std::sync::atomic::AtomicU32,
    revision: &'a tokio::sync::watch::Sender<u64>,
}

impl std::ops::Deref for AppliedWriteGuard<'_> {
    type Target = Applied;
    fn deref(&self) -> &Applied {
        &self.guard
    }
}

impl std::ops::DerefMut for AppliedWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut Applied {
        &mut self.guard
    }
}

impl Drop for AppliedWriteGuard<'_> {
    fn drop(&mut self) {
        self.level.store(
            self.guard.state.cluster_level,
            std::sync::atomic::Ordering::Release,
        );
        let revision = self.guard.state.revision;
        self.revision.send_if_modified(|r| {
            let moved = *r != revision;
            *r = revision;
            moved
        });
    }
}

/// Applies committed `entries` to the state in `view`: the one apply path of every store
/// (RocksDB here, in memory for the simulation, `memory.rs`).
pub(super) fn apply_entries(
    view: &StateView,
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<CommandResult> {
    let mut applied = view.write();
    let mut results = Vec::new();
    for entry in entries {
        let log_id = *entry.get_log_id();
        applied.last_applied = Some(log_id);
        let result = match entry.payload {
            EntryPayload::Blank => {
                // A new leader's first entry: a restore staged under the old one can
                // no longer commit (see `ClusterState::abandon_restore`).
                applied.state.abandon_restore();
                CommandResult::Nothing
            }
            EntryPayload::Normal(command) => applied.state.apply(command),
            EntryPayload::Membership(m) => {
                applied.last_membership = StoredMembership::new(Some(log_id), m);
                CommandResult::Nothing
            }
        };
        results.push(result);
    }
    results
}

/// Replaces the state in `view` with a snapshot's (a leader's, installed).
pub(super) fn install_state(view: &StateView, state: ClusterState, meta: &SnapshotMeta) {
    let mut applied = view.write();
    applied.state = state;
    applied.last_applied = meta.last_log_id;
    applied.last_membership = meta.last_membership.clone();
    applied.snapshots_installed += 1;
}

/// Sets the state in `view` from a stored snapshot (on open).
pub(super) fn restore_state(view: &StateView, state: ClusterState, meta: &SnapshotMeta) {
    let mut applied = view.write();
    applied.state = state;
    applied.last_applied = meta.last_log_id;
    applied.last_membership = meta.last_membership.clone();
}

pub struct StateMachineStore {
    db: Db,
    view: StateView,
    timings: Arc<WriteTimings>,
    /// Counter making snapshot ids unique within this process.
    snapshot_seq: u64,
}

pub struct SnapshotBuilder {
    db: Db,
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    seq: u64,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snap_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

fn snap_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Opens the state machine, restoring the newest durable snapshot if there is one.
    pub fn open(db: Db, timings: Arc<WriteTimings>) -> Result<Self, StoreError> {
        move_legacy_snapshot(&db)?;
        let view = StateView::default();
        // Publishes the empty state's level, or the snapshot's below.
        drop(view.write());
        if let Some(snap) = read_stored_snapshot(&db)? {
            let state = ClusterState::decode(&snap.data)?;
            restore_state(&view, state, &snap.meta);
            db.fence().stored = snap.meta.last_log_id;
        }
        Ok(StateMachineStore {
            db,
            view,
            timings,
            snapshot_seq: 0,
        })
    }

    pub fn view(&self) -> StateView {
        self.view.clone()
    }
}

/// Format 1 kept one snapshot under a fixed key; give it its keyed record.
fn move_legacy_snapshot(db: &Db) -> Result<(), StoreError> {
    let cf = db.cf(CF_SNAPSHOT);
    let Some(bytes) = db.raw().get_cf(cf, LEGACY_SNAPSHOT_KEY)? else {
        return Ok(());
    };
    let snap: StoredSnapshot = codec::decode_as("snapshot", record::SNAPSHOT, &bytes)?;
    let mut batch = rocksdb::WriteBatch::default();
    batch.put_cf(cf, snapshot_key(snap.meta.last_log_id), &bytes);
    batch.delete_cf(cf, LEGACY_SNAPSHOT_KEY);
    db.raw().write_opt(batch, &Db::sync_opts())?;
    Ok(())
}

/// The newest stored snapshot.
fn read_stored_snapshot(db: &Db) -> Result<Option<StoredSnapshot>, StoreError> {
    let mut it = db.raw().iterator_cf(
        db.cf(CF_SNAPSHOT),
        rocksdb::IteratorMode::From(&[SNAPSHOT_PREFIX + 1], rocksdb::Direction::Reverse),
    );
    match it.next() {
        Some(item) => {
            let (key, bytes) = item?;
            if key.first() != Some(&SNAPSHOT_PREFIX) {
                return Ok(None);
            }
            Ok(Some(codec::decode_as(
                "snapshot",
                record::SNAPSHOT,
                &bytes,
            )?))
        }
        None => Ok(None),
    }
}

/// Stores `snap` unless a newer snapshot is stored already; returns whether it is now the
/// current one. Written without holding the fence (snapshots can be large); the fence then
/// records the new position, deletes older records, and completes a deferred purge.
fn store_snapshot(db: &Db, snap: &StoredSnapshot) -> Result<bool, StoreError> {
    let last = snap.meta.last_log_id;
    let newer = |stored: Option<LogId>| stored.is_none() || last > stored;
    if !newer(db.fence().stored) {
        return Ok(false);
    }
    let cf = db.cf(CF_SNAPSHOT);
    let key = snapshot_key(last);
    db.raw().put_cf_opt(
        cf,
        key,
        codec::encode_as("snapshot", record::SNAPSHOT, snap)?,
        &Db::sync_opts(),
    )?;
    let mut fence = db.fence();
    if !newer(fence.stored) {
        // A newer snapshot became durable while this one was written: drop this one.
        db.raw().delete_cf(cf, key)?;
        return Ok(false);
    }
    fence.stored = last;
    db.raw().delete_range_cf(cf, snapshot_key(None), key)?;
    if let (Some(target), Some(last)) = (fence.deferred_purge, last) {
        purge_upto(db, target.min(last))?;
        if target <= last {
            fence.deferred_purge = None;
        }
    }
    Ok(true)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Encoding a large state takes a while: off the async workers.
        let state = self.state.clone();
        let data = tokio::task::spawn_blocking(move || state.encode())
            .await
            .map_err(snap_write_err)?
            .map_err(snap_write_err)?;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let db = self.db.clone();
        let (stored, current) = tokio::task::spawn_blocking(move || {
            store_snapshot(&db, &stored).map(|current| (stored, current))
        })
        .await
        .map_err(snap_write_err)?
        .map_err(snap_write_err)?;
        if current {
            tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        } else {
            tracing::info!(
                snapshot = %meta.snapshot_id,
                "built snapshot discarded: a newer snapshot was stored meanwhile"
            );
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.view.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        // A restore's commit decodes and checks the whole staged state (tens of MiB): it
        // runs in place with this worker's other tasks moved away, so Raft messages and
        // heartbeats are not held up behind it.
        let heavy = entries.iter().any(|e| {
            matches!(
                &e.payload,
                EntryPayload::Normal(Command::RestoreCommit { .. })
            )
        });
        let results = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread if heavy => {
                tokio::task::block_in_place(|| apply_entries(&self.view, entries))
            }
            _ => apply_entries(&self.view, entries),
        };
        self.timings.apply.observe(started.elapsed().as_secs_f64());
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let applied = self.view.read();
        SnapshotBuilder {
            db: self.db.clone(),
            state: applied.state.clone(),
            last_applied: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Decoding and the synced write of a large snapshot take a while: off the async
        // workers (apply waits for the install anyway; readers do not).
        let db = self.db.clone();
        let (state, current) = tokio::task::spawn_blocking(move || {
            let state =
                ClusterState::decode(&stored.data).map_err(|e| Box::new(snap_read_err(e)))?;
            let current = store_snapshot(&db, &stored).map_err(|e| Box::new(snap_write_err(e)))?;
            Ok::<_, Box<StorageError>>((state, current))
        })
        .await
        .map_err(snap_write_err)?
        .map_err(|e| *e)?;
        if !current {
            // openraft installs only snapshots newer than what it committed, so a newer
            // stored one means a bug; keep the stored one durable, follow openraft in memory.
            tracing::warn!(snapshot = %meta.snapshot_id, "installed snapshot is not newer than the stored one; not stored");
        }
        install_state(&self.view, state, meta);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = read_stored_snapshot(&self.db).map_err(sm_read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
