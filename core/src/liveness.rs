//! The leader's failure detector: pure, with time passed in (milliseconds of a monotonic
//! clock), so it is unit-testable and simulatable.
//!
//! Level-triggered: heartbeats update `last_seen` in memory only, and on every tick
//! [`Detector::reconcile`] compares each node's *committed* health (read from the cluster
//! state, whoever changed it: this detector, an earlier leader, a restore) with what the
//! heartbeats say, and returns the transitions that close the gap, each conditional on the
//! committed health it starts from. Nothing is believed that was not committed, so a
//! transition that failed, was reordered, or was overwritten is simply proposed again on a
//! later tick.
//!
//! What the heartbeats say: heard within `suspect_after` -> ready; silent longer -> suspect;
//! silent `down_after` or more -> down. A down node stays down until it is heard again
//! (not suspect on the way back). A newly elected leader calls [`Detector::grace`], so that
//! every node gets a fresh period instead of being declared down for the time another
//! leader was the one receiving its heartbeats.

use std::collections::BTreeMap;

use crate::node::NodeHealth;

/// Thresholds of the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    pub suspect_after_ms: u64,
    pub down_after_ms: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            suspect_after_ms: 2_000,
            down_after_ms: 5_000,
        }
    }
}

/// A health change to commit: `from` is the committed health it was computed against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub from: NodeHealth,
    pub to: NodeHealth,
    pub reason: String,
}

/// When a node was last heard from, or given a fresh period.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: u64,
    /// A heartbeat, not a fresh period: only a heartbeat makes a node ready.
    heard: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Detector {
    config: LivenessConfig,
    last_seen: BTreeMap<String, Seen>,
}

impl Detector {
    pub fn new(config: LivenessConfig) -> Self {
        Detector {
            config,
            last_seen: BTreeMap::new(),
        }
    }

    /// A new leader: every node's silence is counted from `now` (on the next reconcile).
    pub fn grace(&mut self) {
        self.last_seen.clear();
    }

    /// A heartbeat (or registration) from `node`.
    pub fn heartbeat(&mut self, node: &str, now: u64) {
        self.last_seen.insert(
            node.to_string(),
            Seen {
                at: now,
                heard: true,
            },
        );
    }

    /// Milliseconds since `node` was heard from or given a fresh period, if it was.
    pub fn silence(&self, node: &str, now: u64) -> Option<u64> {
        self.last_seen.get(node).map(|s| now.saturating_sub(s.at))
    }

    /// The health the heartbeats say a node has, given its committed health.
    fn desired(&self, seen: Seen, silent: u64, committed: NodeHealth) -> NodeHealth {
        if silent < self.config.suspect_after_ms {
            // In a fresh period a node keeps its health; a heartbeat makes it ready.
            if seen.heard {
                NodeHealth::Ready
            } else {
                committed
            }
        } else if committed == NodeHealth::Down || silent >= self.config.down_after_ms {
            NodeHealth::Down
        } else {
            NodeHealth::Suspect
        }
    }

    /// The transitions that bring every node's committed health in line with its
    /// heartbeats. A node seen for the first time (new, restored, or after `grace`) gets a
    /// fresh period from `now`. Nodes no longer in the state are forgotten.
    pub fn reconcile<'a>(
        &mut self,
        now: u64,
        committed: impl IntoIterator<Item = (&'a str, NodeHealth)>,
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut present = std::collections::BTreeSet::new();
        for (node, health) in committed {
            present.insert(node);
            let seen = *self.last_seen.entry(node.to_string()).or_insert(Seen {
                at: now,
                heard: false,
            });
            let silent = now.saturating_sub(seen.at);
            let want = self.desired(seen, silent, health);
            if want == health {
                continue;
            }
            let reason = match want {
                NodeHealth::Ready => format!("heartbeat received while {}", health.name()),
                NodeHealth::Suspect | NodeHealth::Down => format!("no heartbeat for {silent} ms"),
            };
            out.push(Transition {
                node: node.to_string(),
                from: health,
                to: want,
                reason,
            });
        }
        // A node that heartbeats before its registration commits stays tracked; one that
        // left the state (removed) and went silent is forgotten.
        let down_after = self.config.down_after_ms;
        self.last_seen.retain(|node, seen| {
            present.contains(node.as_str()) || now.saturating_sub(seen.at) < down_after
        });
        out
    }

