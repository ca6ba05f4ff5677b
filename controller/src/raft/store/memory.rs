//! Raft storage in memory, for the deterministic simulation (`steward-chaos sim`): the
//! same openraft traits as the RocksDB store, the same apply path
//! ([`super::state_machine::apply_entries`]) and the same snapshot fence, over a
//! [`MemDisk`] that outlives a simulated crash.
//!
//! A "crash" drops the Raft instance and its [`MemStateMachine`] (the in-memory state);
//! the [`MemDisk`] keeps what a synced write would have kept: vote, log, committed id,
//! purge point and the newest snapshot. A restart opens new stores over the same disk and
//! rebuilds the state from the snapshot plus the committed log, as a controller does.
//!
//! Every write is durable when its call returns, as with `sync = true`, unless the disk
//! was made with [`MemDisk::acknowledging_before_sync`] (a reintroduced bug for the
//! simulation to catch): then an append's callback fires at once and the entries (and
//! the committed id written after them, as in the RocksDB store's unsynced write) become
//! durable only at the next sync point (the next append, vote or truncate), so a crash
//! loses the acknowledged tail.
//!
//! A crash ([`MemDisk::crash`]) also ends the stores opened before it: openraft's
//! state-machine worker and a detached snapshot build may outlive `Raft::shutdown`, and
//! what they write afterwards is dropped, as a dead process writes nothing.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{OptionalSend, RaftLogId};
use steward_core::{ClusterState, CommandResult};

use super::state_machine::{apply_entries, install_state, restore_state};
use super::{StateView, StoreError};
use crate::raft::typ::{
    Entry, LogFlushed, LogId, LogState, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, TypeConfig, Vote,
};

/// What survives a simulated crash.
#[derive(Debug, Default)]
pub struct MemDisk {
    inner: Mutex<DiskState>,
    /// Acknowledge appends before they are durable (a bug, on purpose).
    ack_before_sync: bool,
}

#[derive(Debug, Default, Clone)]
struct DiskState {
    /// Bumped by every crash; stores opened before it write nothing more.
    generation: u64,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Recorded, not yet durable (only with `ack_before_sync`).
    unsynced_committed: Option<Option<LogId>>,
    last_purged: Option<LogId>,
    log: BTreeMap<u64, Entry>,
    /// Appended and acknowledged, not yet durable (only with `ack_before_sync`).
    unsynced: BTreeMap<u64, Entry>,
    /// The newest stored snapshot: its meta and encoded state.
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// A purge asked for beyond the stored snapshot, done when a snapshot covers it.
    deferred_purge: Option<LogId>,
}

impl DiskState {
    fn sync(&mut self) {
        let unsynced = std::mem::take(&mut self.unsynced);
        self.log.extend(unsynced);
        if let Some(c) = self.unsynced_committed.take() {
            self.committed = c;
        }
    }

    fn stored_snapshot(&self) -> Option<LogId> {
        self.snapshot.as_ref().and_then(|(m, _)| m.last_log_id)
    }

    fn purge_upto(&mut self, upto: LogId) {
        if self.last_purged >= Some(upto) {
            return;
        }
        self.last_purged = Some(upto);
        self.log = self.log.split_off(&(upto.index + 1));
        self.unsynced = self.unsynced.split_off(&(upto.index + 1));
    }
}

impl MemDisk {
    pub fn new() -> Arc<Self> {
        Arc::new(MemDisk::default())
    }

    /// A disk that acknowledges appends before they are durable: the bug class "ack before
    /// fsync", for the simulation to catch.
    pub fn acknowledging_before_sync() -> Arc<Self> {
        Arc::new(MemDisk {
            inner: Mutex::default(),
            ack_before_sync: true,
        })
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A power loss: whatever was acknowledged but not durable is gone, and the stores
    /// opened before it write nothing more.
    pub fn crash(&self) {
        let mut disk = self.lock();
        disk.unsynced.clear();
        disk.unsynced_committed = None;
        disk.generation += 1;
    }

    /// The disk, for a write by a store of `generation`; `None` after a crash ended it.
    fn lock_for_write(&self, generation: u64) -> Option<MutexGuard<'_, DiskState>> {
        Some(self.lock()).filter(|d| d.generation == generation)
    }

