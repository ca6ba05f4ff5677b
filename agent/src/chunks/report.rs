//! Telling the leader what the chunk store holds (`AgentControl.ReportChunks`): a full list
//! when the leader asks for one in a heartbeat reply (it has none of this node: a new
//! leader, a new node) or when changes were lost, and otherwise the changes since the last
//! report, after each acknowledged heartbeat.
//!
//! A full list is sent by its own task (listing a million chunks takes seconds; heartbeats
//! must not wait). While it is in flight, changes are held back and sent after it, so the
//! list, which replaces what the leader knew, never undoes a later change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use steward_core::chunk::ChunkId;
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::ReportChunksRequest;
use tonic::transport::Channel;

use super::{Changes, ChunkStore};

/// Ids per report message (32 bytes each: under 2 MiB).
pub const IDS_PER_REPORT: usize = 50_000;

pub struct Reporter {
    store: Arc<ChunkStore>,
    node_id: String,
    full_in_flight: Arc<AtomicBool>,
    need_full: Arc<AtomicBool>,
}

fn raw(ids: &[ChunkId]) -> Vec<Vec<u8>> {
    ids.iter().map(|i| i.as_bytes().to_vec()).collect()
}

impl Reporter {
    pub fn new(store: Arc<ChunkStore>, node_id: String) -> Self {
        Reporter {
            store,
            node_id,
            full_in_flight: Arc::new(AtomicBool::new(false)),
            need_full: Arc::new(AtomicBool::new(true)),
        }
    }

    /// After an acknowledged heartbeat: a full list if the leader asked (`asked_full`) or
    /// one is owed, else the pending changes.
    pub async fn after_heartbeat(&self, client: &AgentControlClient<Channel>, asked_full: bool) {
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
