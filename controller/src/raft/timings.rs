//! Where a write's time goes, as Prometheus histograms on `/metrics` (etcd's
//! `wal_fsync_duration_seconds` and `peer_round_trip_time_seconds` are the model).
//!
//! A write on the leader: the proposer hands one log entry to openraft
//! (`steward_raft_proposal_seconds` runs from there to the applied result) -> the leader's
//! synced log append (`steward_raft_log_append_seconds`) -> AppendEntries to each follower
//! (`steward_raft_peer_append_seconds{peer}`: the round trip, which holds the follower's own
//! synced append) -> commit -> apply (`steward_raft_apply_seconds`). openraft 0.9 starts
//! replication only after the leader's own append is synced, so on a lone write
//! `proposal ≈ log_append + peer_append + apply + openraft's hand-offs`. `make bench-raft`
//! prints these means next to its client-side figures.
//!
//! Observing takes a short lock per observation (prometheus-client's histogram), once per
//! append, RPC, apply call or entry, never per command; the histograms live as long as the
//! controller.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::typ::NodeId;

/// Bucket bounds in seconds: 50 µs doubling up to about 3.3 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17)
}

fn seconds_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The follower's controller id.
    pub peer: u64,
}

/// The write path's stage durations on this controller.
pub struct WriteTimings {
    /// One synced append of entries to the Raft log (leader and followers).
    pub log_append: Histogram,
    /// One successful AppendEntries round trip with entries in it, by follower (encoding the
    /// request and decoding the reply included).
    pub peer_append: Family<PeerLabel, Histogram>,
    /// One call applying committed entries to the state machine, once it holds the state
    /// lock.
    pub apply: Histogram,
    /// One proposed entry, from handing it to openraft to its applied result (leader).
    pub proposal: Histogram,
    /// Commands carried by each proposed entry (how well concurrent writes batch).
    pub entry_commands: Histogram,
}

impl Default for WriteTimings {
    fn default() -> Self {
        WriteTimings {
            log_append: seconds_histogram(),
            peer_append: Family::new_with_constructor(seconds_histogram),
            apply: seconds_histogram(),
            proposal: seconds_histogram(),
            entry_commands: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
            ),
        }
    }
}

impl WriteTimings {
    pub fn observe_peer_append(&self, peer: NodeId, elapsed: std::time::Duration) {
        self.peer_append
            .get_or_create(&PeerLabel { peer })
            .observe(elapsed.as_secs_f64());
    }

    /// Adds the histograms to a scrape's registry (they are shared, not copied).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "steward_raft_log_append_seconds",
            "Synced appends to this controller's Raft log (fsync included)",
            self.log_append.clone(),
        );
        reg.register(
            "steward_raft_peer_append_seconds",
            "AppendEntries round trips with entries, by follower (its synced append included)",
            self.peer_append.clone(),
        );
        reg.register(
            "steward_raft_apply_seconds",
            "Calls applying committed entries to the state machine",
            self.apply.clone(),
        );
        reg.register(
            "steward_raft_proposal_seconds",
            "Proposed entries, from openraft's client_write to the applied result (leader)",
            self.proposal.clone(),
        );
        reg.register(
            "steward_raft_entry_commands",
            "Commands per proposed log entry (batching of concurrent writes)",
            self.entry_commands.clone(),
        );
    }
}
