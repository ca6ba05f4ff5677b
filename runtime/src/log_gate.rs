//! Rate-limited logging of refusals: under a flood (handshakes from a scanner, calls from
//! a misbehaving client) the log gets at most one line per reason per
//! [`LOG_INTERVAL`], and each line says how many it stands for. The counters in
//! `/metrics` stay exact; only the log lines are thinned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per reason this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// When each reason was last logged, and how many went unlogged since.
#[derive(Debug, Default)]
pub struct LogGate {
    reasons: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogGate {
    /// Whether to log an event of `reason` now; `Some(n)`: log it, saying that `n` more
    /// were not logged since the last line.
    pub fn pass(&self, reason: &'static str) -> Option<u64> {
        self.pass_at(reason, Instant::now())
    }

    fn pass_at(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut m = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(reason) {
            Some((last, skipped)) if now.saturating_duration_since(*last) < LOG_INTERVAL => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                m.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_per_interval_saying_how_many_it_skipped() {
        let gate = LogGate::default();
        let t0 = Instant::now();
        assert_eq!(gate.pass_at("role", t0), Some(0), "the first is logged");
        assert_eq!(gate.pass_at("role", t0), None);
        assert_eq!(gate.pass_at("role", t0 + LOG_INTERVAL / 2), None);
        assert_eq!(
            gate.pass_at("overloaded", t0),
            Some(0),
            "each reason its own"
        );
        assert_eq!(
            gate.pass_at("role", t0 + LOG_INTERVAL),
            Some(2),
            "the next line says how many it stands for"
        );
        assert_eq!(gate.pass_at("role", t0 + LOG_INTERVAL), None);
    }
}
