//! Durable Raft storage: one RocksDB per controller with named column families.
//!
//! - `meta`: typed metadata keys (vote, committed log id, last purged log id, this data
//!   dir's controller id and incarnation);
//! - `log`: Raft log entries keyed by big-endian index;
//! - `snapshot`: state-machine snapshots (meta + encoded state), keyed by their last log
//!   index; the newest one is current.
//!
//! Every value is in steward-core's versioned codec. Writes that Raft relies on (vote, log
//! append, truncate, purge, snapshot) are written with `sync = true`: they are on disk
//! before the call returns or the append callback fires. A record that fails to decode is a
//! storage error, never "absent".
//!
//! The state machine itself lives in memory (`state_machine.rs`) and is rebuilt on start
//! from the latest snapshot plus the committed log.
//!
//! Two rules keep that rebuild possible (the [`SnapshotFence`]):
//! - a snapshot never moves backwards: each is stored under its own key, the newest is
//!   current, so a build that finishes after a newer install cannot replace it;
//! - the log is never purged past the newest stored snapshot: openraft asks for a purge as
//!   soon as it hands a snapshot to the state machine, before the install is durable, so a
//!   purge beyond the stored snapshot is deferred until a snapshot covers it.

mod log_store;
pub mod memory;
mod state_machine;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_core::codec;

use crate::raft::timings::WriteTimings;
use crate::raft::typ::LogId;
pub use log_store::LogStore;
pub use state_machine::{Applied, StateMachineStore, StateView};

/// Format versions of the records this store writes, one per kind (see
/// `steward_core::codec`). Log entries keep format 1 while commands only gain variants;
/// the cluster state inside a snapshot carries its own version.
pub(crate) mod record {
    /// Vote, committed and purged log ids, controller id, incarnation.
    pub const META: u8 = 1;
    /// openraft's `Entry` of a `Command`.
    pub const LOG_ENTRY: u8 = 1;
    /// `StoredSnapshot`: openraft's snapshot meta and a cluster-state record.
    pub const SNAPSHOT: u8 = 1;
}

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";

/// Typed keys of the `meta` column family.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MetaKey {
    Vote,
    Committed,
    LastPurged,
    /// The controller id this data dir belongs to.
    ControllerId,
    /// Random id made when this data dir was created.
    Incarnation,
}

impl MetaKey {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            MetaKey::Vote => b"vote",
            MetaKey::Committed => b"committed",
            MetaKey::LastPurged => b"last_purged",
            MetaKey::ControllerId => b"controller_id",
            MetaKey::Incarnation => b"incarnation",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("raft log key of {len} bytes, expected 8: the log is damaged")]
    CorruptKey { len: usize },
    #[error("data dir {dir} has a controller id but no incarnation record: it is damaged")]
    MissingIncarnation { dir: String },
    #[error(
        "data dir {dir} belongs to controller {found}, not {expected}: pass the right --id or --data-dir"
    )]
    WrongController {
        dir: String,
        found: u64,
        expected: u64,
    },
}

/// Where the newest stored snapshot is, and the purge waiting for a snapshot to cover it.
/// Shared by the log store and the state machine; its lock is held only for small writes
/// (never while a snapshot is written).
#[derive(Debug, Default)]
pub(crate) struct SnapshotFence {
    /// Last log id of the newest durable snapshot.
    pub(crate) stored: Option<LogId>,
    /// A purge openraft asked for beyond `stored`: done once a snapshot covers it.
    pub(crate) deferred_purge: Option<LogId>,
    /// Off only for openraft's storage conformance suite, whose purge tests purge a log
    /// that no snapshot covers (see `tests.rs`).
    pub(crate) disabled: bool,
}

/// The shared RocksDB handle behind the log store and the state machine.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DB>,
    fence: Arc<Mutex<SnapshotFence>>,
}

impl Db {
    /// Opens (creating if needed) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bound RocksDB's own resource use; the controller's data is metadata.
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(4);
        let cfs = [CF_META, CF_LOG, CF_SNAPSHOT]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Db {
            inner: Arc::new(db),
            fence: Arc::default(),
        })
    }

    pub(crate) fn fence(&self) -> MutexGuard<'_, SnapshotFence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.inner
            .cf_handle(name)
            .expect("column families are created at open")
    }

    pub(crate) fn raw(&self) -> &DB {
        &self.inner
    }

    pub(crate) fn sync_opts() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    pub(crate) fn get_meta<T: DeserializeOwned>(
        &self,
        key: MetaKey,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.get_cf(self.cf(CF_META), key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode_as(
                meta_name(key),
                record::META,
                &bytes,
            )?)),
        }
    }

    pub(crate) fn put_meta<T: Serialize>(&self, key: MetaKey, value: &T) -> Result<(), StoreError> {
        let bytes = codec::encode_as(meta_name(key), record::META, value)?;
        self.inner
            .put_cf_opt(self.cf(CF_META), key.as_bytes(), bytes, &Self::sync_opts())?;
        Ok(())
    }

    /// Returns this data dir's incarnation, creating it (and binding the dir to
    /// `controller_id`) when the data dir is new. Returns `(incarnation, created)`.
    pub fn identity(&self, dir: &Path, controller_id: u64) -> Result<(u64, bool), StoreError> {
        match self.get_meta::<u64>(MetaKey::ControllerId)? {
            Some(found) if found != controller_id => Err(StoreError::WrongController {
                dir: dir.display().to_string(),
                found,
                expected: controller_id,
            }),
            Some(_) => {
                let inc = self.get_meta::<u64>(MetaKey::Incarnation)?.ok_or_else(|| {
                    StoreError::MissingIncarnation {
                        dir: dir.display().to_string(),
                    }
                })?;
                Ok((inc, false))
            }
            None => {
                // Never 0: 0 means "unrecorded" on the wire.
                let inc = rand::random::<u64>().max(1);
                self.put_meta(MetaKey::Incarnation, &inc)?;
                self.put_meta(MetaKey::ControllerId, &controller_id)?;
                Ok((inc, true))
            }
        }
    }

    /// Flushes memtables to disk; called once at shutdown after Raft stopped.
    pub fn flush(&self) -> Result<(), StoreError> {
        for cf in [CF_META, CF_LOG, CF_SNAPSHOT] {
            self.inner.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

fn meta_name(key: MetaKey) -> &'static str {
    match key {
        MetaKey::Vote => "vote",
        MetaKey::Committed => "committed log id",
        MetaKey::LastPurged => "last purged log id",
        MetaKey::ControllerId => "controller id",
        MetaKey::Incarnation => "incarnation",
    }
}

/// Opens the log store and state machine over one database. The state machine opens first:
/// it finds the newest stored snapshot, which bounds the log store's purges.
pub async fn open_stores(
    db: &Db,
    timings: Arc<WriteTimings>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let sm = StateMachineStore::open(db.clone(), timings.clone())?;
    let log = LogStore::new(db.clone(), timings);
    Ok((log, sm))
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
