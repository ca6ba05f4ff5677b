//! Where chunks are: the leader's in-memory record of which agent holds which chunk.
//!
//! The Raft state holds no record per replica: placement is computed from the chunk id and
//! the layout (`steward_core::objects::placement`), and this tracker keeps what agents
//! showed they hold: replicas verified when a version commits (the leader asks each agent
//! with `HasChunks`), and what agents report (`AgentControl.ReportChunks`): a full list
//! when the leader has none of theirs (a new leader, a new node; asked for in the heartbeat
//! reply), then the changes. A new leader starts empty and learns again; until then reads
//! fall back to the placement and `fsck` says its view is incomplete.
//!
//! Memory: node ids are interned (a `u16` per replica), so a million chunks at three
//! replicas cost about 80 MB.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use steward_core::chunk::ChunkId;

#[derive(Default)]
struct Inner {
    nodes: Vec<String>,
    index: HashMap<String, u16>,
    holders: HashMap<ChunkId, Vec<u16>>,
    /// Nodes whose full list this leader holds.
    complete: HashSet<u16>,
    /// Full lists being received: node -> (report id, chunks so far).
    staging: HashMap<u16, (u64, Vec<ChunkId>)>,
    /// Chunks with a replica found rotten, and how many times.
    corrupt: HashMap<ChunkId, u32>,
    /// Chunks of puts planned here: when last planned, and by how many puts not yet
    /// committed (garbage collection leaves them alone).
    planned: HashMap<ChunkId, (std::time::Instant, u32)>,
}

/// How long a planned put's chunks are protected from garbage collection on this leader
/// (agents also keep every chunk younger than their grace period).
pub const PLAN_PROTECTION: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most chunk ids remembered from plans.
pub const MAX_PLANNED: usize = 1_000_000;
/// Most ids one node's full list may hold while its parts arrive (a larger store is
/// refused, and the leader keeps what it knew).
pub const MAX_FULL_REPORT_IDS: usize = 8_000_000;
/// Distinct nodes this leader can track (ids are `u16`); past it reports are refused
/// until a new leader starts afresh.
pub const MAX_TRACKED_NODES: usize = u16::MAX as usize;

impl Inner {
    fn intern(&mut self, node: &str) -> Result<u16, String> {
        if let Some(i) = self.index.get(node) {
            return Ok(*i);
        }
        let i = u16::try_from(self.nodes.len())
            .ok()
            .filter(|i| usize::from(*i) < MAX_TRACKED_NODES)
            .ok_or_else(|| {
                format!("this leader tracks {MAX_TRACKED_NODES} nodes, its limit; a new leader starts afresh")
            })?;
        self.nodes.push(node.to_string());
        self.index.insert(node.to_string(), i);
        Ok(i)
    }
}

#[derive(Default)]
pub struct ReplicaTracker {
    inner: Mutex<Inner>,
}

