//! The leader's failure detector: pure, with time passed in (milliseconds of a monotonic
//! clock), so it is unit-testable and simulatable.
//!
//! Heartbeats update `last_seen` in memory only. `tick` turns silence into transitions:
//! ready -> suspect after `suspect_after`, -> down after `down_after`. A heartbeat from a
//! suspect or down node makes it ready again. A newly elected leader calls
//! `grace` so that every node gets a fresh period instead of being declared down for the
//! time the previous leader was the one receiving heartbeats. Transitions are proposals:
//! the caller commits them through Raft and reports back with `committed`.

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

/// A health change to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub node: String,
    pub to: NodeHealth,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Detector {
    config: LivenessConfig,
    last_seen: BTreeMap<String, u64>,
    /// Health as committed (or proposed and not yet contradicted).
    health: BTreeMap<String, NodeHealth>,
}

impl Detector {
    pub fn new(config: LivenessConfig) -> Self {
        Detector {
            config,
            ..Default::default()
        }
    }

    /// A new leader: start from the committed health and give every node a fresh period.
    pub fn grace<'a>(&mut self, now: u64, nodes: impl IntoIterator<Item = (&'a str, NodeHealth)>) {
        self.last_seen.clear();
        self.health.clear();
        for (id, h) in nodes {
            self.last_seen.insert(id.to_string(), now);
            self.health.insert(id.to_string(), h);
        }
    }

    /// A heartbeat from `node`; returns the transition to ready if it was not.
    pub fn heartbeat(&mut self, node: &str, now: u64) -> Option<Transition> {
        self.last_seen.insert(node.to_string(), now);
        let h = self
            .health
            .entry(node.to_string())
            .or_insert(NodeHealth::Ready);
        if *h == NodeHealth::Ready {
            return None;
        }
        let reason = format!("heartbeat received while {}", h.name());
        *h = NodeHealth::Ready;
        Some(Transition {
            node: node.to_string(),
            to: NodeHealth::Ready,
            reason,
        })
    }

    /// Transitions due at `now`.
    pub fn tick(&mut self, now: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        for (node, seen) in &self.last_seen {
            let silent = now.saturating_sub(*seen);
            let want = if silent >= self.config.down_after_ms {
                NodeHealth::Down
            } else if silent >= self.config.suspect_after_ms {
                NodeHealth::Suspect
            } else {
                continue;
            };
            let h = self.health.entry(node.clone()).or_insert(NodeHealth::Ready);
            let worse = matches!(
                (*h, want),
                (NodeHealth::Ready, _) | (NodeHealth::Suspect, NodeHealth::Down)
            );
            if worse {
                *h = want;
                out.push(Transition {
                    node: node.clone(),
                    to: want,
                    reason: format!("no heartbeat for {silent} ms"),
                });
            }
        }
        out
    }

    /// Records the committed health of `node` (also for changes made elsewhere).
    pub fn committed(&mut self, node: &str, health: NodeHealth) {
        self.health.insert(node.to_string(), health);
    }

    /// Forgets a node (deregistered).
    pub fn forget(&mut self, node: &str) {
        self.last_seen.remove(node);
        self.health.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det() -> Detector {
        Detector::new(LivenessConfig::default())
    }

    #[test]
    fn silence_makes_suspect_then_down_and_a_heartbeat_heals() {
        let mut d = det();
        assert_eq!(d.heartbeat("a", 0), None);
        assert!(d.tick(1_999).is_empty());
        let t = d.tick(2_000);
        assert_eq!(
            (t[0].to, t[0].reason.as_str()),
            (NodeHealth::Suspect, "no heartbeat for 2000 ms")
        );
        assert!(d.tick(3_000).is_empty(), "no repeated transition");
        assert_eq!(d.tick(5_000)[0].to, NodeHealth::Down);
        assert!(d.tick(9_000).is_empty());
        let back = d.heartbeat("a", 9_100).expect("back to ready");
        assert_eq!(back.to, NodeHealth::Ready);
        assert!(back.reason.contains("while down"));
        assert!(d.tick(9_500).is_empty());
    }

    #[test]
    fn a_one_second_pause_is_not_a_failure() {
        let mut d = det();
        for t in (0..10_000).step_by(1_000) {
            if t != 4_000 {
                d.heartbeat("a", t);
            }
            assert!(d.tick(t + 999).is_empty(), "false alarm at {t}");
        }
    }

    #[test]
    fn a_new_leader_gives_grace_instead_of_mass_failure() {
        let mut d = det();
        d.heartbeat("a", 0);
        d.heartbeat("b", 0);
        // Leadership moves; the new leader starts at t=60s with an empty memory.
        let mut fresh = det();
        fresh.grace(60_000, [("a", NodeHealth::Ready), ("b", NodeHealth::Down)]);
        assert!(fresh.tick(61_000).is_empty());
        assert_eq!(
            fresh.heartbeat("b", 61_000).map(|t| t.to),
            Some(NodeHealth::Ready)
        );
        let t = fresh.tick(62_000);
        assert_eq!(t.len(), 1, "only the silent node: {t:?}");
        assert_eq!((t[0].node.as_str(), t[0].to), ("a", NodeHealth::Suspect));
    }
}
