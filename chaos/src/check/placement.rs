//! Placement invariants: no GPU over-committed at any applied index (the committed log,
//! replayed), and no task running on two nodes at once (the agents' own start and stop
//! records).

use std::collections::BTreeMap;

/// A GPU's capacity in thousandths (a whole GPU).
pub const GPU_MILLI: u32 = 1000;

/// A change to what is granted, at a Raft log index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `alloc` holds `milli` of GPU `gpu` (its UUID) on `node` from `index` on.
    Take {
        index: u64,
        alloc: String,
        node: String,
        gpu: String,
        milli: u32,
    },
    /// `alloc` gives back everything it held.
    Free { index: u64, alloc: String },
}

/// A GPU found holding more than it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overcommit {
    pub index: u64,
    pub node: String,
    pub gpu: String,
    pub milli: u32,
    /// Who held it then, with how much.
    pub holders: Vec<(String, u32)>,
}

impl std::fmt::Display for Overcommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at log index {}: GPU {} of node `{}` was granted {}/{GPU_MILLI} milli to",
            self.index, self.gpu, self.node, self.milli
        )?;
        for (alloc, m) in &self.holders {
            write!(f, " {alloc} ({m})")?;
        }
        Ok(())
    }
}

/// Replays `grants` in log order; the first over-committed GPU, if any.
pub fn check_grants(grants: &[Grant]) -> Result<usize, Overcommit> {
    let mut held: BTreeMap<(String, String), BTreeMap<String, u32>> = BTreeMap::new();
    let mut by_alloc: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for g in grants {
        match g {
            Grant::Take {
                index,
                alloc,
                node,
                gpu,
                milli,
            } => {
                let on = held.entry((node.clone(), gpu.clone())).or_default();
                *on.entry(alloc.clone()).or_default() += milli;
                by_alloc
                    .entry(alloc.clone())
                    .or_default()
                    .push((node.clone(), gpu.clone()));
                let total: u32 = on.values().sum();
                if total > GPU_MILLI {
                    return Err(Overcommit {
                        index: *index,
                        node: node.clone(),
                        gpu: gpu.clone(),
                        milli: total,
                        holders: on.iter().map(|(a, m)| (a.clone(), *m)).collect(),
                    });
                }
            }
            Grant::Free { alloc, .. } => {
                for key in by_alloc.remove(alloc).unwrap_or_default() {
                    if let Some(on) = held.get_mut(&key) {
                        on.remove(alloc);
                        if on.is_empty() {
                            held.remove(&key);
                        }
                    }
                }
            }
        }
    }
    Ok(grants.len())
}

/// One run of a task on a node, as its agent recorded it (wall-clock milliseconds of
/// that node; `None`: still running when the run ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRun {
    pub task: String,
    pub node: String,
    pub started_ms: u64,
    pub stopped_ms: Option<u64>,
}

/// A task that ran on two nodes at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoubleRun {
    pub task: String,
    pub first: TaskRun,
    pub second: TaskRun,
    pub overlap_ms: u64,
}

impl std::fmt::Display for DoubleRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = |r: &TaskRun| {
            r.stopped_ms
                .map_or("still running".into(), |s| s.to_string())
        };
        write!(
            f,
            "task {} ran on `{}` ({} .. {}) and on `{}` ({} .. {}) for {} ms at once",
            self.task,
            self.first.node,
            self.first.started_ms,
            end(&self.first),
            self.second.node,
            self.second.started_ms,
            end(&self.second),
            self.overlap_ms
        )
    }
}

