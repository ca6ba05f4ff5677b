//! What a workload records: one [`Op`] per client operation, with the times it was
//! invoked and completed and what it returned. The checkers (`crate::check`) take these
//! histories and nothing else, so they are pure and testable on hand-written ones.

use serde::{Deserialize, Serialize};

/// Nanoseconds since the run started, on the harness's monotonic clock (one clock for
/// every client: they all run in the harness process).
pub type Nanos = u64;

/// One operation on one KV key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (worker) that issued it; a client has one operation in flight at most.
    pub client: u32,
    pub key: String,
    pub call: KvCall,
    pub invoked: Nanos,
    /// When the answer arrived; `None` with [`Outcome::Unknown`].
    pub completed: Option<Nanos>,
    pub outcome: Outcome,
}

/// What a client asked. Values are unique per write in a run (the workloads write
/// `CLIENT-SEQ`), so a compare-and-set on the key's revision is a compare-and-set on its
/// value: the revision a client read names exactly one write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCall {
    Read,
    Write(String),
    /// Set `new` if the key holds `expect` (`None`: the key is absent).
    Cas {
        expect: Option<String>,
        new: String,
    },
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A read's value (`None`: absent).
    Read(Option<String>),
    /// A write, or a compare-and-set that swapped.
    Written,
    /// A compare-and-set whose expectation did not hold: nothing changed.
    CasFailed,
    /// Definitely not applied (refused before it was proposed, e.g. invalid argument).
    Failed,
    /// Timed out, or the connection dropped: it may or may not have taken effect.
    Unknown,
}

impl Op {
    /// Whether the operation may have changed the key.
    pub fn may_write(&self) -> bool {
        !matches!(self.call, KvCall::Read)
            && matches!(self.outcome, Outcome::Written | Outcome::Unknown)
    }
}
