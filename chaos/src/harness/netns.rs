//! A private network of hosts on one machine: each host is a Linux network namespace with
//! its own address, joined to a bridge by a veth pair, so that the network faults between
//! Steward's processes are real ones (packets dropped by nftables inside the namespaces,
//! delayed or lost by tc netem on a host's link) rather than process signals.
//!
//! ```text
//!   root namespace (the harness, its workload clients)
//!        │ veth `<lab>` 10.A.B.254/24
//!   ┌────┴───────────── hub namespace `<lab>-hub`: bridge br0 ─────────────┐
//!   │ veth v1            │ veth v2             │ veth v3  ...               │
//! host `<lab>-c1`     host `<lab>-c2`       host `<lab>-a1`
//!  eth0 10.A.B.1       eth0 10.A.B.2         eth0 10.A.B.3
//! ```
//!
//! The bridge lives in a namespace of its own, so the root namespace's firewall (Docker's
//! FORWARD policy, say, with br_netfilter loaded) never sees the lab's traffic; the harness
//! reaches every host through one veth. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN),
//! iproute2 and nftables (`make deps`); [`unavailable`] says why a lab cannot be made here.
//!
//! Everything is torn down when the [`Lab`] is dropped (deleting a namespace deletes its
//! links); a lab left behind by a killed run is removed by the next one, by the owner's
//! process id in its name.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context};