/// Fails when two runs of one task on different nodes overlap by more than
/// `clock_slack_ms` (the nodes' clocks differ by up to that much; runs on one node are
/// the same agent restarting it, which its own fence orders).
pub fn check_single_runs(runs: &[TaskRun], clock_slack_ms: u64) -> Result<usize, Box<DoubleRun>> {
    let mut by_task: BTreeMap<&str, Vec<&TaskRun>> = BTreeMap::new();
    for r in runs {
        by_task.entry(&r.task).or_default().push(r);
    }
    for (task, mut rs) in by_task {
        rs.sort_by_key(|r| r.started_ms);
        for (i, a) in rs.iter().enumerate() {
            for b in &rs[i + 1..] {
                if a.node == b.node {
                    continue;
                }
                let a_end = a.stopped_ms.unwrap_or(u64::MAX);
                let b_end = b.stopped_ms.unwrap_or(u64::MAX);
                let overlap = a_end
                    .min(b_end)
                    .saturating_sub(a.started_ms.max(b.started_ms));
                if overlap > clock_slack_ms {
                    return Err(Box::new(DoubleRun {
                        task: task.to_string(),
                        first: (*a).clone(),
                        second: (*b).clone(),
                        overlap_ms: overlap,
                    }));
                }
            }
        }
    }
    Ok(runs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(index: u64, alloc: &str, node: &str, gpu: u32, milli: u32) -> Grant {
        let gpu = format!("GPU-{gpu}");
        Grant::Take {
            index,
            alloc: alloc.into(),
            node: node.into(),
            gpu,
            milli,
        }
    }

    fn free(index: u64, alloc: &str) -> Grant {
        Grant::Free {
            index,
            alloc: alloc.into(),
        }
    }

    #[test]
    fn shares_up_to_a_whole_gpu_and_freed_capacity_pass() {
        let g = [
            take(1, "j.a.0", "n1", 0, 500),
            take(2, "j.b.0", "n1", 0, 500),
            take(3, "j.c.0", "n1", 1, 1000),
            free(4, "j.a.0"),
            take(5, "j.d.0", "n1", 0, 500),
        ];
        assert_eq!(check_grants(&g), Ok(5));
    }

    #[test]
    fn a_double_allocation_is_rejected_with_its_holders() {
        let g = [
            take(1, "j.a.0", "n1", 0, 1000),
            take(7, "k.a.0", "n1", 0, 1000),
        ];
        let e = check_grants(&g).expect_err("one GPU, two whole tasks");
        assert_eq!((e.index, e.milli), (7, 2000));
        assert_eq!(e.holders.len(), 2);
        assert!(e.to_string().contains("j.a.0") && e.to_string().contains("k.a.0"));
        // Fractions adding past a whole GPU too.
        let g = [
            take(1, "a", "n1", 3, 600),
            take(2, "b", "n1", 3, 300),
            take(3, "c", "n1", 3, 200),
        ];
        assert_eq!(check_grants(&g).expect_err("1100 milli").milli, 1100);
    }

    fn run(task: &str, node: &str, from: u64, to: Option<u64>) -> TaskRun {
        TaskRun {
            task: task.into(),
            node: node.into(),
            started_ms: from,
            stopped_ms: to,
        }
    }

    #[test]
    fn a_task_on_two_nodes_at_once_is_rejected() {
        // Moved after its node was lost: the old run stopped (fenced) before the new one.
        let ok = [
            run("j.a.0", "n1", 0, Some(1000)),
            run("j.a.0", "n2", 1500, None),
            run("j.b.0", "n1", 0, None),
        ];
        assert_eq!(check_single_runs(&ok, 50), Ok(3));
        // The fence was skipped: both ran for 2 s.
        let bad = [
            run("j.a.0", "n1", 0, Some(4000)),
            run("j.a.0", "n2", 2000, None),
        ];
        let e = check_single_runs(&bad, 50).expect_err("two at once");
        assert_eq!(e.overlap_ms, 2000);
        assert!(e.to_string().contains("`n1`") && e.to_string().contains("`n2`"));
        // Within the clocks' slack it is not counted.
        let close = [
            run("j.a.0", "n1", 0, Some(1000)),
            run("j.a.0", "n2", 980, None),
        ];
        assert!(check_single_runs(&close, 50).is_ok());
    }
}
