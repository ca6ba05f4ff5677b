//! Conformance of the RocksDB store: openraft's storage suite, and corruption handling.

use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::typ::{StorageError, TypeConfig};

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path()).expect("open db");
        let (log, sm) = open_stores(&db).await.expect("open stores");
        Ok((dir, log, sm))
    }
}

#[test]
#[allow(clippy::result_large_err)] // openraft's StorageError, as the suite returns it
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(RocksBuilder)
}

#[tokio::test]
async fn garbage_vote_is_a_storage_error_not_absent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    db.raw()
        .put_cf(db.cf(CF_META), b"vote", b"\x01\xff\xff\xff garbage")
        .expect("write garbage");
    let (mut log, _sm) = open_stores(&db).await.expect("open stores");
    let err = log
        .read_vote()
        .await
        .expect_err("garbage vote must not read as Ok");
    assert!(
        err.to_string().contains("vote"),
        "error names the vote: {err}"
    );

    // A record from an unknown (future) format version is refused too.
    db.raw()
        .put_cf(db.cf(CF_META), b"vote", b"\x09\x00")
        .expect("write future version");
    let err = log
        .read_vote()
        .await
        .expect_err("future version must not read as Ok");
    assert!(format!("{err:?}").contains("version"), "{err:?}");
}

#[tokio::test]
async fn garbage_log_entry_is_a_storage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    db.raw()
        .put_cf(db.cf(CF_LOG), 5u64.to_be_bytes(), b"\x01not an entry")
        .expect("write garbage");
    let (mut log, _sm) = open_stores(&db).await.expect("open stores");
    assert!(log.get_log_state().await.is_err());
}

#[test]
fn data_dir_is_bound_to_its_controller_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(dir.path()).expect("open db");
    let (inc, created) = db.identity(dir.path(), 3).expect("identity");
    assert!(created && inc != 0);
    assert_eq!(db.identity(dir.path(), 3).expect("identity"), (inc, false));
    let err = db.identity(dir.path(), 4).expect_err("other id refused");
    assert!(err.to_string().contains("belongs to controller 3"), "{err}");
}