/// Namespace names start with this, then the owner's pid in hex, `n`, and a counter.
const PREFIX: &str = "stw";
/// Hosts per lab: host addresses are 10.A.B.1 ..= 10.A.B.MAX_HOSTS; .254 is the harness.
pub const MAX_HOSTS: usize = 200;
/// The harness's own address in every lab's subnet.
const HARNESS_HOST_OCTET: u8 = 254;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs `program args` and fails with its stderr when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (install it: `make deps`)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` inside namespace `ns`.
fn run_in(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Why a lab cannot be made here, if it cannot: not root, or a tool missing or not
/// working (inside a container without CAP_NET_ADMIN, say).
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)".into());
    }
    for (tool, args) in [
        ("ip", &["-V"][..]),
        ("nft", &["--version"][..]),
        ("tc", &["-V"][..]),
    ] {
        if let Err(e) = run(tool, args) {
            return Some(format!(
                "{tool} does not work here ({e:#}); run `make deps`"
            ));
        }
    }
    // The real test: make a namespace and remove it.
    let probe = format!("{PREFIX}{:x}probe", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot make network namespaces: {e:#}"));
    }
    let _ = run("ip", &["netns", "del", &probe]);
    None
}

/// `true` when `test` may use a lab; prints why and returns `false` when it must skip;
/// panics when it must not skip (`STEWARD_REQUIRE_ALL_TESTS=1`).
pub fn skip_unless_available(test: &str) -> bool {
    match unavailable() {
        None => true,
        Some(why) if std::env::var("STEWARD_REQUIRE_ALL_TESTS").as_deref() == Ok("1") => {
            panic!("{test} needs network namespaces: {why}, and STEWARD_REQUIRE_ALL_TESTS=1")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// One host of a lab: a namespace with one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// What the harness calls it (`c1`, `a2`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// A command that runs `program` inside this host's namespace (`ip netns exec`, which
    /// execs the program: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }
}

/// What a partition drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Nothing passes between the two sides.
    Both,
    /// Packets from the second side to the first are dropped; the first still sends.
    OneWay,
}

/// Link impairments on one host's link (tc netem), both ways through its veth: the host's
/// outgoing packets in its namespace, and its incoming ones at the bridge port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Netem {
    pub delay: std::time::Duration,
    pub jitter: std::time::Duration,
    /// Percent of packets lost, duplicated, reordered (0-100).
    pub loss_percent: f64,
    pub duplicate_percent: f64,
    pub reorder_percent: f64,
}

impl Netem {
    /// The netem arguments (`delay 50ms 10ms loss 5% ...`).
    fn args(&self) -> Vec<String> {
        let mut a = vec!["netem".to_string()];
        // reorder needs a delay to reorder against.
        let delay = if self.reorder_percent > 0.0 && self.delay.is_zero() {
            std::time::Duration::from_millis(10)
        } else {
            self.delay
        };
        if !delay.is_zero() {
            a.push("delay".into());
            a.push(format!("{}us", delay.as_micros()));
            if !self.jitter.is_zero() {
                a.push(format!("{}us", self.jitter.as_micros()));
            }
        }
        for (name, pct) in [
            ("loss", self.loss_percent),
            ("duplicate", self.duplicate_percent),
            ("reorder", self.reorder_percent),
        ] {
            if pct > 0.0 {
                a.push(name.into());
                a.push(format!("{pct}%"));
            }
        }
        a
    }

    /// The netem arguments, once the percents are checked.
    pub fn validated_args(&self) -> anyhow::Result<Vec<String>> {
        self.validate()?;
        Ok(self.args())
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (name, pct) in [
            ("loss", self.loss_percent),
            ("duplicate", self.duplicate_percent),
            ("reorder", self.reorder_percent),
        ] {
            if !(0.0..=100.0).contains(&pct) {
                bail!("netem {name} must be a percent in 0..=100, not {pct}");
            }
        }
        Ok(())
    }
}

/// A private network of hosts (see the module docs). Dropping it removes every namespace
/// and link it made; processes still running inside are the caller's to stop first.
pub struct Lab {
    /// `stw<pid>n<k>`: the root veth's name, and the prefix of every namespace.
    name: String,
    /// The lab's /24: 10.A.B.0.
    subnet: [u8; 2],
    hosts: Mutex<Vec<Host>>,
    /// Rules and qdiscs in effect, by id, to lift one or all.
    faults: Mutex<FaultTables>,
}

#[derive(Default)]
struct FaultTables {
    next: u64,
    /// partition id -> the namespaces holding its table.
    partitions: std::collections::BTreeMap<u64, Vec<String>>,
}

impl Lab {
    /// Makes the hub namespace with its bridge and the harness's link into it. Removes
    /// labs left behind by processes that no longer run.
    pub fn new() -> anyhow::Result<Self> {
        remove_orphans();
        let pid = std::process::id();
        let k = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid:x}n{k}");
        if name.len() > 15 {
            bail!("lab name {name} is longer than an interface name may be");
        }
        let subnet = free_subnet(pid, k)?;
        let lab = Lab {
            name,
            subnet,
            hosts: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultTables::default()),
        };
        let hub = lab.hub();
        run("ip", &["netns", "add", &hub])?;
        run_in(&hub, "ip", &["link", "set", "lo", "up"])?;
        run_in(&hub, "ip", &["link", "add", "br0", "type", "bridge"])?;
        run_in(&hub, "ip", &["link", "set", "br0", "up"])?;
        // The harness's link: `<lab>` here, `up0` on the bridge.
        run(
            "ip",
            &[
                "link", "add", &lab.name, "type", "veth", "peer", "name", "up0", "netns", &hub,
            ],
        )?;
        run_in(&hub, "ip", &["link", "set", "up0", "master", "br0", "up"])?;
        let harness = format!("{}/24", lab.ip(HARNESS_HOST_OCTET));
        run("ip", &["addr", "add", &harness, "dev", &lab.name])?;
        run("ip", &["link", "set", &lab.name, "up"])?;
        Ok(lab)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.name)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], host)
    }

    /// The harness's address in the lab (where the lab's hosts see its calls come from).
    pub fn harness_ip(&self) -> Ipv4Addr {
        self.ip(HARNESS_HOST_OCTET)
    }

    /// Adds host `name` (letters, digits, `-`; unique in the lab) with the next address.
    pub fn add_host(&self, name: &str) -> anyhow::Result<Host> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("host name {name:?}: use letters, digits and '-'");
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.iter().any(|h| h.name == name) {
            bail!("the lab already has a host {name}");
        }
        if hosts.len() >= MAX_HOSTS {
            bail!("a lab holds at most {MAX_HOSTS} hosts");
        }
        let index = hosts.len() + 1;
        let host = Host {
            name: name.to_string(),
            netns: format!("{}-{name}", self.name),
            ip: self.ip(index as u8),
        };
        let hub = self.hub();
        let port = format!("v{index}");
        let ns = &host.netns;
        run("ip", &["netns", "add", ns])?;
        run_in(ns, "ip", &["link", "set", "lo", "up"])?;
        run_in(
            ns,
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &hub,
            ],
        )?;
        run_in(&hub, "ip", &["link", "set", &port, "master", "br0", "up"])?;
        run_in(
            ns,
            "ip",
            &["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"],
        )?;
        run_in(ns, "ip", &["link", "set", "eth0", "up"])?;
        hosts.push(host.clone());
        Ok(host)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<Host> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|h| h.name == name)
            .cloned()
            .ok_or_else(|| anyhow!("the lab has no host {name}"))
    }

    /// Every host, in the order they were added.
    pub fn hosts(&self) -> Vec<Host> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cuts `side_a` off `side_b`: with [`Direction::Both`] nothing passes between them;
    /// with [`Direction::OneWay`] packets from `side_b` to `side_a` are dropped (at
    /// `side_a`'s hosts) while `side_a`'s still reach `side_b`. Traffic with the harness
    /// and within each side flows. Returns the partition's id for [`Lab::heal`].
    pub fn partition(
        &self,
        side_a: &[Host],
        side_b: &[Host],
        direction: Direction,
    ) -> anyhow::Result<u64> {
        if side_a.is_empty() || side_b.is_empty() {
            bail!("a partition needs hosts on both sides");
        }
        if side_a.iter().any(|h| side_b.contains(h)) {
            bail!("a host cannot be on both sides of a partition");
        }
        let id = {
            let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
            f.next += 1;
            f.next
        };
        let table = format!("partition{id}");
        let set = |hosts: &[Host]| {
            hosts
                .iter()
                .map(|h| h.ip.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut plan: Vec<(&Host, String)> = side_a
            .iter()
            .map(|h| (h, format!("ip saddr {{ {} }} drop", set(side_b))))
            .collect();
        if direction == Direction::Both {
            plan.extend(
                side_b
                    .iter()
                    .map(|h| (h, format!("ip saddr {{ {} }} drop", set(side_a)))),
            );
        }
        let mut touched = Vec::new();
        let result = (|| -> anyhow::Result<()> {
            for (host, rule) in &plan {
                let script = format!(
                    "add table inet {table}\n\
                     add chain inet {table} input {{ type filter hook input priority 0 ; policy accept ; }}\n\
                     add rule inet {table} input {rule}\n"
                );
                nft_script(&host.netns, &script)?;
                touched.push(host.netns.clone());
            }
            Ok(())
        })();
        if let Err(e) = result {
            for ns in &touched {
                let _ = run_in(ns, "nft", &["delete", "table", "inet", &table]);
            }
            return Err(e);
        }
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partitions
            .insert(id, touched);
        Ok(id)
    }

    /// Lifts partition `id`. Lifting one that is gone is not an error.
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        let Some(namespaces) = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partitions
            .remove(&id)
        else {
            return Ok(());
        };
        let table = format!("partition{id}");
        let mut first_error = None;
        for ns in namespaces {
            if let Err(e) = run_in(&ns, "nft", &["delete", "table", "inet", &table]) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Impairs `host`'s link both ways (replacing what was there).
    pub fn netem(&self, host: &Host, netem: &Netem) -> anyhow::Result<()> {
        netem.validate()?;
        let args = netem.args();
        let port = self.port_of(host)?;
        let mut own = vec!["qdisc", "replace", "dev", "eth0", "root"];
        own.extend(args.iter().map(String::as_str));
        run_in(&host.netns, "tc", &own)?;
        let mut bridge = vec!["qdisc", "replace", "dev", port.as_str(), "root"];
        bridge.extend(args.iter().map(String::as_str));
        run_in(&self.hub(), "tc", &bridge)?;
        Ok(())
    }

    /// Whether this kernel has tc netem (the `sch_netem` qdisc): tried on the hub's
    /// loopback and taken away at once. The reason when it has not.
    pub fn netem_unavailable(&self) -> Option<String> {
        let hub = self.hub();
        match run_in(
            &hub,
            "tc",
            &[
                "qdisc", "replace", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        ) {
            Ok(_) => {
                let _ = run_in(&hub, "tc", &["qdisc", "del", "dev", "lo", "root"]);
                None
            }
            Err(e) => Some(format!(
                "tc netem is not available on this kernel (the sch_netem qdisc): {e:#}"
            )),
        }
    }

    /// Takes `host`'s link impairments away.
    pub fn clear_netem(&self, host: &Host) -> anyhow::Result<()> {
        let port = self.port_of(host)?;
        // "No such file" when none is there: nothing to clear.
        let _ = run_in(&host.netns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        let _ = run_in(&self.hub(), "tc", &["qdisc", "del", "dev", &port, "root"]);
        Ok(())
    }

    /// The bridge port of `host`'s link.
    fn port_of(&self, host: &Host) -> anyhow::Result<String> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let index = hosts
            .iter()
            .position(|h| h == host)
            .ok_or_else(|| anyhow!("host {} is not in this lab", host.name))?;
        Ok(format!("v{}", index + 1))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let hosts = self.hosts();
        for h in hosts {
            if let Err(e) = run("ip", &["netns", "del", &h.netns]) {
                eprintln!("could not remove namespace {}: {e:#}", h.netns);
            }
        }
        // Deleting the hub deletes the bridge and the harness's veth with it.
        if let Err(e) = run("ip", &["netns", "del", &self.hub()]) {
            eprintln!("could not remove namespace {}: {e:#}", self.hub());
        }
    }
}

/// Feeds `script` to `nft -f -` inside `ns`.
fn nft_script(ns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running nft (install nftables: `make deps`)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns}: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A /24 in 10/8 that no route of the root namespace already covers, derived from the pid
/// and the lab counter so that concurrent test processes rarely try the same one.
fn free_subnet(pid: u32, k: u32) -> anyhow::Result<[u8; 2]> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
    let addrs = run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    for attempt in 0..64u32 {
        let a = 100 + ((pid.wrapping_add(attempt * 7)) % 100) as u8;
        let b = ((k.wrapping_mul(31).wrapping_add(attempt)) % 250) as u8 + 1;
        let prefix = format!("10.{a}.{b}.");
        if !routes.contains(&prefix) && !addrs.contains(&prefix) {
            return Ok([a, b]);
        }
    }
    bail!("no free 10.x.y.0/24 subnet for a lab: the routing table uses all it tried")
}

/// Removes the namespaces of labs whose owner process is gone.
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid_hex, _)) = rest.split_once('n') else {
            continue;
        };
        let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netem_arguments_name_each_impairment() {
        let n = Netem {
            delay: std::time::Duration::from_millis(50),
            jitter: std::time::Duration::from_millis(10),
            loss_percent: 5.0,
            duplicate_percent: 1.0,
            reorder_percent: 0.0,
        };
        assert_eq!(
            n.args().join(" "),
            "netem delay 50000us 10000us loss 5% duplicate 1%"
        );
        let reorder_only = Netem {
            reorder_percent: 25.0,
            ..Netem::default()
        };
        assert_eq!(
            reorder_only.args().join(" "),
            "netem delay 10000us reorder 25%"
        );
        assert!(Netem {
            loss_percent: 101.0,
            ..Netem::default()
        }
        .validate()
        .is_err());
    }
}
