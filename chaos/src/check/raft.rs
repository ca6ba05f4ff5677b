//! Raft invariants seen from outside: at most one leader per term (from every
//! controller's reports of who it believed led, and in which term), and controllers
//! that applied the same log converge to one state digest.

use std::collections::BTreeMap;

/// A controller's report: in `term`, `leader` led (as `reporter` saw it, at `at_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSeen {
    pub reporter: u64,
    pub term: u64,
    pub leader: u64,
    pub at_ms: u64,
}

/// Two leaders in one term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBrain {
    pub term: u64,
    pub first: LeaderSeen,
    pub second: LeaderSeen,
}

impl std::fmt::Display for SplitBrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "two leaders in term {}: controller {} (seen by {} at {} ms) and controller {} (seen by {} at {} ms)",
            self.term,
            self.first.leader,
            self.first.reporter,
            self.first.at_ms,
            self.second.leader,
            self.second.reporter,
            self.second.at_ms
        )
    }
}

/// Fails when two reports name different leaders for one term.
pub fn check_one_leader_per_term(seen: &[LeaderSeen]) -> Result<usize, SplitBrain> {
    let mut by_term: BTreeMap<u64, &LeaderSeen> = BTreeMap::new();
    for s in seen {
        match by_term.get(&s.term) {
            Some(first) if first.leader != s.leader => {
                return Err(SplitBrain {
                    term: s.term,
                    first: (*first).clone(),
                    second: s.clone(),
                })
            }
            Some(_) => {}
            None => {
                by_term.insert(s.term, s);
            }
        }
    }
    Ok(by_term.len())
}

/// Controllers whose state differs at the same applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diverged {
    pub applied: u64,
    /// (controller, digest) at that index.
    pub digests: Vec<(u64, String)>,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "controllers differ at applied index {}:", self.applied)?;
        for (c, d) in &self.digests {
            write!(f, " {c}={}", &d[..d.len().min(16)])?;
        }
        Ok(())
    }
}

/// Fails when two controllers report different state digests at one applied index
/// (`(controller, applied index, digest)`).
pub fn check_converged(digests: &[(u64, u64, String)]) -> Result<usize, Diverged> {
    let mut at: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for (c, applied, d) in digests {
        at.entry(*applied).or_default().push((*c, d.clone()));
    }
    for (applied, ds) in &at {
        if ds.iter().any(|(_, d)| *d != ds[0].1) {
            return Err(Diverged {
                applied: *applied,
                digests: ds.clone(),
            });
        }
    }
    Ok(at.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(reporter: u64, term: u64, leader: u64) -> LeaderSeen {
        LeaderSeen {
            reporter,
            term,
            leader,
            at_ms: term * 100 + reporter,
        }
    }

    #[test]
    fn two_leaders_in_one_term_are_rejected() {
        let ok = [seen(1, 1, 1), seen(2, 1, 1), seen(3, 2, 3), seen(1, 2, 3)];
        assert_eq!(check_one_leader_per_term(&ok), Ok(2));
        let bad = [seen(1, 4, 1), seen(2, 4, 1), seen(3, 4, 3)];
        let e = check_one_leader_per_term(&bad).expect_err("split brain");
        assert_eq!((e.term, e.first.leader, e.second.leader), (4, 1, 3));
        assert!(e.to_string().contains("two leaders in term 4"));
    }

    #[test]
    fn different_digests_at_one_index_are_rejected() {
        let d = |c: u64, i: u64, s: &str| (c, i, s.to_string());
        let ok = [
            d(1, 10, "aa"),
            d(2, 10, "aa"),
            d(3, 12, "bb"),
            d(1, 12, "bb"),
        ];
        assert_eq!(check_converged(&ok), Ok(2));
        let bad = [d(1, 10, "aa"), d(2, 10, "ab")];
        assert_eq!(check_converged(&bad).expect_err("diverged").applied, 10);
    }
}
