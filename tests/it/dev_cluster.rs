//! `steward dev` in one terminal, `steward status` in another: 3 members and a leader
//! within 5 s; the dev cluster comes back on the same data after a restart; admin commands
//! fail clearly against an unreachable address or an unknown member.

use std::net::TcpListener;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steward_tests::{steward_cmd, wait_for};

/// A base port P with P..P+2, P+10..P+12 (Raft) and P+20..P+22 (agents) free.
fn free_dev_base() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        drop(l);
        if p > 60000 {
            continue;
        }
        let ok = [0, 1, 2, 10, 11, 12, 20, 21, 22]
            .iter()
            .all(|o| TcpListener::bind(("127.0.0.1", p + o)).is_ok());
        if ok {
            return p;
        }
    }
    panic!("no free port range for the dev cluster");
}

/// An admin command as a user runs it next to `steward dev`: no TLS flags, so the CLI
/// finds the dev client certificate under the dev data dir (`STEWARD_DEV_DIR`) by itself.
fn steward(dev: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = steward_cmd();
    cmd.env_remove("STEWARD_TLS_DIR")
        .env("STEWARD_DEV_DIR", dev);
    cmd.args(args)
        .env_remove("STEWARD_ADDR")
        .output()
        .expect("run steward")
}

fn start_dev(dir: &std::path::Path, base: u16) -> Child {
    steward_cmd()
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--api-port", &base.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn steward dev")
}

fn stop(mut child: Child) -> Option<i32> {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

async fn status_json(dev: &std::path::Path, addrs: &str) -> Option<serde_json::Value> {
    let out = steward(dev, &["status", "--addr", addrs, "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_then_status_and_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = free_dev_base();
    let addrs = format!(
        "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
        base,
        base + 1,
        base + 2
    );
    let started = Instant::now();
    let dev = start_dev(dir.path(), base);
    let s = wait_for("3 members and a leader", Duration::from_secs(5), || async {
        let s = status_json(dir.path(), &addrs).await?;
        let members = s["members"].as_array()?.len();
        (members == 3 && s["leader_id"].is_u64()).then_some(s)
    })
    .await;
    let s = match s {
        Ok(s) => s,
        Err(e) => {
            stop(dev);
            return Err(e);
        }
    };
    eprintln!(
        "dev cluster ready in {:?}: leader {}",
        started.elapsed(),
        s["leader_id"]
    );

    let put = steward(
        dir.path(),
        &[
            "kv", "put", "greeting", "hello", "--addr", &addrs, "-o", "json",
        ],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let rev: serde_json::Value = serde_json::from_slice(&put.stdout)?;
    assert!(rev["revision"].as_u64().unwrap_or(0) > 0);
    if !steward_tests::pki::insecure() {
        // Secure by default: a plaintext client is refused.
        let plain = steward_cmd()
            .env_remove("STEWARD_TLS_DIR")
            .env("STEWARD_INSECURE", "true")
            .args(["status", "--addr", &addrs])
            .output()?;
        assert!(!plain.status.success(), "plaintext was served");
        // An outside gRPC client (Python's grpcio) with the dev client certificate lists
        // the services and calls Admin/Status; without it, it is refused.
        let (addr, client) = (
            format!("127.0.0.1:{base}"),
            dir.path().join("tls").join("client-admin"),
        );
        tokio::task::spawn_blocking(move || crate::security::check_outside_client(&addr, &client))
            .await?;
    }
    // Three agents with 8 simulated GPUs each, ready, with telemetry at the leader.
    let nodes = wait_for(
        "3 ready agents with telemetry",
        Duration::from_secs(20),
        || async {
            let out = steward(
                dir.path(),
                &["node", "list", "--addr", &addrs, "-o", "json"],
            );
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes = list.as_array()?.clone();
            let ok = nodes.len() == 3
                && nodes.iter().all(|n| {
                    n["state"] == "ready"
                        && n["gpus"].as_array().is_some_and(|g| {
                            g.len() == 8 && g.iter().all(|g| g["health"] == "healthy")
                        })
                });
            ok.then_some(nodes)
        },
    )
    .await;
    let nodes = match nodes {
        Ok(n) => n,
        Err(e) => {
            stop(dev);
            return Err(e);
        }
    };
    let agent_ports: std::collections::BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| {
            n["agent_api_addr"]
                .as_str()?
                .rsplit(':')
                .next()
                .map(str::to_string)
        })
        .collect();
    let want: std::collections::BTreeSet<String> =
        (20..23).map(|o| (base + o).to_string()).collect();
    assert_eq!(agent_ports, want, "the agents' APIs are on P+20..P+22");
    // The README's example job runs end to end: placed, started, its output in the logs.
    let example = steward_tests::repo_root().join("examples/hello-gpu.toml");
    let example = example.to_str().expect("utf-8 path");
    let run = steward(dir.path(), &["job", "run", example, "--addr", &addrs]);
    let out = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success() && out.contains("running"),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let job_id = out.lines().next().unwrap_or_default().trim().to_string();
    let logs = wait_for("the example's output", Duration::from_secs(20), || async {
        let l = steward(dir.path(), &["job", "logs", &job_id, "--addr", &addrs]);
        let text = String::from_utf8_lossy(&l.stdout).to_string();
        text.contains("CUDA_VISIBLE_DEVICES=GPU-").then_some(text)
    })
    .await;
    if let Err(e) = logs {
        stop(dev);
        return Err(e);
    }
    // Unknown member: a clear error.
    let bad = steward(
        dir.path(),
        &["operator", "raft", "promote", "99", "--addr", &addrs],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(stop(dev), Some(0), "dev cluster exits cleanly on SIGTERM");

    // Same data after a restart.
    let dev = start_dev(dir.path(), base);
    let got = wait_for("the key after restart", Duration::from_secs(20), || async {
        let out = steward(
            dir.path(),
            &["kv", "get", "greeting", "--addr", &addrs, "-o", "json"],
        );
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    })
    .await;
    stop(dev);
    let got = got?;
    assert_eq!(got["value"], "hello");
    assert_eq!(got["revision"], rev["revision"]);

    // Nothing listening: a clear error naming the addresses.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = steward(
        dir.path(),
        &["status", "--addr", &format!("127.0.0.1:{port}")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach any controller"), "{err}");
    Ok(())
}