impl ReplicaTracker {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` holds `chunks`.
    pub fn record(
        &self,
        node: &str,
        chunks: impl IntoIterator<Item = ChunkId>,
    ) -> Result<(), String> {
        let mut inner = self.inner();
        let n = inner.intern(node)?;
        for c in chunks {
            let h = inner.holders.entry(c).or_default();
            if !h.contains(&n) {
                h.push(n);
            }
        }
        Ok(())
    }

    /// `node` no longer holds `chunks`.
    pub fn remove(&self, node: &str, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut inner = self.inner();
        let Some(&n) = inner.index.get(node) else {
            return;
        };
        for c in chunks {
            if let Some(h) = inner.holders.get_mut(&c) {
                h.retain(|x| *x != n);
                if h.is_empty() {
                    inner.holders.remove(&c);
                }
            }
        }
    }

    /// A part of `node`'s full list; on the `last` part the node's record is replaced by
    /// the whole list. A part of another report id starts over.
    pub fn full_report(
        &self,
        node: &str,
        report_id: u64,
        chunks: Vec<ChunkId>,
        last: bool,
    ) -> Result<(), String> {
        let mut inner = self.inner();
        let n = inner.intern(node)?;
        let entry = inner.staging.entry(n).or_insert((report_id, Vec::new()));
        if entry.0 != report_id {
            *entry = (report_id, Vec::new());
        }
        if entry.1.len() + chunks.len() > MAX_FULL_REPORT_IDS {
            inner.staging.remove(&n);
            return Err(format!(
                "a full chunk list over {MAX_FULL_REPORT_IDS} ids, the leader's limit per node"
            ));
        }
        entry.1.extend(chunks);
        if !last {
            return Ok(());
        }
        let (_, list) = inner.staging.remove(&n).unwrap_or_default();
        let list: HashSet<ChunkId> = list.into_iter().collect();
        inner.holders.retain(|c, h| {
            if !list.contains(c) {
                h.retain(|x| *x != n);
            }
            !h.is_empty()
        });
        for c in list {
            let h = inner.holders.entry(c).or_default();
            if !h.contains(&n) {
                h.push(n);
            }
        }
        inner.complete.insert(n);
        Ok(())
    }

    /// Whether this leader holds `node`'s full list.
    pub fn has_full_report(&self, node: &str) -> bool {
        let inner = self.inner();
        inner
            .index
            .get(node)
            .is_some_and(|n| inner.complete.contains(n))
    }

    /// Forgets that `node`'s list is complete (its agent restarted, or it was removed):
    /// the next heartbeat asks for a full list again.
    pub fn needs_full_report(&self, node: &str) {
        let mut inner = self.inner();
        if let Some(n) = inner.index.get(node).copied() {
            inner.complete.remove(&n);
        }
    }

    /// `node` found its replica of each of `chunks` rotten (and quarantined it).
    pub fn corrupt(&self, node: &str, chunks: impl IntoIterator<Item = ChunkId>) {
        let chunks: Vec<ChunkId> = chunks.into_iter().collect();
        {
            let mut inner = self.inner();
            for c in &chunks {
                *inner.corrupt.entry(*c).or_default() += 1;
            }
        }
        self.remove(node, chunks);
    }

    /// A put was planned with `chunks`: they are not garbage until it commits or for
    /// [`PLAN_PROTECTION`]. Each put counts: one committing does not lift the protection
    /// another put in flight with shared chunks still needs. Refused (nothing recorded)
    /// when the record would pass [`MAX_PLANNED`] even after forgetting expired plans.
    pub fn planned(&self, chunks: impl IntoIterator<Item = ChunkId>) -> Result<(), String> {
        let chunks: HashSet<ChunkId> = chunks.into_iter().collect();
        let mut inner = self.inner();
        let now = std::time::Instant::now();
        if inner.planned.len() + chunks.len() > MAX_PLANNED {
            inner
                .planned
                .retain(|_, (at, _)| now.duration_since(*at) < PLAN_PROTECTION);
        }
        let new = chunks
            .iter()
            .filter(|c| !inner.planned.contains_key(c))
            .count();
        if inner.planned.len() + new > MAX_PLANNED {
            return Err(format!(
                "the leader protects the chunks of {} planned puts' chunks, its limit is {MAX_PLANNED}; retry once puts in flight commit",
                inner.planned.len()
            ));
        }
        for c in chunks {
            let entry = inner.planned.entry(c).or_insert((now, 0));
            *entry = (now, entry.1.saturating_add(1));
        }
        Ok(())
    }

    /// A put committed (or gave up): its chunks need its plan's protection no longer (a
    /// committed version protects them while it references them); other plans naming
    /// them still protect them.
    pub fn unplanned(&self, chunks: impl IntoIterator<Item = ChunkId>) {
        let chunks: HashSet<ChunkId> = chunks.into_iter().collect();
        let mut inner = self.inner();
        for c in chunks {
            if let Some((_, n)) = inner.planned.get_mut(&c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.planned.remove(&c);
                }
            }
        }
    }

    /// Whether a put planned here in the last [`PLAN_PROTECTION`] and not yet committed
    /// names `chunk`.
    pub fn recently_planned(&self, chunk: &ChunkId) -> bool {
        self.inner()
            .planned
            .get(chunk)
            .is_some_and(|(at, _)| at.elapsed() < PLAN_PROTECTION)
    }

    /// Chunks with a replica found rotten since this leader started.
    pub fn corrupt_chunks(&self) -> HashMap<ChunkId, u32> {
        self.inner().corrupt.clone()
    }

    /// Every chunk's holders, as node ids (a copy, for one repair pass or `fsck`).
    pub fn snapshot(&self) -> (Vec<String>, HashMap<ChunkId, Vec<u16>>) {
        let inner = self.inner();
        (inner.nodes.clone(), inner.holders.clone())
    }

    /// The nodes known to hold `chunk`.
    pub fn holders(&self, chunk: &ChunkId) -> Vec<String> {
        let inner = self.inner();
        inner
            .holders
            .get(chunk)
            .map(|h| h.iter().map(|i| inner.nodes[*i as usize].clone()).collect())
            .unwrap_or_default()
    }

    /// Bytes of `chunks` (id, size) each node is known to hold, under one lock.
    pub fn bytes_held<'a>(
        &self,
        chunks: impl IntoIterator<Item = (&'a ChunkId, u32)>,
    ) -> HashMap<String, u64> {
        let inner = self.inner();
        let mut per_node = vec![0u64; inner.nodes.len()];
        for (id, size) in chunks {
            for h in inner.holders.get(id).into_iter().flatten() {
                per_node[*h as usize] += u64::from(size);
            }
        }
        per_node
            .into_iter()
            .enumerate()
            .filter(|(_, b)| *b > 0)
            .map(|(i, b)| (inner.nodes[i].clone(), b))
            .collect()
    }

    /// Chunks with at least one known holder.
    pub fn len(&self) -> usize {
        self.inner().holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_recorded_once_and_removed() {
        let t = ReplicaTracker::default();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        t.record("n1", [a, b]).expect("tracked");
        t.record("n2", [a]).expect("tracked");
        t.record("n1", [a]).expect("tracked");
        assert_eq!(t.holders(&a), vec!["n1".to_string(), "n2".to_string()]);
        t.remove("n1", [a, b]);
        assert_eq!(t.holders(&a), vec!["n2".to_string()]);
        assert!(t.holders(&b).is_empty());
        assert_eq!(t.len(), 1);
        t.remove("unknown", [a]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_report_replaces_what_was_known_of_the_node() {
        let t = ReplicaTracker::default();
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        t.record("n1", [a, b]).expect("tracked");
        t.record("n2", [a]).expect("tracked");
        assert!(!t.has_full_report("n1"));
        t.full_report("n1", 7, vec![b], false).expect("tracked");
        // A part of another report starts over.
        t.full_report("n1", 8, vec![c], false).expect("tracked");
        assert!(!t.has_full_report("n1"), "not before the last part");
        t.full_report("n1", 8, vec![b], true).expect("tracked");
        assert!(t.has_full_report("n1"));
        assert_eq!(t.holders(&a), vec!["n2".to_string()], "n1 no longer has a");
        assert_eq!(t.holders(&b), vec!["n1".to_string()]);
        assert_eq!(t.holders(&c), vec!["n1".to_string()]);
        t.corrupt("n1", [b]);
        assert!(t.holders(&b).is_empty());
        assert_eq!(t.corrupt_chunks().get(&b), Some(&1));
        t.needs_full_report("n1");
        assert!(!t.has_full_report("n1"));
    }

    #[test]
    fn planned_chunks_are_protected_until_their_put_commits() {
        let t = ReplicaTracker::default();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        t.planned([a, b]).expect("room");
        assert!(t.recently_planned(&a) && t.recently_planned(&b));
        // A second put in flight shares `b`: the first committing leaves it protected.
        t.planned([b, b]).expect("room");
        t.unplanned([a, b]);
        assert!(!t.recently_planned(&a));
        assert!(t.recently_planned(&b));
        t.unplanned([b]);
        assert!(!t.recently_planned(&b));
    }

    #[test]
    fn nodes_past_the_tracking_limit_are_refused_not_aliased() {
        let t = ReplicaTracker::default();
        let a = ChunkId::of(b"a");
        for i in 0..MAX_TRACKED_NODES {
            t.record(&format!("n{i}"), []).expect("tracked");
        }
        assert!(t.record("one-too-many", [a]).is_err());
        assert!(t.full_report("one-too-many", 1, vec![a], true).is_err());
        t.record("n0", [a]).expect("a known node still reports");
        assert_eq!(t.holders(&a), vec!["n0".to_string()]);
    }
}
