//! Linearizability of a KV history, key by key: a map of registers is linearizable iff
//! each register is (Herlihy and Wing's locality), so each key's operations are checked
//! alone, which keeps the search small.
//!
//! The search is Wing and Gong's, with Lowe's memoisation (the algorithm of Porcupine and
//! of etcd's robustness tests): walk the history's calls and returns in time order; at a
//! call, try to linearize the operation now (the register model must allow its result);
//! at a return whose operation is not linearized yet, undo the last choice. A (set of
//! linearized operations, register value) pair seen before is never explored again.
//!
//! Operations whose outcome is unknown (timed out) may take effect at any time after
//! their call, or never: they return "at infinity", so the search can place them last,
//! where they change nothing anyone saw. Reads with unknown outcome say nothing and are
//! dropped, and so are operations known to have failed.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{KvCall, Nanos, Op, Outcome};

/// Search steps per key before the checker gives up and says so (never "ok").
pub const MAX_STEPS_PER_KEY: u64 = 20_000_000;
/// Operations named in a counterexample at most.
pub const MAX_COUNTEREXAMPLE_OPS: usize = 12;

/// Why a history is not shown linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No order of the key's operations explains what the clients saw.
    NotLinearizable {
        key: String,
        /// The operation no order could place, the ones concurrent with it and the last
        /// three that finished before it began, in invocation order: a small window
        /// that shows the problem.
        ops: Vec<Op>,
        /// How many of the key's operations the longest partial order placed.
        placed: usize,
        total: usize,
    },
    /// The search ran out of its step budget ([`MAX_STEPS_PER_KEY`]).
    Inconclusive { key: String, ops: usize },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::NotLinearizable {
                key,
                ops,
                placed,
                total,
            } => {
                write!(
                    f,
                    "key `{key}` is not linearizable: at most {placed} of its {total} operations \
                     can be ordered; the one that cannot be placed, with what ran beside it and just before:"
                )?;
                for op in ops {
                    write!(f, "\n  {}", describe(op))?;
                }
                Ok(())
            }
            Verdict::Inconclusive { key, ops } => write!(
                f,
                "key `{key}`: {ops} operations were too many to search within {MAX_STEPS_PER_KEY} steps"
            ),
        }
    }
}

/// One line for an operation: client, call, result, times.
pub fn describe(op: &Op) -> String {
    let call = match &op.call {
        KvCall::Read => "read".to_string(),
        KvCall::Write(v) => format!("write {v:?}"),
        KvCall::Cas { expect, new } => format!("cas {expect:?} -> {new:?}"),
    };
    let outcome = match &op.outcome {
        Outcome::Read(v) => format!("read {v:?}"),
        Outcome::Written => "ok".into(),
        Outcome::CasFailed => "precondition failed".into(),
        Outcome::Failed => "failed".into(),
        Outcome::Unknown => "unknown".into(),
    };
    let done = op
        .completed
        .map_or("never answered".to_string(), |c| format!("{:.3} ms", ms(c)));
    format!(
        "client {} {call} => {outcome} [{:.3} ms .. {done}]",
        op.client,
        ms(op.invoked)
    )
}

fn ms(n: Nanos) -> f64 {
    n as f64 / 1e6
}

/// What a check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub keys: usize,
    pub ops: usize,
    /// Dropped: unknown reads and failed operations (they constrain nothing).
    pub dropped: usize,
}

/// Checks every key of `history`; the first key that fails is reported.
pub fn check(history: &[Op]) -> Result<Checked, Verdict> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    let mut checked = Checked::default();
    for op in history {
        let constrains = !matches!(
            (&op.call, &op.outcome),
            (_, Outcome::Failed) | (KvCall::Read, Outcome::Unknown)
        );
        if constrains {
            by_key.entry(op.key.as_str()).or_default().push(op);
            checked.ops += 1;
        } else {
            checked.dropped += 1;
        }
    }
    checked.keys = by_key.len();
    for (key, ops) in by_key {
        check_key(key, &ops)?;
    }
    Ok(checked)
}

/// The register's value, interned: 0 is "absent", values are numbered from 1.
type Value = u32;

/// One operation of one key, ready for the search.
struct Step {
    call: Call,
    result: Result_,
}

enum Call {
    Read,
    Write(Value),
    Cas { expect: Value, new: Value },
}

enum Result_ {
    Read(Value),
    Written,
    CasFailed,
    Unknown,
}

