//! Network faults with nftables, for partition tests: drops one controller's Raft traffic
//! while everything else (its API, agents) still reaches it. Needs root and the `nft` tool
//! (`make deps` installs nftables); [`skip_unless_available`] tells a test to skip, or to
//! fail under `STEWARD_REQUIRE_ALL_TESTS=1`.
//!
//! The rules live in a table of their own (named after the test process and a counter),
//! deleted when the [`RaftPartition`] or [`AddressCut`] is dropped, even when a test panics.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn nft(args: &str) -> anyhow::Result<()> {
    let out = Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .context("running nft (install nftables: `make deps`)")?;
    if !out.status.success() {
        bail!(
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Why nftables cannot be used here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (nftables needs CAP_NET_ADMIN)".into());
    }
    match Command::new("nft").args(["list", "tables"]).output() {
        Err(e) => Some(format!("nft is not installed ({e}); run `make deps`")),
        Ok(o) if !o.status.success() => Some(format!(
            "nft does not work here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// `true` when the test may run; prints why and returns `false` when it must skip; panics
/// when it must not skip (`STEWARD_REQUIRE_ALL_TESTS=1`).
pub fn skip_unless_available(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var("STEWARD_REQUIRE_ALL_TESTS").as_deref() == Ok("1") => {
            panic!("{test} needs nftables: {why}, and STEWARD_REQUIRE_ALL_TESTS=1")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// An nftables table with an input and an output filter chain, deleted when dropped (even
/// when a test panics).
struct Table {
    name: String,
}

impl Table {
    fn new() -> anyhow::Result<Self> {
        let name = format!(
            "steward_it_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let t = Table { name };
        let n = &t.name;
        nft(&format!("add table inet {n}"))?;
        for hook in ["input", "output"] {
            nft(&format!(
                "add chain inet {n} {hook} {{ type filter hook {hook} priority 0 ; policy accept ; }}"
            ))?;
        }
        Ok(t)
    }

    fn rule(&self, chain: &str, rule: &str) -> anyhow::Result<()> {
        nft(&format!("add rule inet {} {chain} {rule}", self.name))
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}", self.name)) {
            eprintln!("could not remove nftables table {}: {e}", self.name);
        }
    }
}

/// One controller's Raft traffic dropped in both directions, until dropped.
pub struct RaftPartition {
    _table: Table,
}

impl RaftPartition {
    /// Drops packets to `raft_port` on `ip` (votes, appends to it) and packets from `ip`
    /// to any of `peer_raft_ports` (its appends and votes to them). Other traffic to and
    /// from `ip` (its API) flows.
    pub fn isolate(ip: &str, raft_port: u16, peer_raft_ports: &[u16]) -> anyhow::Result<Self> {
        let table = Table::new()?;
        table.rule(
            "input",
            &format!("ip daddr {ip} tcp dport {raft_port} drop"),
        )?;
        let ports = peer_raft_ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        table.rule(
            "output",
            &format!("ip saddr {ip} tcp dport {{ {ports} }} drop"),
        )?;
        Ok(RaftPartition { _table: table })
    }

    /// Cuts controller `id` of `cluster` (started with one loopback address per
    /// controller: `ProcCluster::start_on(.., true)`) off the others' Raft traffic.
    pub fn isolate_controller(
        cluster: &super::cluster::ProcCluster,
        id: u64,
    ) -> anyhow::Result<Self> {
        let split = |addr: &str| -> anyhow::Result<(String, u16)> {
            let (ip, port) = addr
                .rsplit_once(':')
                .with_context(|| format!("not HOST:PORT: {addr}"))?;
            Ok((ip.to_string(), port.parse().context("port")?))
        };
        let (ip, port) = split(&cluster.node(id).raft_addr)?;
        let peers = cluster
            .nodes
            .iter()
            .filter(|(other, _)| **other != id)
            .map(|(_, n)| split(&n.raft_addr).map(|(_, p)| p))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        Self::isolate(&ip, port, &peers)
    }

    /// Lifts the partition now.
    pub fn heal(self) {}
}

/// Every packet from (and to) one local address dropped, until dropped: cuts off a process
/// whose connections come from that address (an agent started with `--source-ip`), while
/// everything else on the loopback flows.
pub struct AddressCut {
    _table: Table,
}

impl AddressCut {
    pub fn drop_address(ip: &str) -> anyhow::Result<Self> {
        let table = Table::new()?;
        table.rule("output", &format!("ip saddr {ip} drop"))?;
        table.rule("input", &format!("ip daddr {ip} drop"))?;
        Ok(AddressCut { _table: table })
    }

    /// Lets the traffic through again now.
    pub fn heal(self) {}
}
