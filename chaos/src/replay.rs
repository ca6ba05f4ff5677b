//! Replays a stopped controller's Raft log, from its RocksDB, through the state machine's
//! own apply, and turns every allocation's hold and release of GPU capacity into
//! [`Grant`]s for [`crate::check::placement::check_grants`]: "no GPU over-committed at any
//! applied index" is then checked on what the cluster committed, not on what it reported.
//!
//! The replay starts at the newest stored snapshot (its allocations are the first
//! grants) and runs to the committed index the controller recorded. An allocation holds
//! its GPUs from the entry that made it until the entry that made it terminal (or removed
//! it), whatever the state machine's own capacity accounting says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::RaftLogId;
use steward_controller::raft::store::{open_stores, Db};
use steward_controller::raft::timings::WriteTimings;
use steward_controller::raft::typ::EntryPayload;
use steward_core::ClusterState;

use crate::check::placement::Grant;

/// What one controller's log gave.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// The snapshot's index the replay started from (0: none).
    pub from_index: u64,
    /// The last committed index replayed.
    pub to_index: u64,
    pub grants: Vec<Grant>,
}

/// Opens the stopped controller's store under `data_dir` (`<data_dir>/raft`) and replays it.
pub async fn replay_data_dir(data_dir: &Path) -> anyhow::Result<Replayed> {
    let raft_dir = data_dir.join("raft");
    let db = Db::open(&raft_dir).with_context(|| format!("opening {}", raft_dir.display()))?;
    let (mut log, sm) = open_stores(&db, Arc::new(WriteTimings::default())).await?;
    let applied = sm.view().copy();
    let from = applied.last_applied.map_or(0, |l| l.index);
    let committed = log
        .read_committed()
        .await
        .map_err(|e| anyhow::anyhow!("reading the committed index: {e}"))?
        .map_or(from, |c| c.index);
    let mut replay = Replay::new(applied.state, from);
    if committed > from {
        let entries = log
            .try_get_log_entries(from + 1..=committed)
            .await
            .map_err(|e| anyhow::anyhow!("reading log entries {}..={committed}: {e}", from + 1))?;
        // A hole would let the replay skip what it must check.
        let expected = committed - from;
        if entries.len() as u64 != expected
            || entries.first().map(|e| e.get_log_id().index) != Some(from + 1)
        {
            anyhow::bail!(
                "the log holds {} of the {expected} entries {}..={committed}",
                entries.len(),
                from + 1
            );
        }
        for entry in entries {
            let index = entry.get_log_id().index;
            match entry.payload {
                EntryPayload::Blank => replay.state.abandon_restore(),
                EntryPayload::Normal(command) => {
                    replay.state.apply(command);
                }
                EntryPayload::Membership(_) => {}
            }
            replay.diff(index);
        }
    }
    Ok(Replayed {
        from_index: from,
        to_index: committed.max(from),
        grants: replay.grants,
    })
}

/// The state as replayed so far, and which allocations hold GPUs in it.
struct Replay {
    state: ClusterState,
    holding: BTreeSet<String>,
    grants: Vec<Grant>,
}

impl Replay {
    fn new(state: ClusterState, index: u64) -> Self {
        let mut r = Replay {
            state,
            holding: BTreeSet::new(),
            grants: Vec::new(),
        };
        r.diff(index);
        r
    }

    /// Grants for what changed at `index`: allocations that began or stopped holding.
    fn diff(&mut self, index: u64) {
        let now: BTreeMap<&String, &steward_core::jobs::Allocation> = self
            .state
            .allocs
            .iter()
            .filter(|(_, a)| !a.state.is_terminal() && !a.gpus.is_empty())
            .collect();
        let released: Vec<String> = self
            .holding
            .iter()
            .filter(|id| !now.contains_key(id))
            .cloned()
            .collect();
        for alloc in released {
            self.holding.remove(&alloc);
            self.grants.push(Grant::Free { index, alloc });
        }
        for (id, a) in now {
            if self.holding.insert(id.clone()) {
                for gpu in &a.gpus {
                    self.grants.push(Grant::Take {
                        index,
                        alloc: id.clone(),
                        node: a.node.clone(),
                        gpu: gpu.clone(),
                        milli: u32::from(a.gpu_milli),
                    });
                }
            }
        }
    }
}
