//! The chunk service over real gRPC on loopback: streamed puts and ranged gets, refused ids
//! and bytes, the space floor, rotted chunks, and copies between two agents' stores.

use std::sync::Arc;

use steward_core::chunk::ChunkId;
use steward_proto::v1::chunk_service_client::ChunkServiceClient;
use steward_proto::v1::{
    ChunkStoreStatusRequest, CopyChunksRequest, CopyOutcome, GetChunkRequest, HasChunksRequest,
    PutChunkRequest, RemoveChunksRequest,
};
use steward_runtime::transport;
use tonic::transport::Channel;
use tonic::Code;

use super::*;
use crate::chunks::ChunkStore;

struct Agent {
    addr: String,
    store: Arc<ChunkStore>,
    client: ChunkServiceClient<Channel>,
    _dir: Option<tempfile::TempDir>,
    _stop: tokio_util::sync::DropGuard,
}

async fn agent(floor: u64) -> Agent {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(dir.path(), floor).expect("open").0);
    serve_store(store, Some(dir)).await
}

async fn serve_store(store: Arc<ChunkStore>, dir: Option<tempfile::TempDir>) -> Agent {
    serve_api(ChunkApi::new(store.clone()), store, dir).await
}

async fn serve_api(api: ChunkApi, store: Arc<ChunkStore>, dir: Option<tempfile::TempDir>) -> Agent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let router = transport::grpc_server(&transport::ServerSecurity::insecure())
        .add_service(transport::chunk_server(api));
    tokio::spawn(transport::serve(
        router,
        listener,
        stop.clone().cancelled_owned(),
        transport::ServerSecurity::insecure(),
    ));
    let channel = transport::connect(
        &addr,
        &transport::ClientOptions::new(std::time::Duration::from_secs(2)),
    )
    .await
    .expect("connect");
    Agent {
        addr,
        store,
        client: transport::chunk_client(channel),
        _dir: dir,
        _stop: stop.drop_guard(),
    }
}

/// Deterministic bytes of length `len` (not all equal, so ranges are told apart).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn put_messages(id: &str, size: u64, data: &[u8]) -> Vec<PutChunkRequest> {
    let mut out: Vec<PutChunkRequest> = data
        .chunks(CHUNK_DATA_PER_MESSAGE)
        .map(|d| PutChunkRequest {
            data: bytes::Bytes::copy_from_slice(d),
            ..Default::default()
        })
        .collect();
    if out.is_empty() {
        out.push(PutChunkRequest::default());
    }
    out[0].chunk_id = id.to_string();
    out[0].size = size;
    out
}

async fn put(a: &mut Agent, data: &[u8]) -> Result<bool, tonic::Status> {
    let id = ChunkId::of(data).to_string();
    let messages = put_messages(&id, data.len() as u64, data);
    a.client
        .put_chunk(futures::stream::iter(messages))
        .await
        .map(|r| r.into_inner().already_present)
}

async fn get(a: &mut Agent, id: &str, offset: u64, length: u64) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = a
        .client
        .get_chunk(GetChunkRequest {
            chunk_id: id.to_string(),
            offset,
            length,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        assert_eq!(
            m.offset,
            offset + out.len() as u64,
            "pieces arrive in order"
        );
        out.extend(m.data);
    }
    Ok(out)
}

