//! Only in the test build with one more command kind (`next-level`): once the cluster's
//! feature level reaches 5, the leader proposes that kind (`Command::LevelProbe`) once. The
//! rolling-upgrade test watches for it: it must not be proposed while any member runs a
//! build that does not know it, and must be proposed once all do.

use std::time::Duration;

use steward_core::{Command, CommandResult};
use steward_runtime::{Next, Worker, WorkerError};

use crate::raft::RaftHandle;

/// Where the probe leaves its mark.
pub const PROBE_KEY: &str = "steward/level-probe";

pub struct LevelProbeWorker {
    raft: RaftHandle,
    waiting_logged: bool,
}

impl LevelProbeWorker {
    pub fn new(raft: RaftHandle) -> Self {
        LevelProbeWorker {
            raft,
            waiting_logged: false,
        }
    }
}

impl Worker for LevelProbeWorker {
    fn name(&self) -> String {
        "level-probe".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if !self.raft.is_leader() {
            return Ok(Next::Wait(Duration::from_millis(250)));
        }
        let (level, done) = {
            let applied = self.raft.view().read();
            (
                applied.state.cluster_level,
                applied.state.kv.contains_key(PROBE_KEY),
            )
        };
        if done {
            return Ok(Next::Done);
        }
        if level < 5 {
            if !self.waiting_logged {
                tracing::info!(
                    cluster_level = level,
                    "level probe waits for cluster level 5"
                );
                self.waiting_logged = true;
            }
            return Ok(Next::Wait(Duration::from_millis(250)));
        }
        let note = format!("proposed by controller {} at level {level}", self.raft.id());
        match self.raft.propose(Command::LevelProbe { note }).await? {
            (_, CommandResult::LevelProbeApplied { revision }) => {
                tracing::info!(revision, "level probe applied");
                Ok(Next::Done)
            }
            (_, other) => Err(format!("level probe: {other:?}").into()),
        }
    }
}
