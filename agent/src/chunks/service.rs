//! `steward.v1.ChunkService` on the agent's API listener: streaming puts and gets of the
//! store's chunks, batched presence checks, and copies pulled from peer agents.
//!
//! Every filesystem step and every hash runs on the blocking pool. Limits (all explicit):
//! a chunk is at most [`MAX_CHUNK_BYTES`]; a message carries at most
//! [`CHUNK_DATA_PER_MESSAGE`] bytes; chunk bytes in memory are bounded by the store's two
//! budgets (`super::TransferMemory`: puts, copies and staging share one, gets served the
//! other; a transfer waits up to `super::MEMORY_WAIT` for room, then gets
//! RESOURCE_EXHAUSTED);
//! [`MAX_HAS_IDS`] ids per presence check, [`MAX_COPY_IDS`] per copy, [`COPY_PARALLELISM`]
//! copies at a time, each source given [`PEER_CALL_TIMEOUT`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use steward_core::chunk::ChunkId;
use steward_proto::v1::chunk_service_server::ChunkService;
use steward_proto::v1::{
    ChunkStoreStatusReply, ChunkStoreStatusRequest, CopyChunkResult, CopyChunksReply,
    CopyChunksRequest, CopyOutcome, GetChunkReply, GetChunkRequest, HasChunksReply,
    HasChunksRequest, PutChunkReply, PutChunkRequest, RemoveChunksReply, RemoveChunksRequest,
    ScrubStatusPb, StartScrubReply, StartScrubRequest,
};
use steward_runtime::transport::{self, ChannelPool, ClientOptions};
use tonic::{Request, Response, Status, Streaming};

use super::{ChunkError, ChunkStore, PutOutcome, MAX_CHUNK_BYTES};

/// Bytes of chunk data per streamed message (both directions).
pub const CHUNK_DATA_PER_MESSAGE: usize = steward_proto::CHUNK_DATA_PER_MESSAGE;
/// Ids per `HasChunks` call.
pub const MAX_HAS_IDS: usize = 10_000;
/// Ids per `CopyChunks` call.
pub const MAX_COPY_IDS: usize = 1_024;
/// Chunks one `CopyChunks` call pulls at a time.
pub const COPY_PARALLELISM: usize = 4;
/// Connect timeout and whole-call deadline of one pull from a peer.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Sources per `CopyChunks` call.
pub const MAX_COPY_SOURCES: usize = 16;

pub struct ChunkApi {
    /// This agent's node: calls naming another node are refused (`None` in tests).
    node: Option<String>,
    store: Arc<ChunkStore>,
    peers: Arc<ChannelPool>,
    scrubber: Option<Arc<super::scrub::Scrubber>>,
}

/// Ids per `RemoveChunks` call.
pub const MAX_REMOVE_IDS: usize = 10_000;

impl ChunkApi {
    /// The service of a store alone: no scrubber, plaintext peers, any node id accepted.
    pub fn new(store: Arc<ChunkStore>) -> Self {
        ChunkApi {
            node: None,
            scrubber: None,
            peers: Arc::new(ChannelPool::new(
                ClientOptions::new(PEER_CONNECT_TIMEOUT).call_timeout(PEER_CALL_TIMEOUT),
            )),
            store,
        }
    }

    /// The service of node `node`'s agent, with its scrubber, reaching peers with mutual
    /// TLS when `tls` is set.
    pub fn for_node(
        node: String,
        store: Arc<ChunkStore>,
        scrubber: Arc<super::scrub::Scrubber>,
        tls: Option<steward_runtime::tls::Tls>,
    ) -> Self {
        ChunkApi {
            node: Some(node),
            scrubber: Some(scrubber),
            store,
            peers: Arc::new(ChannelPool::new(
                ClientOptions::new(PEER_CONNECT_TIMEOUT)
                    .call_timeout(PEER_CALL_TIMEOUT)
                    .tls(tls, steward_runtime::tls::ServerKind::Agent),
            )),
        }
    }