#[tokio::test]
async fn chunks_stream_in_and_out_whole_and_by_range() {
    let mut a = agent(0).await;
    // Several messages' worth, not a multiple of the piece size.
    let data = bytes(3 * CHUNK_DATA_PER_MESSAGE + 12_345, 7);
    let id = ChunkId::of(&data).to_string();
    assert!(!put(&mut a, &data).await.expect("put"), "new chunk");
    assert!(
        put(&mut a, &data).await.expect("put again"),
        "already present"
    );
    assert_eq!(get(&mut a, &id, 0, 0).await.expect("get"), data);
    let (off, len) = (
        CHUNK_DATA_PER_MESSAGE as u64 - 10,
        2 * CHUNK_DATA_PER_MESSAGE as u64,
    );
    assert_eq!(
        get(&mut a, &id, off, len).await.expect("range"),
        data[off as usize..(off + len) as usize]
    );
    assert_eq!(
        get(&mut a, &id, data.len() as u64 - 5, 0)
            .await
            .expect("tail"),
        data[data.len() - 5..]
    );
    let e = get(&mut a, &id, data.len() as u64 + 1, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let e = get(&mut a, &id, 10, data.len() as u64).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // An empty chunk is a chunk too.
    assert!(!put(&mut a, b"").await.expect("empty put"));
    assert_eq!(
        get(&mut a, &ChunkId::of(b"").to_string(), 0, 0)
            .await
            .expect("empty get"),
        b""
    );
    let other = ChunkId::of(b"never stored").to_string();
    let present = a
        .client
        .has_chunks(HasChunksRequest {
            chunk_ids: vec![id.clone(), other.clone()],
            ..Default::default()
        })
        .await
        .expect("has")
        .into_inner()
        .present;
    assert_eq!(present, vec![true, false]);
    let e = get(&mut a, &other, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let status = a
        .client
        .chunk_store_status(ChunkStoreStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.chunks, 2);
    assert_eq!(status.stored_bytes, data.len() as u64);
    assert!(!status.space_low);
}

#[tokio::test]
async fn calls_meant_for_another_node_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(dir.path(), 0).expect("open").0);
    let mut api = ChunkApi::new(store.clone());
    api.node = Some("n1".into());
    let mut a = serve_api(api, store, Some(dir)).await;
    let id = ChunkId::of(b"kept");
    assert!(!put(&mut a, b"kept").await.expect("put"));
    let ids = vec![id.to_string()];
    // Meant for n2 (the caller holds n2's old address, now n1's): refused, and the chunk
    // stays.
    let e = a
        .client
        .remove_chunks(RemoveChunksRequest {
            chunk_ids: ids.clone(),
            node_id: "n2".into(),
        })
        .await
        .expect_err("n1 refuses a removal meant for n2");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("node `n2`") && e.message().contains("node `n1`"),
        "{e:?}"
    );
    let e = a
        .client
        .has_chunks(HasChunksRequest {
            chunk_ids: ids.clone(),
            node_id: "n2".into(),
        })
        .await
        .expect_err("n1 never answers for n2's chunks");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = a
        .client
        .copy_chunks(CopyChunksRequest {
            chunk_ids: ids.clone(),
            sources: vec![a.addr.clone()],
            node_id: "n2".into(),
        })
        .await
        .expect_err("n1 refuses a copy meant for n2");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(a.store.has(&id), "the refused removal removed nothing");
    // Meant for n1, or from an older caller that names no node: served.
    for node in ["n1", ""] {
        let present = a
            .client
            .has_chunks(HasChunksRequest {
                chunk_ids: ids.clone(),
                node_id: node.into(),
            })
            .await
            .expect("served")
            .into_inner()
            .present;
        assert_eq!(present, vec![true]);
    }
    let removed = a
        .client
        .remove_chunks(RemoveChunksRequest {
            chunk_ids: ids,
            node_id: "n1".into(),
        })
        .await
        .expect("n1 removes its own chunk")
        .into_inner()
        .removed;
    assert_eq!(removed, 1);
}

