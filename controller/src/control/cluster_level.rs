//! Raises the cluster's feature level (`steward_core::features`) once every member of the
//! controller group reports a build that supports a higher one. Members report their level
//! in every Raft reply; a member not heard from yet holds the level where it is.

use std::time::Duration;

use steward_core::Command;
use steward_runtime::{Next, Worker, WorkerError};

use crate::raft::RaftHandle;

/// How often the leader compares the members' levels with the cluster's.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

pub struct ClusterLevelWorker {
    raft: RaftHandle,
    /// What is holding the level, for `steward status`.
    waiting_on: String,
}

impl ClusterLevelWorker {
    pub fn new(raft: RaftHandle) -> Self {
        ClusterLevelWorker {
            raft,
            waiting_on: String::new(),
        }
    }
}

/// The level every member supports: the minimum of what they reported, or `None` while a
/// member has not reported.
pub fn common_level(levels: impl IntoIterator<Item = Option<u32>>) -> Option<u32> {
    levels
        .into_iter()
        .try_fold(u32::MAX, |min, l| Some(min.min(l?)))
}

impl Worker for ClusterLevelWorker {
    fn name(&self) -> String {
        "cluster-level".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if !self.raft.is_leader() {
            self.waiting_on = "not the leader".into();
            return Ok(Next::Wait(CHECK_EVERY));
        }
        let metrics = self.raft.metrics();
        let members: Vec<u64> = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let peers = self.raft.peers();
        let current = self.raft.cluster_level();
        let Some(common) = common_level(members.iter().map(|id| peers.level_of(*id))) else {
            let silent: Vec<u64> = members
                .iter()
                .copied()
                .filter(|id| peers.level_of(*id).is_none())
                .collect();
            self.waiting_on = format!("level {current}; not heard from {silent:?}");
            return Ok(Next::Wait(CHECK_EVERY));
        };
        if common <= current {
            self.waiting_on = format!("level {current}; members support {common}");
            return Ok(Next::Wait(CHECK_EVERY));
        }
        // A failed raise (no quorum yet, leadership moving) is tried again at the next
        // check rather than after the workers' growing back-off: until it commits, the
        // commands of the new level wait for it.
        let result = match self
            .raft
            .propose(Command::SetClusterLevel { level: common })
            .await
        {
            Ok((_, result)) => result,
            Err(e) => {
                tracing::warn!(error = %e, to = common, "raising the cluster's feature level failed; retrying");
                self.waiting_on = format!("level {current}; raising to {common} failed: {e}");
                return Ok(Next::Wait(CHECK_EVERY));
            }
        };
        tracing::info!(
            from = current,
            to = common,
            ?result,
            "raised the cluster's feature level"
        );
        self.waiting_on = format!("raised to {common}");
        Ok(Next::Wait(CHECK_EVERY))
    }

    fn detail(&self) -> String {
        self.waiting_on.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_level_waits_for_every_member() {
        assert_eq!(common_level([Some(2), Some(3), Some(2)]), Some(2));
        assert_eq!(common_level([Some(3), None]), None);
        assert_eq!(common_level([Some(3)]), Some(3));
    }
}
