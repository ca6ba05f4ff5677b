//! The chunk store on a real directory: round trips, refused bytes, crashes at every step
//! of a write, bit rot, the space floor and the format check.

use super::*;

fn store(dir: &Path) -> ChunkStore {
    ChunkStore::open(dir, 0).expect("open").0
}

#[test]
fn chunks_round_trip_and_are_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let mut ids = Vec::new();
    for i in 0..20u32 {
        let bytes = format!("chunk number {i}")
            .repeat(i as usize + 1)
            .into_bytes();
        let id = ChunkId::of(&bytes);
        assert_eq!(s.put(&id, &bytes).expect("put"), PutOutcome::Stored);
        assert_eq!(
            s.put(&id, &bytes).expect("put again"),
            PutOutcome::AlreadyPresent
        );
        assert_eq!(s.get(&id).expect("get"), bytes);
        ids.push(id);
    }
    ids.sort();
    assert_eq!(s.list().expect("list"), ids);
    let hex = ids[0].to_string();
    assert!(s
        .path_of(&ids[0])
        .ends_with(format!("data/{}/{}/{hex}", &hex[..2], &hex[2..4])));
    assert!(s.remove(&ids[0]).expect("remove"));
    assert!(!s.remove(&ids[0]).expect("already gone"));
    assert!(matches!(s.get(&ids[0]), Err(ChunkError::NotFound(_))));
}

#[test]
fn bytes_that_do_not_hash_to_the_id_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let id = ChunkId::of(b"what was meant");
    let err = s.put(&id, b"what was sent").expect_err("mismatch");
    assert!(matches!(err, ChunkError::Mismatch { .. }), "{err}");
    assert!(!s.has(&id));
    assert!(s.list().expect("list").is_empty());
}

#[test]
fn a_write_stopped_after_any_step_leaves_no_chunk_or_a_whole_one() {
    for step in PutStep::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = vec![7u8; 100_000];
        let id = ChunkId::of(&bytes);
        {
            let s = store(dir.path());
            s.put_until(&id, &bytes, Some(step))
                .expect("write to the crash");
        }
        // The agent starts again: leftovers go, and the chunk is absent or whole.
        let (s, report) = ChunkStore::open(dir.path(), 0).expect("reopen");
        match s.get(&id) {
            Ok(read) => assert_eq!(read, bytes, "{step:?}"),
            Err(ChunkError::NotFound(_)) => assert!(step < PutStep::Renamed, "{step:?}"),
            Err(e) => panic!("{step:?}: {e}"),
        }
        let temp_left = std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(temp_left, 0, "{step:?}: temporary files removed at open");
        assert_eq!(
            report.temp_removed,
            usize::from(step < PutStep::Renamed),
            "{step:?}"
        );
        // A retried write succeeds.
        s.put(&id, &bytes).expect("retry");
        assert_eq!(s.get(&id).expect("get"), bytes);
    }
}

#[test]
fn a_rotted_chunk_is_quarantined_and_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let bytes = b"model weights, more or less".repeat(1000);
    let id = ChunkId::of(&bytes);
    s.put(&id, &bytes).expect("put");
    let path = s.path_of(&id);
    let mut on_disk = std::fs::read(&path).expect("read");
    on_disk[1234] ^= 0x01;
    std::fs::write(&path, &on_disk).expect("flip a bit");
    let err = s.get(&id).expect_err("corrupt");
    assert!(matches!(err, ChunkError::Corrupt { .. }), "{err}");
    assert!(!s.has(&id), "moved out of the data directory");
    assert_eq!(s.quarantined().expect("quarantine"), vec![id]);
    assert!(matches!(s.verify(&id), Err(ChunkError::NotFound(_))));
    // Repair: the good bytes, from another replica, are taken again.
    assert_eq!(s.put(&id, &bytes).expect("repair"), PutOutcome::Stored);
    assert_eq!(s.get(&id).expect("get"), bytes);
}

#[test]
fn below_the_space_floor_writes_are_refused_and_stored_chunks_stay_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = b"stored before the disk filled".to_vec();
    let kept_id = ChunkId::of(&kept);
    store(dir.path()).put(&kept_id, &kept).expect("put");
    let (s, _) = ChunkStore::open(dir.path(), u64::MAX).expect("open with a floor");
    let bytes = b"one more".to_vec();
    let err = s.put(&ChunkId::of(&bytes), &bytes).expect_err("floor");
    assert!(matches!(err, ChunkError::SpaceLow { .. }), "{err}");
    assert_eq!(s.get(&kept_id).expect("still readable"), kept);
}

#[test]
fn a_directory_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("FORMAT"), "something-else 9\n").expect("write");
    let err = ChunkStore::open(dir.path(), 0).err().expect("refused");
    assert!(matches!(err, ChunkError::Format { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("FORMAT")).expect("kept"),
        "something-else 9\n",
        "left as it was"
    );
}

#[test]
fn an_oversized_chunk_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let bytes = vec![0u8; MAX_CHUNK_BYTES + 1];
    let err = s.put(&ChunkId::of(&bytes), &bytes).expect_err("too large");
    assert!(matches!(err, ChunkError::TooLarge(_)), "{err}");
}

#[test]
fn a_chunk_found_present_after_a_gc_listing_is_not_collected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let (old, touched) = (b"an old chunk".to_vec(), b"another old chunk".to_vec());
    let (a, b) = (ChunkId::of(&old), ChunkId::of(&touched));
    s.put(&a, &old).expect("put");
    s.put(&b, &touched).expect("put");
    // Both written an hour ago.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for id in [&a, &b] {
        File::options()
            .write(true)
            .open(s.path_of(id))
            .and_then(|f| f.set_modified(hour_ago))
            .expect("age the chunk");
    }
    // A GC pass lists both (cutoff: 10 minutes ago); a put then finds `b` present and
    // relies on it (HasChunks, or a put of the same bytes).
    let cutoff = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    assert!(s.touch_if_present(&b));
    assert_eq!(
        s.put(&b, &touched).expect("put again"),
        PutOutcome::AlreadyPresent
    );
    assert!(s.remove_if_older(&a, cutoff).expect("remove"));
    assert!(!s.remove_if_older(&b, cutoff).expect("kept"));
    assert_eq!(s.get(&b).expect("still here"), touched);
    assert!(!s.touch_if_present(&a), "a removed chunk is not present");
}

#[tokio::test]
async fn transfer_memory_is_bounded_and_a_waiter_is_refused_then_served() {
    let wait = std::time::Duration::from_millis(50);
    let budget = MemoryBudget::new(2 << 20, wait);
    let whole = budget.reserve(2 << 20, "first").await.expect("room");
    // Full: the next reservation waits, then is refused with a clear error.
    let started = std::time::Instant::now();
    let e = budget.reserve(1024, "second").await.expect_err("no room");
    assert!(started.elapsed() >= wait, "it waited for room first");
    assert!(
        matches!(&e, ChunkError::Busy(m) if m.contains("second") && m.contains("2 MiB")),
        "{e}"
    );
    drop(whole);
    // Room again; a request larger than the whole budget takes all of it, never hangs.
    let big = budget.reserve(64 << 20, "larger than the budget").await;
    assert!(big.is_ok());
}
