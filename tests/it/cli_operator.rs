//! The admin CLI against a real group: snapshot save / inspect / restore, list-peers,
//! transfer-leader, compare-and-set, and config errors that name the key.

use std::process::Output;
use std::time::Duration;

use steward_tests::{steward_cmd, ProcCluster};

fn steward(addrs: &str, args: &[&str]) -> Output {
    steward_cmd()
        .args(args)
        .args(["--addr", addrs])
        .output()
        .expect("run steward")
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "steward failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_inspect_restore_and_membership_commands() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let a = cluster.addrs();

    let r1 = ok_json(steward(&a, &["kv", "put", "app/one", "1", "-o", "json"]));
    ok_json(steward(&a, &["kv", "put", "app/two", "2", "-o", "json"]));
    // Compare-and-set: a stale revision is refused and names the current one.
    let rev = r1["revision"].as_u64().expect("revision");
    let stale = steward(&a, &["kv", "put", "app/one", "x", "--cas", "999999"]);
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains(&format!("current {rev}")));
    ok_json(steward(
        &a,
        &[
            "kv",
            "put",
            "app/one",
            "1b",
            "--cas",
            &rev.to_string(),
            "-o",
            "json",
        ],
    ));

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("state.snap");
    let file_s = file.to_str().expect("utf-8 path");
    let saved = ok_json(steward(
        &a,
        &["operator", "snapshot", "save", file_s, "-o", "json"],
    ));
    assert_eq!(saved["keys"], 2);
    let inspected = ok_json(steward(
        &a,
        &["operator", "snapshot", "inspect", file_s, "-o", "json"],
    ));
    assert_eq!(inspected["keys"], 2);
    assert_eq!(inspected["voters"].as_array().map(Vec::len), Some(3));
    assert_eq!(inspected["state_digest"], saved["state_digest"]);

    // Change the state, then restore: the snapshot's data comes back on every controller.
    ok_json(steward(&a, &["kv", "put", "app/three", "3", "-o", "json"]));
    ok_json(steward(&a, &["kv", "delete", "app/two", "-o", "json"]));
    let restored = ok_json(steward(
        &a,
        &["operator", "snapshot", "restore", file_s, "-o", "json"],
    ));
    assert_eq!(restored["keys"], 2);
    assert!(
        restored["revision"].as_u64() > Some(rev),
        "revisions keep growing"
    );
    let listed = ok_json(steward(&a, &["kv", "list", "app/", "-o", "json"]));
    let keys: Vec<&str> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    assert_eq!(keys, ["app/one", "app/two"]);
    let one = ok_json(steward(&a, &["kv", "get", "app/one", "-o", "json"]));
    assert_eq!(one["value"], "1b");
    cluster.wait_converged(Duration::from_secs(20)).await?;

    // A damaged file is refused before the cluster sees it.
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dir.path().join("bad.snap");
    std::fs::write(&bad, bytes)?;
    let out = steward(
        &a,
        &[
            "operator",
            "snapshot",
            "restore",
            bad.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // list-peers and transfer-leader.
    let peers = ok_json(steward(
        &a,
        &["operator", "raft", "list-peers", "-o", "json"],
    ));
    let peers = peers.as_array().expect("members");
    assert_eq!(peers.len(), 3);
    let leader = peers
        .iter()
        .find(|p| p["is_leader"] == true)
        .and_then(|p| p["id"].as_u64())
        .expect("a leader");
    let to = peers
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .find(|id| *id != leader)
        .expect("another member");
    let moved = ok_json(steward(
        &a,
        &[
            "operator",
            "raft",
            "transfer-leader",
            &to.to_string(),
            "-o",
            "json",
        ],
    ));
    assert_eq!(moved["leader_id"].as_u64(), Some(to));
    let status = ok_json(steward(&a, &["status", "-o", "json"]));
    assert_eq!(status["leader_id"].as_u64(), Some(to));
    Ok(())
}

#[test]
fn controller_config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "id = 1\ndata_dir = \"/tmp/x\"\nfavourite_colour = \"red\"\n",
    )
    .expect("write");
    let out = steward_cmd()
        .args(["controller", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("favourite_colour"));

    // A missing key names the flag and the variable; the variable fills it in.
    std::fs::write(&cfg, "data_dir = \"/tmp/x\"\nraft_addr = \"127.0.0.1:1\"\napi_addr = \"127.0.0.1:2\"\ninitial_cluster = \"2=127.0.0.1:1\"\n").expect("write");
    let out = steward_cmd()
        .args(["controller", "--config"])
        .arg(&cfg)
        .env_remove("STEWARD_ID")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--id") && err.contains("STEWARD_ID"),
        "{err}"
    );
    let out = steward_cmd()
        .args(["controller", "--config"])
        .arg(&cfg)
        .env("STEWARD_ID", "1")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not list this controller's id 1"),
        "env id was used: {err}"
    );
}