    /// Refuses a call meant for another node (`requested` empty: an older caller, not
    /// checked).
    fn check_node(&self, call: &str, requested: &str) -> Result<(), Status> {
        match &self.node {
            Some(here) if !requested.is_empty() && requested != here => {
                Err(Status::failed_precondition(format!(
                    "{call} is meant for node `{requested}`, but this is the agent of node \
                     `{here}`: the caller holds a stale or wrong address for `{requested}`"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// A chunk id from a request, checked before anything touches the filesystem.
pub fn parse_id(text: &str) -> Result<ChunkId, Status> {
    ChunkId::parse(text).map_err(|e| Status::invalid_argument(format!("chunk id: {e}")))
}

/// A request's list of chunk ids (at most `max`), each checked before the filesystem is
/// touched.
pub fn parse_ids(what: &str, ids: &[String], max: usize) -> Result<Vec<ChunkId>, Status> {
    if ids.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} takes at most {max} ids, got {}",
            ids.len()
        )));
    }
    ids.iter().map(|t| parse_id(t)).collect()
}

/// The gRPC status of a store error.
pub fn status_of(e: ChunkError) -> Status {
    match e {
        ChunkError::NotFound(_) => Status::not_found(e.to_string()),
        ChunkError::Corrupt { .. } => Status::data_loss(e.to_string()),
        ChunkError::Mismatch { .. } | ChunkError::TooLarge(_) => {
            Status::invalid_argument(e.to_string())
        }
        ChunkError::SpaceLow { .. } | ChunkError::Busy(_) => {
            Status::resource_exhausted(e.to_string())
        }
        ChunkError::Format { .. } | ChunkError::Io { .. } => Status::internal(e.to_string()),
    }
}

/// Runs `f` with the store on the blocking pool.
async fn blocking<T: Send + 'static>(
    store: &Arc<ChunkStore>,
    f: impl FnOnce(&ChunkStore) -> Result<T, ChunkError> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| Status::internal(format!("chunk store task: {e}")))?
        .map_err(status_of)
}

/// The range `[offset, offset + length)` of a chunk of `size` bytes (`length` 0: to the end).
pub fn range_of(size: usize, offset: u64, length: u64) -> Result<std::ops::Range<usize>, Status> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    if start > size {
        return Err(Status::out_of_range(format!(
            "offset {offset} is past the chunk's end ({size} bytes)"
        )));
    }
    let end = if length == 0 {
        size
    } else {
        start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX))
    };
    if end > size {
        return Err(Status::out_of_range(format!(
            "range {offset}+{length} is past the chunk's end ({size} bytes)"
        )));
    }
    Ok(start..end)
}

type GetStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<GetChunkReply, Status>> + Send>>;

#[tonic::async_trait]
impl ChunkService for ChunkApi {
    type GetChunkStream = GetStream;