    /// Forgets a node (removed from the cluster).
    pub fn forget(&mut self, node: &str) {
        self.last_seen.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeHealth::{Down, Ready, Suspect};

    fn det() -> Detector {
        Detector::new(LivenessConfig::default())
    }

    /// Applies transitions to a committed map the way conditional commands apply.
    fn commit(state: &mut BTreeMap<String, NodeHealth>, ts: &[Transition]) {
        for t in ts {
            if state.get(&t.node) == Some(&t.from) {
                state.insert(t.node.clone(), t.to);
            }
        }
    }

    fn view(state: &BTreeMap<String, NodeHealth>) -> Vec<(&str, NodeHealth)> {
        state.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    #[test]
    fn silence_makes_suspect_then_down_and_a_heartbeat_heals() {
        let mut d = det();
        let mut state: BTreeMap<String, NodeHealth> = [("a".to_string(), Ready)].into();
        d.heartbeat("a", 0);
        assert!(d.reconcile(1_999, view(&state)).is_empty());
        let t = d.reconcile(2_000, view(&state));
        assert_eq!(
            (t[0].from, t[0].to, t[0].reason.as_str()),
            (Ready, Suspect, "no heartbeat for 2000 ms")
        );
        commit(&mut state, &t);
        assert!(d.reconcile(3_000, view(&state)).is_empty(), "no repeat");
        let t = d.reconcile(5_000, view(&state));
        assert_eq!((t[0].from, t[0].to), (Suspect, Down));
        commit(&mut state, &t);
        assert!(d.reconcile(9_000, view(&state)).is_empty());
        d.heartbeat("a", 9_100);
        let t = d.reconcile(9_150, view(&state));
        assert_eq!((t[0].from, t[0].to), (Down, Ready));
        assert!(t[0].reason.contains("while down"));
    }

    /// The race of format 1: "down" proposed on silence and "ready" on the next heartbeat,
    /// committed in the other order. The old detector believed its last proposal (ready)
    /// and never looked again, leaving a heartbeating node down. Reconciling against the
    /// committed state heals it on the next tick.
    #[test]
    fn reordered_commits_are_corrected_on_the_next_tick() {
        let mut d = det();
        let mut state: BTreeMap<String, NodeHealth> = [("a".to_string(), Suspect)].into();
        d.heartbeat("a", 0);
        let to_down = d.reconcile(5_000, view(&state));
        assert_eq!(to_down[0].to, Down);
        d.heartbeat("a", 5_100);
        // The heartbeat's transition is computed against the committed state (suspect),
        // while "down" is still in flight.
        let to_ready = d.reconcile(5_150, view(&state));
        assert_eq!((to_ready[0].from, to_ready[0].to), (Suspect, Ready));
        commit(&mut state, &to_ready);
        commit(&mut state, &to_down); // refused: the node is no longer suspect
        assert_eq!(state["a"], Ready);
        // Unconditional commands would have left it down; even so, the next tick fixes it.
        state.insert("a".into(), Down);
        d.heartbeat("a", 5_300);
        let t = d.reconcile(5_350, view(&state));
        assert_eq!((t[0].from, t[0].to), (Down, Ready));
    }

    #[test]
    fn a_restored_or_new_node_gets_a_fresh_period_and_is_healed() {
        let mut d = det();
        // A restore brings back a live node marked down, and one nobody heard of.
        let mut state: BTreeMap<String, NodeHealth> =
            [("live".to_string(), Down), ("gone".to_string(), Down)].into();
        d.heartbeat("live", 10_000);
        let t = d.reconcile(10_050, view(&state));
        assert_eq!(t.len(), 1, "only the live node changes: {t:?}");
        assert_eq!((t[0].node.as_str(), t[0].to), ("live", Ready));
        commit(&mut state, &t);
        d.heartbeat("live", 12_400);
        assert!(
            d.reconcile(12_500, view(&state)).is_empty(),
            "gone stays down"
        );
    }

    #[test]
    fn a_one_second_pause_is_not_a_failure() {
        let mut d = det();
        let state: BTreeMap<String, NodeHealth> = [("a".to_string(), Ready)].into();
        for t in (0..10_000).step_by(1_000) {
            if t != 4_000 {
                d.heartbeat("a", t);
            }
            assert!(
                d.reconcile(t + 999, view(&state)).is_empty(),
                "false alarm at {t}"
            );
        }
    }

    #[test]
    fn a_new_leader_gives_grace_instead_of_mass_failure() {
        let mut d = det();
        d.heartbeat("a", 0);
        d.heartbeat("b", 0);
        // Leadership moves; the new leader starts at t=60s with an empty memory.
        let mut fresh = det();
        fresh.grace();
        let state: BTreeMap<String, NodeHealth> =
            [("a".to_string(), Ready), ("b".to_string(), Down)].into();
        assert!(fresh.reconcile(60_000, view(&state)).is_empty());
        fresh.heartbeat("b", 61_000);
        let t = fresh.reconcile(61_000, view(&state));
        assert_eq!((t[0].node.as_str(), t[0].to), ("b", Ready));
        let mut state = state;
        commit(&mut state, &t);
        let t = fresh.reconcile(62_000, view(&state));
        assert_eq!(t.len(), 1, "only the silent node: {t:?}");
        assert_eq!((t[0].node.as_str(), t[0].to), ("a", Suspect));
    }
}