#[tokio::test]
async fn malformed_ids_and_wrong_bytes_are_refused_before_anything_is_written() {
    let mut a = agent(0).await;
    let good = ChunkId::of(b"x").to_string();
    for bad in [
        "../x".to_string(),
        good[..63].to_string(),
        good.to_uppercase(),
        format!("{}\0", &good[..63]),
        String::new(),
    ] {
        let e = get(&mut a, &bad, 0, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "get {bad:?}: {e:?}");
        let e = a
            .client
            .put_chunk(futures::stream::iter(put_messages(&bad, 1, b"x")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "put {bad:?}: {e:?}");
        let e = a
            .client
            .has_chunks(HasChunksRequest {
                chunk_ids: vec![bad.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "has {bad:?}: {e:?}");
    }
    // Bytes that do not hash to the id; fewer and more bytes than announced.
    let e = a
        .client
        .put_chunk(futures::stream::iter(put_messages(&good, 1, b"y")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for (size, data) in [(2u64, &b"x"[..]), (1, &b"xx"[..])] {
        let e = a
            .client
            .put_chunk(futures::stream::iter(put_messages(&good, size, data)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = a
        .client
        .put_chunk(futures::stream::iter(put_messages(
            &good,
            MAX_CHUNK_BYTES as u64 + 1,
            b"",
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(a.store.list().expect("list"), vec![], "nothing was stored");
    assert_eq!(
        std::fs::read_dir(a.store.root().join("tmp"))
            .expect("tmp")
            .count(),
        0,
        "no temporary file left"
    );
}

#[tokio::test]
async fn below_the_floor_new_chunks_get_resource_exhausted_and_stored_ones_stay_readable() {
    let mut a = agent(0).await;
    let kept = bytes(1000, 1);
    put(&mut a, &kept).await.expect("put above the floor");
    // The same directory reopened with a floor no disk can meet.
    let low = Arc::new(
        ChunkStore::open(a.store.root(), u64::MAX)
            .expect("reopen")
            .0,
    );
    let mut b = serve_store(low, None).await;
    let e = put(&mut b, &bytes(1000, 2)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("floor"), "{e:?}");
    let id = ChunkId::of(&kept).to_string();
    assert_eq!(get(&mut b, &id, 0, 0).await.expect("still readable"), kept);
    let status = b
        .client
        .chunk_store_status(ChunkStoreStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.space_low);
    assert_eq!(status.chunks, 1);
}

#[tokio::test]
async fn a_rotted_chunk_is_data_loss_never_bytes_and_copies_skip_a_rotted_source() {
    let mut rotted = agent(0).await;
    let mut good = agent(0).await;
    let mut target = agent(0).await;
    let data = bytes(2 * CHUNK_DATA_PER_MESSAGE, 3);
    let id = ChunkId::of(&data);
    put(&mut rotted, &data).await.expect("put");
    put(&mut good, &data).await.expect("put");
    // Flip one byte on disk.
    let path = rotted.store.path_of(&id);
    let mut on_disk = std::fs::read(&path).expect("read");
    on_disk[12_345] ^= 0x40;
    std::fs::write(&path, on_disk).expect("write");
    // Copy from the rotted source first: its read is refused (and quarantines it), so the
    // copy comes from the next source.
    let reply = target
        .client
        .copy_chunks(CopyChunksRequest {
            chunk_ids: vec![id.to_string()],
            sources: vec![rotted.addr.clone(), good.addr.clone()],
            ..Default::default()
        })
        .await
        .expect("copy")
        .into_inner();
    assert_eq!(reply.results.len(), 1);
    let r = &reply.results[0];
    assert_eq!(r.outcome, CopyOutcome::Copied as i32, "{r:?}");
    assert_eq!(r.detail, good.addr);
    assert_eq!(r.bytes, data.len() as u64);
    assert_eq!(
        get(&mut target, &id.to_string(), 0, 0).await.expect("get"),
        data
    );
    let e = get(&mut rotted, &id.to_string(), 0, 10).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DataLoss | Code::NotFound),
        "a rotted chunk is never served: {e:?}"
    );
    assert_eq!(rotted.store.quarantined().expect("quarantine"), vec![id]);
    // Copying again finds it present; a chunk no source has fails with every reason.
    let missing = ChunkId::of(b"nobody has this");
    let reply = target
        .client
        .copy_chunks(CopyChunksRequest {
            chunk_ids: vec![id.to_string(), missing.to_string()],
            sources: vec![rotted.addr.clone(), good.addr.clone()],
            ..Default::default()
        })
        .await
        .expect("copy")
        .into_inner();
    assert_eq!(reply.results[0].outcome, CopyOutcome::AlreadyPresent as i32);
    assert_eq!(reply.results[1].outcome, CopyOutcome::Failed as i32);
    assert!(
        reply.results[1].detail.contains(&rotted.addr)
            && reply.results[1].detail.contains(&good.addr),
        "{:?}",
        reply.results[1]
    );
    let e = target
        .client
        .copy_chunks(CopyChunksRequest {
            chunk_ids: vec![id.to_string()],
            sources: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