    /// Opens a log store and a state machine over this disk, as a controller does on
    /// start: the state machine restores the newest snapshot; openraft re-applies the
    /// committed log after it.
    pub fn open(self: &Arc<Self>) -> Result<(MemLogStore, MemStateMachine), StoreError> {
        let view = StateView::default();
        let (snapshot, generation) = {
            let disk = self.lock();
            (disk.snapshot.clone(), disk.generation)
        };
        if let Some((meta, data)) = snapshot {
            restore_state(&view, ClusterState::decode(&data)?, &meta);
        }
        Ok((
            MemLogStore {
                disk: self.clone(),
                generation,
            },
            MemStateMachine {
                disk: self.clone(),
                generation,
                view,
                snapshot_seq: 0,
            },
        ))
    }

    /// Stores a snapshot unless a newer one is stored; completes a deferred purge it
    /// covers. Returns whether it is now the current one.
    fn store_snapshot(&self, generation: u64, meta: &SnapshotMeta, data: Vec<u8>) -> bool {
        let Some(mut disk) = self.lock_for_write(generation) else {
            return false;
        };
        let last = meta.last_log_id;
        let stored = disk.stored_snapshot();
        if !(stored.is_none() || last > stored) {
            return false;
        }
        disk.snapshot = Some((meta.clone(), data));
        if let (Some(target), Some(last)) = (disk.deferred_purge, last) {
            disk.purge_upto(target.min(last));
            if target <= last {
                disk.deferred_purge = None;
            }
        }
        true
    }
}

/// The log and vote over a [`MemDisk`].
#[derive(Clone)]
pub struct MemLogStore {
    disk: Arc<MemDisk>,
    generation: u64,
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let disk = self.disk.lock();
        let mut entries: BTreeMap<u64, Entry> = disk
            .log
            .range(range.clone())
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        entries.extend(disk.unsynced.range(range).map(|(i, e)| (*i, e.clone())));
        Ok(entries.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let disk = self.disk.lock();
        let last = disk
            .unsynced
            .values()
            .next_back()
            .or_else(|| disk.log.values().next_back())
            .map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: disk.last_purged,
            last_log_id: last.max(disk.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        if let Some(mut disk) = self.disk.lock_for_write(self.generation) {
            disk.sync();
            disk.vote = Some(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.disk.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(mut disk) = self.disk.lock_for_write(self.generation) {
            if self.disk.ack_before_sync {
                disk.unsynced_committed = Some(committed);
            } else {
                disk.committed = committed;
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let disk = self.disk.lock();
        Ok(disk.unsynced_committed.unwrap_or(disk.committed))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(mut disk) = self.disk.lock_for_write(self.generation) {
            if self.disk.ack_before_sync {
                // The previous batch reaches the disk only now; this one is acknowledged
                // while still in flight.
                disk.sync();
                for entry in entries {
                    disk.unsynced.insert(entry.get_log_id().index, entry);
                }
            } else {
                for entry in entries {
                    disk.log.insert(entry.get_log_id().index, entry);
                }
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(mut disk) = self.disk.lock_for_write(self.generation) {
            disk.sync();
            disk.log.split_off(&log_id.index);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let Some(mut disk) = self.disk.lock_for_write(self.generation) else {
            return Ok(());
        };
        disk.sync();
        // As the RocksDB store: never past the newest stored snapshot.
        let allowed = disk.stored_snapshot().min(Some(log_id));
        if allowed < Some(log_id) {
            disk.deferred_purge = disk.deferred_purge.max(Some(log_id));
        }
        if let Some(upto) = allowed {
            disk.purge_upto(upto);
        }
        Ok(())
    }
}

/// The state machine over a [`MemDisk`]: the state in memory (lost in a crash), snapshots
/// on the disk.
pub struct MemStateMachine {
    disk: Arc<MemDisk>,
    generation: u64,
    view: StateView,
    snapshot_seq: u64,
}

impl MemStateMachine {
    pub fn view(&self) -> StateView {
        self.view.clone()
    }
}

pub struct MemSnapshotBuilder {
    disk: Arc<MemDisk>,
    generation: u64,
    state: ClusterState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    seq: u64,
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for MemSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = self.state.encode().map_err(snap_err)?;
        // The RocksDB store encodes and writes off the async workers, so other tasks (an
        // install from a leader, say) run in between; let them run here too, so that the
        // snapshot fence's "a newer one was stored meanwhile" path is exercised.
        tokio::task::yield_now().await;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        self.disk
            .store_snapshot(self.generation, &meta, data.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.view.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(apply_entries(&self.view, entries))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        let applied = self.view.read();
        MemSnapshotBuilder {
            disk: self.disk.clone(),
            generation: self.generation,
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
        let state = ClusterState::decode(&data)
            .map_err(|e| StorageIOError::read_snapshot(None, openraft::AnyError::new(&e)))?;
        self.disk.store_snapshot(self.generation, meta, data);
        install_state(&self.view, state, meta);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .disk
            .lock()
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
