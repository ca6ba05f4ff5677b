//! The inventory goes through Raft only when it changes: a restarted agent on the same
//! hardware with the same labels only heartbeats; changed labels register again.

use std::process::Child;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steward_tests::{free_port, http_get, spawn_agent, steward_cmd, wait_for, ProcCluster};

/// The value of an unlabelled series in `/metrics`.
fn metric(addr: &str, name: &str) -> Option<f64> {
    let text = http_get(addr, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn stop(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
}

fn labels(addrs: &str) -> Option<serde_json::Value> {
    let out = steward_cmd()
        .args(["node", "list", "--addr", addrs, "-o", "json"])
        .output()
        .ok()?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(list.get(0)?["labels"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_unchanged_hardware_does_not_register_again() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port());
    // The agent API address is part of the registration: keep it across restarts.
    let api = format!("127.0.0.1:{}", free_port());
    let start = |rack: &str| {
        spawn_agent(
            dir.path(),
            &addrs,
            &[
                "--metrics-addr",
                &metrics,
                "--api-addr",
                &api,
                "--label",
                &format!("rack={rack}"),
            ],
            None,
        )
    };
    let registered = |want: f64| {
        let metrics = metrics.clone();
        async move {
            let heartbeats = metric(&metrics, "steward_agent_heartbeats_sent_total")?;
            let regs = metric(&metrics, "steward_agent_registrations_total")?;
            (heartbeats >= 2.0).then_some(regs == want)
        }
    };

    let agent = start("r1")?;
    let first = wait_for(
        "first start: registered, heartbeating",
        Duration::from_secs(20),
        || registered(1.0),
    )
    .await;
    stop(agent);
    assert!(first?, "a new node registers once");

    let agent = start("r1")?;
    let again = wait_for("restart: heartbeating", Duration::from_secs(20), || async {
        // Wait until the metrics endpoint is the new process's and it has heartbeats.
        let h = metric(&metrics, "steward_agent_heartbeats_sent_total")?;
        (h >= 3.0).then_some(metric(&metrics, "steward_agent_registrations_total")?)
    })
    .await;
    stop(agent);
    assert_eq!(
        again?, 0.0,
        "same hardware and labels: heartbeats only, no Raft write"
    );

    let agent = start("r2")?;
    let relabelled = wait_for(
        "relabelled: registered again",
        Duration::from_secs(20),
        || registered(1.0),
    )
    .await;
    let shown = wait_for(
        "the new label at the leader",
        Duration::from_secs(20),
        || async {
            let l = labels(&addrs)?;
            (l["rack"] == "r2").then_some(l)
        },
    )
    .await;
    stop(agent);
    assert!(relabelled?, "changed labels register again");
    shown?;
    Ok(())
}
