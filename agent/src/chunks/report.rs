//! Telling the leader what the chunk store holds (`AgentControl.ReportChunks`): a full list
//! when the leader asks for one in a heartbeat reply (it has none of this node: a new
//! leader, a new node) or when changes were lost, and otherwise the changes since the last
//! report, after each acknowledged heartbeat.
//!
//! A full list is sent by its own task (listing a million chunks takes seconds; heartbeats
//! must not wait). While it is in flight, changes are held back and sent after it, so the
//! list, which replaces what the leader knew, never undoes a later change.
//!
//! Garbage collection rides on the same link: every `gc.interval`, a task lists the chunks
//! older than `gc.grace` (a put in progress is younger), asks the leader which of them no
//! version references (`ConfirmGarbage`; the leader confirms its leadership with a quorum
//! and leaves out chunks of puts it planned lately), and removes those. Nothing is removed
//! without the leader's answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use steward_core::chunk::ChunkId;
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::ReportChunksRequest;
use tonic::transport::Channel;

use super::{Changes, ChunkStore};

/// Garbage collection of unreferenced chunks.
#[derive(Debug, Clone, Copy)]
pub struct GcConfig {
    /// Only chunks written at least this long ago are candidates.
    pub grace: std::time::Duration,
    /// Time between passes.
    pub interval: std::time::Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            grace: std::time::Duration::from_secs(3600),
            interval: std::time::Duration::from_secs(600),
        }
    }
}

/// Ids per garbage confirmation (the leader's limit).
pub const IDS_PER_CONFIRMATION: usize = 10_000;

/// Ids per report message (32 bytes each: under 2 MiB).
pub const IDS_PER_REPORT: usize = 50_000;

pub struct Reporter {
    store: Arc<ChunkStore>,
    node_id: String,
    full_in_flight: Arc<AtomicBool>,
    need_full: Arc<AtomicBool>,
    gc: GcConfig,
    gc_running: Arc<AtomicBool>,
    next_gc: std::sync::Mutex<std::time::Instant>,
}

fn raw(ids: &[ChunkId]) -> Vec<Vec<u8>> {
    ids.iter().map(|i| i.as_bytes().to_vec()).collect()
}

impl Reporter {
    pub fn new(store: Arc<ChunkStore>, node_id: String, gc: GcConfig) -> Self {
        Reporter {
            store,
            node_id,
            full_in_flight: Arc::new(AtomicBool::new(false)),
            need_full: Arc::new(AtomicBool::new(true)),
            gc,
            gc_running: Arc::new(AtomicBool::new(false)),
            next_gc: std::sync::Mutex::new(std::time::Instant::now() + gc.interval),
        }
    }

    /// Starts a garbage collection pass when one is due and none runs.
    fn maybe_collect(&self, client: &AgentControlClient<Channel>) {
        {
            let mut next = self.next_gc.lock().unwrap_or_else(|p| p.into_inner());
            if std::time::Instant::now() < *next || self.gc_running.load(Ordering::Acquire) {
                return;
            }
            *next = std::time::Instant::now() + self.gc.interval;
        }
        self.gc_running.store(true, Ordering::Release);
        let (store, node, client, grace, running) = (
            self.store.clone(),
            self.node_id.clone(),
            client.clone(),
            self.gc.grace,
            self.gc_running.clone(),
        );
        tokio::spawn(async move {
            match collect(store, node, client, grace).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "garbage chunks removed"),
                Err(e) => tracing::debug!(error = %e, "garbage collection pass failed"),
            }
            running.store(false, Ordering::Release);
        });
    }

    /// After an acknowledged heartbeat: a full list if the leader asked (`asked_full`) or
    /// one is owed, else the pending changes.
    pub async fn after_heartbeat(&self, client: &AgentControlClient<Channel>, asked_full: bool) {
        self.maybe_collect(client);
        if asked_full {
            self.need_full.store(true, Ordering::Relaxed);
        }
        if self.full_in_flight.load(Ordering::Acquire) {
            return;
        }
        if self.need_full.swap(false, Ordering::Relaxed) {
            self.full_in_flight.store(true, Ordering::Release);
            let (store, node, client) = (self.store.clone(), self.node_id.clone(), client.clone());
            let (in_flight, need_full) = (self.full_in_flight.clone(), self.need_full.clone());
            tokio::spawn(async move {
                if let Err(e) = send_full(store, node, client).await {
                    tracing::debug!(error = %e, "full chunk report failed; will retry");
                    need_full.store(true, Ordering::Relaxed);
                }
                in_flight.store(false, Ordering::Release);
            });
            return;
        }
        let changes = self.store.take_changes();
        if changes.overflowed {
            self.need_full.store(true, Ordering::Relaxed);
            return;
        }
        if changes.is_empty() {
            return;
        }
        if let Err(e) = send_changes(&self.node_id, client.clone(), changes).await {
            tracing::debug!(error = %e, "chunk change report failed; a full list follows");
            self.need_full.store(true, Ordering::Relaxed);
        }
    }
}