    async fn put_chunk(
        &self,
        request: Request<Streaming<PutChunkRequest>>,
    ) -> Result<Response<PutChunkReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("PutChunk: no message"))?;
        let id = parse_id(&first.chunk_id)?;
        let size = usize::try_from(first.size).unwrap_or(usize::MAX);
        if size > MAX_CHUNK_BYTES {
            return Err(status_of(ChunkError::TooLarge(size)));
        }
        // Refuse early, before a byte is buffered, when the disk is below its floor.
        if let Some(low) = blocking(&self.store, |s| s.space_low()).await? {
            return Err(status_of(low));
        }
        let _memory = self
            .store
            .memory
            .incoming
            .reserve(size, &format!("PutChunk {id}"))
            .await
            .map_err(status_of)?;
        let mut bytes = Vec::with_capacity(size);
        let mut next = Some(first);
        while let Some(message) = next {
            if message.data.len() > CHUNK_DATA_PER_MESSAGE {
                return Err(Status::invalid_argument(format!(
                    "a PutChunk message carries {} bytes, over the {CHUNK_DATA_PER_MESSAGE}-byte limit",
                    message.data.len()
                )));
            }
            if bytes.len() + message.data.len() > size {
                return Err(Status::invalid_argument(format!(
                    "chunk {id}: more bytes than the {size} announced"
                )));
            }
            bytes.extend_from_slice(&message.data);
            next = stream.message().await?;
        }
        if bytes.len() != size {
            return Err(Status::invalid_argument(format!(
                "chunk {id}: the stream ended after {} of the {size} bytes announced",
                bytes.len()
            )));
        }
        let outcome = blocking(&self.store, move |s| s.put(&id, &bytes)).await?;
        Ok(Response::new(PutChunkReply {
            already_present: outcome == PutOutcome::AlreadyPresent,
        }))
    }

    async fn get_chunk(
        &self,
        request: Request<GetChunkRequest>,
    ) -> Result<Response<GetStream>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.chunk_id)?;
        // Memory for the whole chunk is reserved before it is read, and held until the
        // last message is sent.
        let size = blocking(&self.store, move |s| {
            s.stored_size(&id).ok_or(ChunkError::NotFound(id))
        })
        .await?;
        let memory = self
            .store
            .memory
            .outgoing
            .reserve(
                usize::try_from(size).unwrap_or(usize::MAX),
                &format!("GetChunk {id}"),
            )
            .await
            .map_err(status_of)?;
        // The whole chunk is read and re-hashed before any byte is sent: a range of a
        // rotted chunk is refused like the whole of it.
        let bytes = blocking(&self.store, move |s| s.get(&id)).await?;
        let chunk_size = bytes.len() as u64;
        let range = range_of(bytes.len(), req.offset, req.length)?;
        // Every message is a slice of the one buffer, not a copy.
        let bytes = bytes::Bytes::from(bytes);
        let starts: Vec<usize> = range.clone().step_by(CHUNK_DATA_PER_MESSAGE).collect();
        let end = range.end;
        let replies = futures::stream::iter(starts).map(move |start| {
            let _held = &memory;
            let stop = (start + CHUNK_DATA_PER_MESSAGE).min(end);
            Ok(GetChunkReply {
                data: bytes.slice(start..stop),
                offset: start as u64,
                chunk_size,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn has_chunks(
        &self,
        request: Request<HasChunksRequest>,
    ) -> Result<Response<HasChunksReply>, Status> {
        let req = request.into_inner();
        self.check_node("HasChunks", &req.node_id)?;
        let ids = parse_ids("HasChunks", &req.chunk_ids, MAX_HAS_IDS)?;
        let present = blocking(&self.store, move |s| {
            // Touched: a put that skips sending a chunk found here keeps it from a
            // garbage collection pass already under way.
            Ok(ids.iter().map(|id| s.touch_if_present(id)).collect())
        })
        .await?;
        Ok(Response::new(HasChunksReply { present }))
    }

    async fn copy_chunks(
        &self,
        request: Request<CopyChunksRequest>,
    ) -> Result<Response<CopyChunksReply>, Status> {
        let req = request.into_inner();
        self.check_node("CopyChunks", &req.node_id)?;
        let ids = parse_ids("CopyChunks", &req.chunk_ids, MAX_COPY_IDS)?;
        if req.sources.is_empty() || req.sources.len() > MAX_COPY_SOURCES {
            return Err(Status::invalid_argument(format!(
                "CopyChunks needs 1 to {MAX_COPY_SOURCES} sources, got {}",
                req.sources.len()
            )));
        }
        let sources = Arc::new(req.sources);
        let results = futures::stream::iter(ids)
            .map(|id| {
                let (store, peers, sources) =
                    (self.store.clone(), self.peers.clone(), sources.clone());
                async move { copy_one(&store, &peers, &sources, id).await }
            })
            .buffered(COPY_PARALLELISM)
            .collect::<Vec<_>>()
            .await;
        Ok(Response::new(CopyChunksReply { results }))
    }

    async fn chunk_store_status(
        &self,
        _request: Request<ChunkStoreStatusRequest>,
    ) -> Result<Response<ChunkStoreStatusReply>, Status> {
        let (stats, free, low, quarantined) = blocking(&self.store, |s| {
            Ok((s.stats(), s.free_bytes()?, s.space_low()?, s.quarantined()?))
        })
        .await?;
        let scrub = self.scrubber.as_ref().map(|s| {
            let (running, st) = s.status();
            ScrubStatusPb {
                running,
                passes: st.passes,
                checked: st.checked,
                corrupt_found: st.corrupt_found,
                last_pass_ended_unix_ms: st.last_pass_ended_unix_ms,
                bytes_per_sec_limit: s.bytes_per_sec(),
                paused_for_disk_io: s.paused(),
            }
        });
        Ok(Response::new(ChunkStoreStatusReply {
            chunks: stats.chunks,
            stored_bytes: stats.bytes,
            free_bytes: free,
            free_floor_bytes: self.store.free_floor_bytes(),
            space_low: low.is_some(),
            quarantined: quarantined.iter().map(ToString::to_string).collect(),
            scrub,
            gc_removed: self.store.gc_removed.load(Ordering::Relaxed),
            last_gc_unix_ms: self.store.last_gc_unix_ms.load(Ordering::Relaxed),
            copied_in_chunks: self.store.copied_in_chunks.load(Ordering::Relaxed),
            copied_in_bytes: self.store.copied_in_bytes.load(Ordering::Relaxed),
        }))
    }

    async fn remove_chunks(
        &self,
        request: Request<RemoveChunksRequest>,
    ) -> Result<Response<RemoveChunksReply>, Status> {
        let req = request.into_inner();
        self.check_node("RemoveChunks", &req.node_id)?;
        let ids = parse_ids("RemoveChunks", &req.chunk_ids, MAX_REMOVE_IDS)?;
        let removed = blocking(&self.store, move |s| {
            let mut n = 0u32;
            for id in &ids {
                n += u32::from(s.remove(id)?);
            }
            Ok(n)
        })
        .await?;
        Ok(Response::new(RemoveChunksReply { removed }))
    }

    async fn start_scrub(
        &self,
        _request: Request<StartScrubRequest>,
    ) -> Result<Response<StartScrubReply>, Status> {
        let scrubber = self
            .scrubber
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this agent runs no scrubber"))?;
        Ok(Response::new(StartScrubReply {
            started: scrubber.request(),
        }))
    }
}

/// Pulls chunk `id` from the first source that serves bytes hashing to it, and keeps it.
pub(crate) async fn copy_one(
    store: &Arc<ChunkStore>,
    peers: &Arc<ChannelPool>,
    sources: &[String],
    id: ChunkId,
) -> CopyChunkResult {
    let result = |outcome: CopyOutcome, detail: String, bytes: u64| CopyChunkResult {
        chunk_id: id.to_string(),
        outcome: outcome as i32,
        detail,
        bytes,
    };
    let present = blocking(store, move |s| {
        Ok(s.has(&id) && s.verify(&id).is_ok() && s.touch_if_present(&id))
    })
    .await;
    if matches!(present, Ok(true)) {
        return result(CopyOutcome::AlreadyPresent, String::new(), 0);
    }
    let mut errors = Vec::new();
    for source in sources {
        let fetched = fetch_reserving(peers, source, id, Some(&store.memory.incoming)).await;
        let (bytes, memory) = match fetched {
            Ok((pieces, memory)) => (pieces.concat(), memory),
            Err(e) => {
                errors.push(format!("{source}: {e}"));
                continue;
            }
        };
        let len = bytes.len() as u64;
        // `put` hashes the bytes (off the async workers) and refuses a mismatch.
        let keeper = store.clone();
        let stored = tokio::task::spawn_blocking(move || keeper.put(&id, &bytes)).await;
        drop(memory);
        match stored {
            Ok(Ok(_)) => {
                store.copied_in_chunks.fetch_add(1, Ordering::Relaxed);
                store.copied_in_bytes.fetch_add(len, Ordering::Relaxed);
                return result(CopyOutcome::Copied, source.clone(), len);
            }
            Ok(Err(e @ ChunkError::Mismatch { .. })) => errors.push(format!("{source}: {e}")),
            // Our own disk refused it: another source would not help.
            Ok(Err(e)) => return result(CopyOutcome::Failed, format!("storing: {e}"), 0),
            Err(e) => return result(CopyOutcome::Failed, format!("storing: {e}"), 0),
        }
    }
    result(CopyOutcome::Failed, errors.join("; "), 0)
}

/// The whole of chunk `id` from the agent at `addr`, as the pieces it arrived in (slices
/// of the receive buffers, not copied); the caller verifies it. For clients, whose memory
/// is their own.
pub async fn fetch(
    peers: &ChannelPool,
    addr: &str,
    id: ChunkId,
) -> Result<Vec<bytes::Bytes>, String> {
    fetch_reserving(peers, addr, id, None)
        .await
        .map(|(pieces, _)| pieces)
}

/// [`fetch`], holding a reservation of `memory` for the bytes (taken when the first message
/// announces the size, before they are buffered) until the caller drops it.
async fn fetch_reserving(
    peers: &ChannelPool,
    addr: &str,
    id: ChunkId,
    memory: Option<&super::MemoryBudget>,
) -> Result<(Vec<bytes::Bytes>, Option<tokio::sync::OwnedSemaphorePermit>), String> {
    let channel = peers.get(addr).map_err(|e| e.to_string())?;
    let mut client = transport::chunk_client(channel);
    let mut stream = client
        .get_chunk(GetChunkRequest {
            chunk_id: id.to_string(),
            offset: 0,
            length: 0,
        })
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut pieces = Vec::new();
    // The size the first message announces bounds the whole stream (and what was reserved).
    let (mut received, mut held, mut announced) = (0usize, None, None::<u64>);
    while let Some(reply) = stream
        .message()
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
    {
        let size = *announced.get_or_insert(reply.chunk_size);
        if size > MAX_CHUNK_BYTES as u64
            || reply.chunk_size != size
            || received + reply.data.len() > size as usize
        {
            return Err(format!(
                "the peer sent more than the chunk's {size} bytes, or changed its size"
            ));
        }
        // Pieces are kept as they came: their number is bounded like their bytes (a peer
        // sends full messages; a stream of tiny ones would cost more than the chunk).
        if pieces.len() > (size as usize).div_ceil(CHUNK_DATA_PER_MESSAGE) + 1 {
            return Err(format!(
                "the peer split the chunk's {size} bytes into more than {} messages",
                pieces.len()
            ));
        }
        if pieces.is_empty() {
            if let Some(memory) = memory {
                let size = size as usize;
                held = Some(
                    memory
                        .reserve(size, &format!("copying chunk {id}"))
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        received += reply.data.len();
        pieces.push(reply.data);
    }
    Ok((pieces, held))
}

/// The chunk id `pieces` hash to, taken together.
pub fn id_of_pieces(pieces: &[bytes::Bytes]) -> ChunkId {
    let mut h = blake3::Hasher::new();
    for p in pieces {
        h.update(p);
    }
    ChunkId::from_hash(h.finalize())
}

/// Stores `bytes` as chunk `id` on the agent of `node` at `addr` (only that node's agent
/// may answer), streamed in [`CHUNK_DATA_PER_MESSAGE`] pieces; true when the agent
/// already had it. Clients use it.
pub async fn push(
    peers: &ChannelPool,
    node: &str,
    addr: &str,
    id: ChunkId,
    bytes: bytes::Bytes,
) -> Result<bool, Status> {
    let channel = peers
        .get_node(addr, node)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut client = transport::chunk_client(channel);
    let len = bytes.len();
    let starts: Vec<usize> = if len == 0 {
        vec![0]
    } else {
        (0..len).step_by(CHUNK_DATA_PER_MESSAGE).collect()
    };
    let messages = futures::stream::iter(starts).map(move |start| {
        let end = (start + CHUNK_DATA_PER_MESSAGE).min(len);
        let first = start == 0;
        PutChunkRequest {
            chunk_id: if first { id.to_string() } else { String::new() },
            size: if first { len as u64 } else { 0 },
            data: bytes.slice(start..end),
        }
    });
    Ok(client
        .put_chunk(messages)
        .await?
        .into_inner()
        .already_present)
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