/// The register model: the value after `step` from `state`, if `step`'s result is what
/// the register would answer.
fn apply(state: Value, step: &Step) -> Option<Value> {
    match (&step.call, &step.result) {
        (Call::Read, Result_::Read(v)) => (*v == state).then_some(state),
        (Call::Write(v), Result_::Written | Result_::Unknown) => Some(*v),
        (Call::Cas { expect, new }, Result_::Written) => (*expect == state).then_some(*new),
        (Call::Cas { expect, .. }, Result_::CasFailed) => (*expect != state).then_some(state),
        // Taken effect (at this point) or not: decided by the value it meets.
        (Call::Cas { expect, new }, Result_::Unknown) => {
            Some(if *expect == state { *new } else { state })
        }
        _ => None,
    }
}

const NONE: usize = usize::MAX;

fn check_key(key: &str, ops: &[&Op]) -> Result<(), Verdict> {
    let mut values: HashMap<String, Value> = HashMap::new();
    let mut intern = |v: Option<&String>| -> Value {
        match v {
            None => 0,
            Some(s) => {
                let next = values.len() as Value + 1;
                *values.entry(s.clone()).or_insert(next)
            }
        }
    };
    let steps: Vec<Step> = ops
        .iter()
        .map(|op| {
            let call = match &op.call {
                KvCall::Read => Call::Read,
                KvCall::Write(v) => Call::Write(intern(Some(v))),
                KvCall::Cas { expect, new } => Call::Cas {
                    expect: intern(expect.as_ref()),
                    new: intern(Some(new)),
                },
            };
            let result = match &op.outcome {
                Outcome::Read(v) => Result_::Read(intern(v.as_ref())),
                Outcome::Written => Result_::Written,
                Outcome::CasFailed => Result_::CasFailed,
                Outcome::Failed | Outcome::Unknown => Result_::Unknown,
            };
            Step { call, result }
        })
        .collect();
    let n = ops.len();
    // Events 1..=2n (0 is the list's head): calls and returns in time order, calls first
    // at equal times (two operations that touch are taken as concurrent: more orders are
    // allowed, never fewer).
    let mut events: Vec<(Nanos, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        let done = match op.outcome {
            Outcome::Unknown => Nanos::MAX,
            _ => op.completed.unwrap_or(Nanos::MAX),
        };
        events.push((done.max(op.invoked), true, i));
    }
    events.sort();
    let len = events.len() + 1;
    let (mut prev, mut next) = (vec![NONE; len], vec![NONE; len]);
    let mut op_of = vec![0usize; len];
    let mut is_return = vec![false; len];
    let mut partner = vec![0usize; len];
    let mut call_entry = vec![0usize; n];
    for (i, (_, ret, op)) in events.iter().enumerate() {
        let e = i + 1;
        prev[e] = i;
        next[i] = e;
        op_of[e] = *op;
        is_return[e] = *ret;
        if *ret {
            partner[call_entry[*op]] = e;
        } else {
            call_entry[*op] = e;
        }
    }
    let lift = |prev: &mut Vec<usize>, next: &mut Vec<usize>, e: usize, r: usize| {
        for x in [e, r] {
            next[prev[x]] = next[x];
            if next[x] != NONE {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |prev: &mut Vec<usize>, next: &mut Vec<usize>, e: usize, r: usize| {
        for x in [r, e] {
            next[prev[x]] = x;
            if next[x] != NONE {
                prev[next[x]] = x;
            }
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state: Value = 0;
    let mut entry = next[0];
    let mut steps_taken: u64 = 0;
    // The deepest partial order, and the operation that stopped it.
    let (mut best, mut blocked) = (0usize, 0usize);
    while next[0] != NONE {
        steps_taken += 1;
        if steps_taken > MAX_STEPS_PER_KEY {
            return Err(Verdict::Inconclusive {
                key: key.to_string(),
                ops: n,
            });
        }
        if !is_return[entry] {
            let op = op_of[entry];
            if let Some(after) = apply(state, &steps[op]) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    linearized = with;
                    lift(&mut prev, &mut next, entry, partner[entry]);
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // An operation returned before any order could place it: undo the last choice.
            if stack.len() >= best {
                best = stack.len();
                blocked = op_of[entry];
            }
            let Some((top, before)) = stack.pop() else {
                return Err(counterexample(key, ops, blocked, best));
            };
            let op = op_of[top];
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut prev, &mut next, top, partner[top]);
            entry = next[top];
        }
    }
    Ok(())
}

/// The blocked operation and those overlapping it in time.
fn counterexample(key: &str, ops: &[&Op], blocked: usize, placed: usize) -> Verdict {
    let b = ops[blocked];
    let end = |o: &Op| match o.outcome {
        Outcome::Unknown => Nanos::MAX,
        _ => o.completed.unwrap_or(Nanos::MAX),
    };
    // What ran beside it, and the last operations that finished before it began (what
    // it should have seen).
    let mut before: Vec<&&Op> = ops.iter().filter(|o| end(o) < b.invoked).collect();
    before.sort_by_key(|o| end(o));
    let earlier = before.len().saturating_sub(3);
    let mut window: Vec<Op> = before[earlier..]
        .iter()
        .map(|o| (**o).clone())
        .chain(
            ops.iter()
                .filter(|o| o.invoked <= end(b) && b.invoked <= end(o))
                .map(|o| (*o).clone()),
        )
        .collect();
    window.sort_by_key(|o| o.invoked);
    if window.len() > MAX_COUNTEREXAMPLE_OPS {
        // Keep the blocked one and its nearest neighbours.
        let at = window.iter().position(|o| o == b).unwrap_or(0);
        let start = at.saturating_sub(MAX_COUNTEREXAMPLE_OPS / 2);
        window = window
            .into_iter()
            .skip(start)
            .take(MAX_COUNTEREXAMPLE_OPS)
            .collect();
    }
    Verdict::NotLinearizable {
        key: key.to_string(),
        ops: window,
        placed,
        total: ops.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation by `client` on key "k" over [from, to] ms.
    fn op(client: u32, call: KvCall, outcome: Outcome, from: u64, to: Option<u64>) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            invoked: from * 1_000_000,
            completed: to.map(|t| t * 1_000_000),
            outcome,
        }
    }

    fn w(v: &str) -> KvCall {
        KvCall::Write(v.into())
    }

    fn read(v: Option<&str>) -> Outcome {
        Outcome::Read(v.map(String::from))
    }

    fn not_linearizable(history: &[Op]) -> Vec<Op> {
        match check(history) {
            Err(Verdict::NotLinearizable { ops, .. }) => ops,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable_pass() {
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, KvCall::Read, read(Some("a")), 2, Some(3)),
            // Concurrent with the write of b: either value may be read.
            op(1, w("b"), Outcome::Written, 4, Some(8)),
            op(2, KvCall::Read, read(Some("a")), 5, Some(6)),
            op(3, KvCall::Read, read(Some("b")), 5, Some(7)),
            op(
                2,
                KvCall::Cas {
                    expect: Some("b".into()),
                    new: "c".into(),
                },
                Outcome::Written,
                9,
                Some(10),
            ),
            op(
                3,
                KvCall::Cas {
                    expect: Some("b".into()),
                    new: "d".into(),
                },
                Outcome::CasFailed,
                11,
                Some(12),
            ),
            op(1, KvCall::Read, read(Some("c")), 13, Some(14)),
        ];
        let checked = check(&h).expect("linearizable");
        assert_eq!((checked.keys, checked.ops), (1, 8));
    }

    #[test]
    fn a_stale_read_is_rejected() {
        // b was acknowledged before the read began, yet the read saw a.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(1, w("b"), Outcome::Written, 2, Some(3)),
            op(2, KvCall::Read, read(Some("a")), 4, Some(5)),
        ];
        let window = not_linearizable(&h);
        assert!(
            window.iter().any(|o| o.outcome == read(Some("a"))),
            "the counterexample names the stale read: {window:?}"
        );
    }

    #[test]
    fn a_lost_write_is_rejected() {
        // b was acknowledged, then a later read found the key as before b.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, w("b"), Outcome::Written, 2, Some(3)),
            op(3, KvCall::Read, read(Some("a")), 10, Some(11)),
            op(3, KvCall::Read, read(Some("a")), 12, Some(13)),
        ];
        not_linearizable(&h);
        // Absent after an acknowledged write: lost too.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, KvCall::Read, read(None), 2, Some(3)),
        ];
        not_linearizable(&h);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected() {
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, KvCall::Read, read(Some("zzz")), 2, Some(3)),
        ];
        not_linearizable(&h);
    }

    #[test]
    fn unknown_writes_may_land_late_or_never_and_failed_ones_never() {
        // A timed-out write may be seen any time after its call...
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, w("b"), Outcome::Unknown, 2, None),
            op(3, KvCall::Read, read(Some("a")), 50, Some(51)),
            op(3, KvCall::Read, read(Some("b")), 60, Some(61)),
        ];
        check(&h).expect("the unknown write took effect between the reads");
        // ...or never...
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, w("b"), Outcome::Unknown, 2, None),
            op(3, KvCall::Read, read(Some("a")), 50, Some(51)),
        ];
        check(&h).expect("the unknown write never took effect");
        // ...but once seen it cannot be unseen.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, w("b"), Outcome::Unknown, 2, None),
            op(3, KvCall::Read, read(Some("b")), 50, Some(51)),
            op(3, KvCall::Read, read(Some("a")), 60, Some(61)),
        ];
        not_linearizable(&h);
        // A write known to have failed is never seen.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, w("b"), Outcome::Failed, 2, Some(3)),
            op(3, KvCall::Read, read(Some("b")), 50, Some(51)),
        ];
        assert!(
            check(&h).is_err(),
            "failed writes are dropped, so b was never written"
        );
    }

    #[test]
    fn a_compare_and_set_must_meet_its_expected_value() {
        // Both swapped from a: only one could have.
        let cas = |new: &str| KvCall::Cas {
            expect: Some("a".into()),
            new: new.into(),
        };
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, cas("b"), Outcome::Written, 2, Some(5)),
            op(3, cas("c"), Outcome::Written, 3, Some(6)),
        ];
        not_linearizable(&h);
        // A "precondition failed" while the key surely held a is wrong too.
        let h = [
            op(1, w("a"), Outcome::Written, 0, Some(1)),
            op(2, cas("b"), Outcome::CasFailed, 2, Some(3)),
        ];
        not_linearizable(&h);
    }

    /// A history produced by a real register: each operation takes effect at a point
    /// between its call and its answer (or, when its answer is lost, at some point after
    /// its call, or never).
    fn linearizable_history(plan: &[(u8, u8, u16, u16, u16, bool)]) -> Vec<Op> {
        // (kind, value, call, effect delay, answer delay, answer lost)
        let mut ops: Vec<(u64, Op)> = plan
            .iter()
            .enumerate()
            .map(|(i, &(kind, value, call, effect, answer, lost))| {
                let invoked = u64::from(call) * 1000;
                let at = invoked + u64::from(effect);
                let completed = at + u64::from(answer);
                let v = format!("v{i}");
                let call = match kind % 3 {
                    0 => KvCall::Read,
                    1 => KvCall::Write(v),
                    _ => KvCall::Cas {
                        expect: (value % 4 != 0)
                            .then(|| format!("v{}", usize::from(value) % (i + 1))),
                        new: v,
                    },
                };
                let op = Op {
                    client: i as u32,
                    key: "k".into(),
                    call,
                    invoked,
                    completed: (!lost).then_some(completed),
                    outcome: Outcome::Unknown,
                };
                (at, op)
            })
            .collect();
        // Apply in effect order; a lost answer's write may also never take effect.
        ops.sort_by_key(|(at, _)| *at);
        let mut value: Option<String> = None;
        for (i, (_, op)) in ops.iter_mut().enumerate() {
            let lost = op.completed.is_none();
            if lost && i % 2 == 0 {
                continue; // never took effect
            }
            let outcome = match &op.call {
                KvCall::Read => Outcome::Read(value.clone()),
                KvCall::Write(v) => {
                    value = Some(v.clone());
                    Outcome::Written
                }
                KvCall::Cas { expect, new } if *expect == value => {
                    value = Some(new.clone());
                    Outcome::Written
                }
                KvCall::Cas { .. } => Outcome::CasFailed,
            };
            if !lost {
                op.outcome = outcome;
            }
        }
        ops.into_iter().map(|(_, op)| op).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Sound: whatever a real register produced passes; and a read changed to a
        /// value nobody wrote fails.
        #[test]
        fn histories_of_a_real_register_pass_and_a_forged_read_fails(
            plan in proptest::collection::vec(
                (0u8..3, 0u8..16, 0u16..40, 0u16..3000, 0u16..3000, proptest::bool::weighted(0.1)),
                1..40,
            )
        ) {
            let mut h = linearizable_history(&plan);
            proptest::prop_assert!(check(&h).is_ok(), "{:?}", check(&h));
            if let Some(read) = h
                .iter_mut()
                .find(|o| matches!(o.outcome, Outcome::Read(_)))
            {
                read.outcome = Outcome::Read(Some("never written".into()));
                proptest::prop_assert!(check(&h).is_err());
            }
        }
    }

    #[test]
    fn keys_are_checked_apart_and_a_long_history_is_searched_quickly() {
        // 8 clients x 200 ops on 4 keys, each client writing then reading its own value:
        // linearizable, and the memoised search stays small.
        let mut h = Vec::new();
        for c in 0..8u32 {
            let key = format!("k{}", c % 4);
            for i in 0..100u64 {
                let t = i * 10 + u64::from(c);
                let v = format!("{c}-{i}");
                h.push(Op {
                    client: c,
                    key: key.clone(),
                    call: KvCall::Write(v.clone()),
                    invoked: t * 1_000,
                    completed: Some(t * 1_000 + 500),
                    outcome: Outcome::Written,
                });
                h.push(Op {
                    client: c,
                    key: key.clone(),
                    call: KvCall::Read,
                    invoked: t * 1_000 + 600,
                    completed: Some(t * 1_000 + 900),
                    outcome: Outcome::Read(Some(v)),
                });
            }
        }
        let checked = check(&h).expect("linearizable");
        assert_eq!((checked.keys, checked.ops), (4, 1600));
    }
}
