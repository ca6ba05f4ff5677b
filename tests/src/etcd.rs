//! A 3-member etcd on loopback (Debian's `etcd-server`, default fsync), for benchmarks that
//! measure Steward against its peer in the same run on the same disk.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::{free_port, wait_for};

/// A running etcd cluster; its processes are killed when it is dropped.
pub struct EtcdCluster {
    children: Vec<Child>,
    /// Client URLs (`http://127.0.0.1:PORT`), one per member.
    pub client_urls: Vec<String>,
}

impl EtcdCluster {
    /// Starts three etcd members with their data under `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let peers: Vec<(String, String)> = (1..=3)
            .map(|_| {
                (
                    format!("http://127.0.0.1:{}", free_port()),
                    format!("http://127.0.0.1:{}", free_port()),
                )
            })
            .collect();
        let initial = peers
            .iter()
            .enumerate()
            .map(|(i, (peer, _))| format!("e{}={peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for (i, (peer, client)) in peers.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let log = std::fs::File::create(dir.join(format!("etcd-{name}.log")))?;
            let child = Command::new("etcd")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{name}")))
                .args(["--listen-peer-urls", peer])
                .args(["--initial-advertise-peer-urls", peer])
                .args(["--listen-client-urls", client])
                .args(["--advertise-client-urls", client])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "steward-bench"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd (Debian's etcd-server; `make deps` installs it)")?;
            children.push(child);
        }
        Ok(EtcdCluster {
            children,
            client_urls: peers.into_iter().map(|(_, c)| c).collect(),
        })
    }

    /// The client URL of the current leader, once the cluster has one.
    pub async fn leader_url(&self) -> anyhow::Result<String> {
        wait_for("an etcd leader", Duration::from_secs(30), || async {
            for url in &self.client_urls {
                let mut c = etcd_client::Client::connect([url.as_str()], None)
                    .await
                    .ok()?;
                let s = c.status().await.ok()?;
                let me = s.header()?.member_id();
                if s.leader() == me && s.leader() != 0 {
                    return Some(url.clone());
                }
            }
            None
        })
        .await
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
