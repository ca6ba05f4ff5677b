//! The deterministic simulation in CI: hundreds of seeds, each a different schedule of
//! partitions, crashes, message loss and slow links over 3 or 5 controllers, must keep
//! every invariant; and with a known bug switched on, seeds must fail.

use std::time::Duration;

use steward_chaos::sim::{render_summary, run_seeds, SimBug, SimOptions};

/// Seeds `make test` runs (`make chaos-sim SEEDS=N` runs more).
const CI_SEEDS: u64 = 300;

#[test]
fn every_invariant_holds_on_300_seeds() {
    let summary = run_seeds(0..CI_SEEDS, 2, SimOptions::new);
    assert_eq!(summary.seeds, CI_SEEDS);
    assert!(
        summary.failed.is_empty() && summary.errors.is_empty() && summary.inconclusive.is_empty(),
        "{}",
        render_summary(&summary)
    );
    // The seeds did break things: several faults each, and clients were served.
    assert!(
        summary.faults >= 3 * CI_SEEDS,
        "{}",
        render_summary(&summary)
    );
    assert!(
        summary.ops_ok >= 500 * CI_SEEDS,
        "{}",
        render_summary(&summary)
    );
}

/// The simulation can fail: appends acknowledged before they are durable lose entries in
/// a crash, and the seeds show it (a log that no longer holds what it committed, or a lost
/// write).
#[test]
fn acknowledging_before_sync_is_caught() {
    let summary = run_seeds(0..10, 2, |seed| SimOptions {
        bug: Some(SimBug::AckBeforeSync),
        duration: Duration::from_secs(20),
        ..SimOptions::new(seed)
    });
    assert!(
        summary.failed.len() >= 3,
        "the bug went unnoticed: {}",
        render_summary(&summary)
    );
}
