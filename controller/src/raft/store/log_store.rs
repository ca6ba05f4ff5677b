//! The Raft log and vote, on RocksDB (`RaftLogStorage`).
//!
//! Invariants: the append callback fires only after the batch is written with
//! `sync = true`; `read_vote` and log reads fail with a storage error on a record that does
//! not decode; purge records `last_purged` before deleting entries, so a crash between the
//! two leaves extra entries, never a hole; purge never goes past the newest stored snapshot
//! (the rest waits in the [`super::SnapshotFence`] until a snapshot covers it).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogId};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use steward_core::codec;

use super::{record, Db, MetaKey, StoreError, CF_LOG};
use crate::raft::timings::WriteTimings;
use crate::raft::typ::{
    Entry, LogFlushed, LogId, LogState, StorageError, StorageIOError, TypeConfig, Vote,
};

/// Log storage handle; cheap to clone (shares the database).
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    timings: Arc<WriteTimings>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::CorruptKey { len: key.len() })?;
    Ok(u64::from_be_bytes(arr))
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    pub fn new(db: Db, timings: Arc<WriteTimings>) -> Self {
        LogStore { db, timings }
    }

    fn last_entry(&self) -> Result<Option<Entry>, StoreError> {
        let mut it = self
            .db
            .raw()
            .iterator_cf(self.db.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item?;
                Ok(Some(codec::decode_as(
                    "log entry",
                    record::LOG_ENTRY,
                    &value,
                )?))
            }
        }
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let cf = self.db.cf(CF_LOG);
        let from = index_key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .raw()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item?;
            let index = key_index(&key)?;
            if end.is_some_and(|end| index >= end) {
                break;
            }
            let entry: Entry = codec::decode_as("log entry", record::LOG_ENTRY, &value)?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl LogStore {
    /// The write batch that stores `entries`.
    fn entries_batch(
        &self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<WriteBatch, StoreError> {
        let mut batch = WriteBatch::default();
        let cf = self.db.cf(CF_LOG);
        for entry in entries {
            let bytes = codec::encode_as("log entry", record::LOG_ENTRY, &entry)?;
            batch.put_cf(cf, index_key(entry.get_log_id().index), bytes);
        }
        Ok(batch)
    }

    /// Appends `entries` with a synced write, outside openraft (golden-file generation).
    #[cfg(test)]
    pub(crate) fn append_now(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let batch = self.entries_batch(entries)?;
        Ok(self.db.raw().write_opt(batch, &Db::sync_opts())?)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        self.read_range(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged: Option<LogId> = self.db.get_meta(MetaKey::LastPurged).map_err(read_err)?;
        let last = self
            .last_entry()
            .map_err(read_err)?
            .map(|e| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: last_purged,
            // The later of the two: after a snapshot install the purge point may be ahead of
            // every entry left.
            last_log_id: last.max(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.db
            .put_meta(MetaKey::Vote, vote)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.db
            .get_meta(MetaKey::Vote)
            .map_err(|e| StorageIOError::read_vote(AnyError::new(&e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-applying from the snapshot on restart.
        let bytes =
            codec::encode_as("committed log id", record::META, &committed).map_err(write_err)?;
        self.db
            .raw()
            .put_cf(self.db.cf(super::CF_META), b"committed", bytes)
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let v: Option<Option<LogId>> = self.db.get_meta(MetaKey::Committed).map_err(read_err)?;
        Ok(v.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let batch = self.entries_batch(entries).map_err(write_err)?;
        // The synced write blocks on fsync. openraft 0.9's core waits for this append's
        // callback before it replicates or does anything else, so the write runs in place
        // on this worker thread (tokio moves the worker's other tasks away), which costs
        // less than handing it to the blocking pool and back.
        let started = std::time::Instant::now();
        let write = || self.db.raw().write_opt(batch, &Db::sync_opts());
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(write),
            _ => write(),
        };
        self.timings
            .log_append
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.db.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        // delete_range's end is exclusive: remove u64::MAX itself too.
        batch.delete_cf(cf, index_key(u64::MAX));
        self.db
            .raw()
            .write_opt(batch, &Db::sync_opts())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut fence = self.db.fence();
        let allowed = if fence.disabled {
            Some(log_id)
        } else {
            fence.stored.min(Some(log_id))
        };
        if allowed < Some(log_id) {
            tracing::debug!(
                requested = %log_id,
                stored_snapshot = ?fence.stored,
                "purge deferred until a stored snapshot covers it"
            );
            fence.deferred_purge = fence.deferred_purge.max(Some(log_id));
        }
        match allowed {
            Some(upto) => purge_upto(&self.db, upto).map_err(write_err),
            None => Ok(()),
        }
    }
}

/// Deletes the log up to and including `upto`, unless it is purged that far already.
/// Records `last_purged` first, so a crash in between leaves extra entries, never a hole.
pub(crate) fn purge_upto(db: &Db, upto: LogId) -> Result<(), StoreError> {
    let current: Option<LogId> = db.get_meta(MetaKey::LastPurged)?;
    if current >= Some(upto) {
        return Ok(());
    }
    db.put_meta(MetaKey::LastPurged, &upto)?;
    let cf = db.cf(CF_LOG);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, index_key(0), index_key(upto.index + 1));
    db.raw().write_opt(batch, &Db::sync_opts())?;
    Ok(())
}