/// One garbage collection pass; returns the chunks removed.
async fn collect(
    store: Arc<ChunkStore>,
    node_id: String,
    mut client: AgentControlClient<Channel>,
    grace: std::time::Duration,
) -> Result<u64, String> {
    // Candidates were written before `cutoff`; one touched since (a put relying on it)
    // is kept even if the leader names it garbage.
    let cutoff = std::time::SystemTime::now() - grace;
    let candidates = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let now = cutoff + grace;
            store.list().map(|ids| {
                ids.into_iter()
                    .filter(|id| {
                        store
                            .written_at(id)
                            .and_then(|t| now.duration_since(t).ok())
                            .is_some_and(|age| age >= grace)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let mut removed = 0u64;
    for batch in candidates.chunks(IDS_PER_CONFIRMATION) {
        let garbage = client
            .confirm_garbage(steward_proto::v1::ConfirmGarbageRequest {
                node_id: node_id.clone(),
                chunk_ids: raw(batch),
            })
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner()
            .garbage;
        let ids: Vec<ChunkId> = garbage
            .iter()
            .filter_map(|b| steward_proto::conv::chunk_id_from_pb(b).ok())
            // Only what this agent asked about.
            .filter(|id| batch.contains(id))
            .collect();
        let store = store.clone();
        removed += tokio::task::spawn_blocking(move || {
            ids.iter()
                .filter(|id| store.remove_if_older(id, cutoff).unwrap_or(false))
                .count() as u64
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    store.gc_removed.fetch_add(removed, Ordering::Relaxed);
    store.last_gc_unix_ms.store(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        Ordering::Relaxed,
    );
    Ok(removed)
}

async fn send_full(
    store: Arc<ChunkStore>,
    node_id: String,
    mut client: AgentControlClient<Channel>,
) -> Result<(), String> {
    // What changed before the listing is in the listing.
    let _ = store.take_changes();
    let ids = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let report_id = rand::random::<u64>();
    let parts: Vec<&[ChunkId]> = if ids.is_empty() {
        vec![&[]]
    } else {
        ids.chunks(IDS_PER_REPORT).collect()
    };
    let n = parts.len();
    for (i, part) in parts.into_iter().enumerate() {
        client
            .report_chunks(ReportChunksRequest {
                node_id: node_id.clone(),
                full: true,
                report_id,
                last: i + 1 == n,
                added: raw(part),
                removed: Vec::new(),
                corrupt: Vec::new(),
            })
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    }
    tracing::debug!(chunks = ids.len(), "full chunk list reported");
    Ok(())
}

async fn send_changes(
    node_id: &str,
    mut client: AgentControlClient<Channel>,
    changes: Changes,
) -> Result<(), String> {
    let parts = changes
        .added
        .len()
        .max(changes.removed.len())
        .div_ceil(IDS_PER_REPORT)
        .max(1);
    for i in 0..parts {
        let slice = |v: &[ChunkId]| {
            let start = (i * IDS_PER_REPORT).min(v.len());
            let end = ((i + 1) * IDS_PER_REPORT).min(v.len());
            raw(&v[start..end])
        };
        client
            .report_chunks(ReportChunksRequest {
                node_id: node_id.to_string(),
                full: false,
                report_id: 0,
                last: i + 1 == parts,
                added: slice(&changes.added),
                removed: slice(&changes.removed),
                corrupt: if i == 0 {
                    raw(&changes.corrupt)
                } else {
                    Vec::new()
                },
            })
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    }
    Ok(())
}
