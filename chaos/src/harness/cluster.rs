//! Multi-process controller cluster for black-box tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::{ReadConsistency, StatusReply, StatusRequest};
use steward_runtime::tls::ServerKind;
use tonic::transport::Channel;

use super::netns::{Host, Lab};
use std::sync::Arc;

/// Ports every controller in a lab listens on, at its host's own address.
pub const LAB_RAFT_PORT: u16 = 7700;
pub const LAB_API_PORT: u16 = 7800;
pub const LAB_METRICS_PORT: u16 = 7900;

/// Where a cluster's controllers listen.
enum Placement {
    /// All on 127.0.0.1, on free ports.
    Loopback,
    /// Controller `id` on 127.0.0.(10 + id), free ports.
    OwnLoopbackIps,
    /// Each on its own lab host.
    Lab(Arc<Lab>, BTreeMap<u64, Host>),
}

/// Path of the `steward` binary under test: `$STEWARD_BIN`, else the one cargo built next
/// to this test binary (same profile).
pub fn steward_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STEWARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("steward");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bin steward`, which `make test` does) or set STEWARD_BIN",
        bin.display()
    );
    bin
}

/// The test-only build that knows one more command kind (`make build-next`, which `make
/// test` runs): `$STEWARD_NEXT_BIN`, else `steward-next` next to the `steward` binary.
pub fn steward_next_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STEWARD_NEXT_BIN") {
        return Some(PathBuf::from(p));
    }
    let bin = steward_bin().with_file_name("steward-next");
    bin.exists().then_some(bin)
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    // The kernel may hand the same port out again once it is released (two controllers'
    // addresses picked one after the other could collide): never return one twice.
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Starts `steward agent` with 8 simulated H100s, its data in `data_dir`, reporting to
/// `controllers`, plus `extra` flags; output goes to `log` (or nowhere). Its API listens on
/// a free loopback port unless `extra` names `--api-addr`.
pub fn spawn_agent(
    data_dir: &Path,
    controllers: &str,
    extra: &[&str],
    log: Option<&Path>,
) -> anyhow::Result<Child> {
    let (out, err) = match log {
        Some(path) => {
            let f = File::create(path)?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = Command::new(steward_bin());
    cmd.args(["agent", "--data-dir"]).arg(data_dir).args([
        "--controllers",
        controllers,
        "--simulate-gpus",
        "H100:8",
    ]);
    if !extra.contains(&"--api-addr") {
        cmd.args(["--api-addr", &format!("127.0.0.1:{}", free_port())]);
    }
    if !extra.contains(&"--tls-dir") && !extra.contains(&"--insecure") {
        cmd.args(agent_tls_flags(data_dir)?);
    }
    cmd.args(extra)
        .env_remove("STEWARD_SIMULATE_GPUS")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawning steward agent")
}

/// The TLS flags of an agent with data dir `data_dir`: a certificate for the node id the
/// data dir holds (or a new one, which the agent then adopts), in `DATA_DIR-tls`.
pub fn agent_tls_flags(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let node = match std::fs::read_to_string(data_dir.join("node-id")) {
        Ok(id) => id.trim().to_string(),
        Err(_) => format!("node-{:016x}", rand::random::<u64>()),
    };
    let mut tls_dir = data_dir.as_os_str().to_owned();
    tls_dir.push("-tls");
    Ok(super::pki::daemon_flags(
        Path::new(&tls_dir),
        steward_core::identity::Principal::Agent(node),
    ))
}

/// `GET http://addr/path` over plain HTTP/1.1; the body, if the status is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// An admin client of the controller at `addr` (the test admin certificate), with calls
/// cut off after `call_timeout`.
pub async fn admin_client(
    addr: &str,
    call_timeout: Duration,
) -> anyhow::Result<AdminClient<Channel>> {
    Ok(AdminClient::new(
        channel(addr, ServerKind::Controller, call_timeout).await?,
    ))
}

/// A channel to the server of `kind` at `addr`, as the test admin.
pub async fn channel(
    addr: &str,
    kind: ServerKind,
    call_timeout: Duration,
) -> anyhow::Result<Channel> {
    let options =
        super::pki::client_options(Duration::from_millis(500), kind).call_timeout(call_timeout);
    Ok(steward_runtime::transport::connect(addr, &options).await?)
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct ProcNode {
    pub id: u64,
    pub raft_addr: String,
    pub api_addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    config_path: PathBuf,
    /// Founding member (started with --initial-cluster) or joiner.
    founding: bool,
    /// The binary this controller runs (default: [`steward_bin`]).
    pub bin: Option<PathBuf>,
    /// The lab host it runs on; `None`: the harness's own namespace, on loopback.
    pub host: Option<Host>,
    child: Option<Child>,
}

pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, ProcNode>,
    initial_cluster: String,
    /// Extra config (whole TOML sections) written into every controller's config file.
    extra_toml: String,
    /// Extra environment of every controller process (`FAILPOINTS`, say); `{id}` in a
    /// value becomes the controller's id.
    env: Vec<(String, String)>,
    /// Plaintext (`--insecure`) instead of mutual TLS.
    plaintext: bool,
    /// The network namespaces the controllers run in, if they do: dropped after the
    /// processes are killed.
    lab: Option<Arc<Lab>>,
}

impl ProcCluster {
    /// Starts `n` founding controllers (ids 1..=n) with `raft_toml` under `[raft]`.
    pub fn start(n: u64, raft_toml: &str) -> anyhow::Result<Self> {
        Self::start_with(n, &format!("[raft]\n{raft_toml}"))
    }

    /// Starts `n` founding controllers (ids 1..=n) with `extra_toml` (whole sections, such
    /// as `[raft]` and `[liveness]`) in their config files.
    pub fn start_with(n: u64, extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_opts(n, extra_toml, &[])
    }

    /// Like [`ProcCluster::start_with`], with `env` added to every controller's
    /// environment.
    pub fn start_opts(n: u64, extra_toml: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_on(n, extra_toml, env, false)
    }

    /// Like [`ProcCluster::start_with`], in plaintext (`insecure = true`) whatever
    /// `STEWARD_IT_INSECURE` says: the TLS-cost benchmark runs one of each.
    pub fn start_plaintext(n: u64, extra_toml: &str) -> anyhow::Result<Self> {
        Self::start_mode(n, extra_toml, &[], false, true)
    }

    /// Whether this cluster runs in plaintext.
    pub fn is_plaintext(&self) -> bool {
        self.plaintext
    }

    /// Like [`ProcCluster::start_opts`]; with `own_ips`, controller `id` listens (and sends
    /// its Raft traffic) on loopback address 127.0.0.(10 + id), so that a test can cut one
    /// controller's Raft traffic with nftables by address.
    pub fn start_on(
        n: u64,
        extra_toml: &str,
        env: &[(&str, &str)],
        own_ips: bool,
    ) -> anyhow::Result<Self> {
        Self::start_mode(n, extra_toml, env, own_ips, super::pki::insecure())
    }

    /// Starts `n` founding controllers (ids 1..=n), controller `id` on a new host `c<id>`
    /// of `lab`, with `extra_toml` in their config files and `env` in their environment. Each listens on its host's own
    /// address at [`LAB_RAFT_PORT`], [`LAB_API_PORT`] and [`LAB_METRICS_PORT`].
    pub fn start_in_lab(
        lab: Arc<Lab>,
        n: u64,
        extra_toml: &str,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut hosts = BTreeMap::new();
        for id in 1..=n {
            hosts.insert(id, lab.add_host(&format!("c{id}"))?);
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::start_placed(
            n,
            extra_toml,
            &env,
            Placement::Lab(lab, hosts),
            super::pki::insecure(),
        )
    }

    /// The lab the controllers run in, if they do.
    pub fn lab(&self) -> Option<&Arc<Lab>> {
        self.lab.as_ref()
    }

    fn start_mode(
        n: u64,
        extra_toml: &str,
        env: &[(&str, &str)],
        own_ips: bool,
        plaintext: bool,
    ) -> anyhow::Result<Self> {
        let placement = match own_ips {
            true => Placement::OwnLoopbackIps,
            false => Placement::Loopback,
        };
        Self::start_placed(n, extra_toml, env, placement, plaintext)
    }

    fn start_placed(
        n: u64,
        extra_toml: &str,
        env: &[(&str, &str)],
        placement: Placement,
        plaintext: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("steward-it-").tempdir()?;
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let node = match &placement {
                Placement::Loopback => Self::new_node_on(dir.path(), id, true, "127.0.0.1"),
                Placement::OwnLoopbackIps => {
                    Self::new_node_on(dir.path(), id, true, &format!("127.0.0.{}", 10 + id))
                }
                Placement::Lab(_, hosts) => Self::new_node_in(dir.path(), id, true, &hosts[&id]),
            };
            nodes.insert(id, node);
        }
        let lab = match placement {
            Placement::Lab(lab, _) => Some(lab),
            _ => None,
        };
        // STEWARD_IT_RAFT_ONLY_INITIAL_CLUSTER=1: `ID=RAFT_ADDR` only, as builds before
        // stored format 2 take it (for benchmarking an older build side by side).
        let raft_only = std::env::var("STEWARD_IT_RAFT_ONLY_INITIAL_CLUSTER").as_deref() == Ok("1");
        let initial_cluster = nodes
            .values()
            .map(|n| match raft_only {
                true => format!("{}={}", n.id, n.raft_addr),
                false => format!("{}={}/{}", n.id, n.raft_addr, n.api_addr),
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut c = ProcCluster {
            dir,
            nodes,
            initial_cluster,
            extra_toml: extra_toml.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            plaintext,
            lab,
        };
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.spawn(id)?;
        }
        Ok(c)
    }

    fn new_node(dir: &Path, id: u64, founding: bool) -> ProcNode {
        Self::new_node_on(dir, id, founding, "127.0.0.1")
    }

    fn new_node_on(dir: &Path, id: u64, founding: bool, ip: &str) -> ProcNode {
        ProcNode {
            id,
            raft_addr: format!("{ip}:{}", free_port()),
            api_addr: format!("{ip}:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.join(format!("controller-{id}")),
            log_path: dir.join(format!("controller-{id}.log")),
            config_path: dir.join(format!("controller-{id}.toml")),
            founding,
            bin: None,
            host: None,
            child: None,
        }
    }

    fn new_node_in(dir: &Path, id: u64, founding: bool, host: &Host) -> ProcNode {
        let ip = host.ip;
        ProcNode {
            raft_addr: format!("{ip}:{LAB_RAFT_PORT}"),
            api_addr: format!("{ip}:{LAB_API_PORT}"),
            metrics_addr: format!("{ip}:{LAB_METRICS_PORT}"),
            host: Some(host.clone()),
            ..Self::new_node_on(dir, id, founding, "127.0.0.1")
        }
    }

    /// Adds a (not yet started) joining controller `id` and returns its addresses; in a
    /// lab, on a new host `c<id>`.
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<(String, String)> {
        let node = match &self.lab {
            Some(lab) => {
                let host = lab.add_host(&format!("c{id}"))?;
                Self::new_node_in(self.dir.path(), id, false, &host)
            }
            None => Self::new_node(self.dir.path(), id, false),
        };
        let addrs = (node.raft_addr.clone(), node.api_addr.clone());
        self.nodes.insert(id, node);
        Ok(addrs)
    }

    /// Starts (or restarts) controller `id`'s process.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let child = self
            .command(id)?
            .spawn()
            .context("spawning steward controller")?;
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no controller {id}"))?
            .child = Some(child);
        Ok(())
    }

    /// The command that starts controller `id` (its config file written; its output
    /// appended to its log), not yet spawned.
    pub fn command(&mut self, id: u64) -> anyhow::Result<Command> {
        let bin = self
            .nodes
            .get(&id)
            .and_then(|n| n.bin.clone())
            .unwrap_or_else(steward_bin);
        let initial = self.initial_cluster.clone();
        let extra_toml = self.extra_toml.clone();
        let env = self.env.clone();
        let plaintext = self.plaintext;
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no controller {id}"))?;
        let mut cfg = format!(
            "id = {}\ndata_dir = {:?}\nraft_addr = {:?}\napi_addr = {:?}\nmetrics_addr = {:?}\ncluster_name = \"it\"\n",
            node.id, node.data_dir, node.raft_addr, node.api_addr, node.metrics_addr
        );
        if plaintext {
            cfg.push_str("insecure = true\n");
        } else {
            let mut tls_dir = node.data_dir.as_os_str().to_owned();
            tls_dir.push("-tls");
            let tls_dir = super::pki::pki().issue(
                Path::new(&tls_dir),
                steward_core::identity::Principal::Controller(node.id),
            );
            cfg.push_str(&format!("tls_dir = {tls_dir:?}\n"));
        }
        if node.founding {
            cfg.push_str(&format!("initial_cluster = {initial:?}\n"));
        }
        cfg.push('\n');
        cfg.push_str(&extra_toml);
        std::fs::write(&node.config_path, cfg)?;
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let mut cmd = match &node.host {
            Some(host) => host.command(bin),
            None => Command::new(bin),
        };
        cmd.arg("controller")
            .arg("--config")
            .arg(&node.config_path)
            .env(
                "RUST_LOG",
                // STEWARD_IT_RUST_LOG turns up the controllers' logging when debugging a test.
                std::env::var("STEWARD_IT_RUST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".to_string()),
            )
            .env_remove("STEWARD_ADDR")
            // `{id}` in a value is this controller's id (a per-controller file, say).
            .envs(
                env.iter()
                    .map(|(k, v)| (k, v.replace("{id}", &id.to_string()))),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }

    pub fn node(&self, id: u64) -> &ProcNode {
        &self.nodes[&id]
    }

    /// Process id of controller `id`, while it runs (to pause it with SIGSTOP, say).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[&id].child.as_ref().map(|c| c.id())
    }

    /// Whether controller `id` was started and not killed or stopped since (it may have
    /// exited on its own: [`ProcCluster::is_alive`] looks).
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// Whether controller `id`'s process is alive; one that exited on its own is reaped,
    /// so that [`ProcCluster::spawn`] starts it again.
    pub fn is_alive(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        match node.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                node.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (up to `timeout`, then SIGKILL). Returns the
    /// exit status code, if it exited by itself.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for controller `id` to exit by itself; its exit code.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<i32> {
        let node = self.nodes.get_mut(&id)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return status.code().or(Some(-1));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default()
    }

    /// Every "became leader" line of every controller as (term, id).
    pub fn leaderships(&self) -> Vec<(u64, u64)> {
        self.nodes
            .keys()
            .flat_map(|id| crate::nodes::leaderships_in(&self.log_text(*id)))
            .collect()
    }

    /// Admin API addresses of the running controllers, comma separated.
    pub fn addrs(&self) -> String {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.api_addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub async fn client(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        if self.plaintext {
            let options =
                steward_runtime::transport::ClientOptions::new(Duration::from_millis(500))
                    .call_timeout(Duration::from_secs(15));
            let ch =
                steward_runtime::transport::connect(&self.nodes[&id].api_addr, &options).await?;
            return Ok(AdminClient::new(ch));
        }
        admin_client(&self.nodes[&id].api_addr, Duration::from_secs(15)).await
    }

    /// Controller `id`'s own view (stale status), if it answers.
    pub async fn local_status(&self, id: u64) -> Option<StatusReply> {
        let mut c = self.client(id).await.ok()?;
        c.status(StatusRequest {
            consistency: ReadConsistency::Stale as i32,
        })
        .await
        .ok()
        .map(|r| r.into_inner())
    }

    /// Waits until a running controller reports itself leader; returns (id, term).
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        let ids: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| self.is_running(*id))
            .collect();
        wait_for("a leader", timeout, || {
            let ids = ids.clone();
            async move {
                for id in ids {
                    if let Some(s) = self.local_status(id).await {
                        if s.responder_state == "leader" {
                            return Some((id, s.term));
                        }
                    }
                }
                None
            }
        })
        .await
    }

    /// Waits until every running controller has applied the same index and reports the
    /// same state digest; returns (applied index, digest).
    pub async fn wait_converged(&self, timeout: Duration) -> anyhow::Result<(u64, String)> {
        let ids: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| self.is_running(*id))
            .collect();
        wait_for("controllers to converge", timeout, || {
            let ids = ids.clone();
            async move {
                let mut seen = Vec::new();
                for id in ids {
                    let s = self.local_status(id).await?;
                    seen.push((s.applied_index, s.state_digest));
                }
                let first = seen.first()?.clone();
                (first.0 > 0 && seen.iter().all(|s| *s == first)).then_some(first)
            }
        })
        .await
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() || std::env::var_os("STEWARD_IT_KEEP_LOGS").is_some() {
            // Keep the logs of a failed test for reading.
            let path = self.dir.path().to_path_buf();
            eprintln!("controller logs kept in {}", path.display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

/// Kills what the agent with data dir `agent_data_dir` started (its allocations' shims and
/// their process groups): shims outlive their agent by design, so a test cleans up after
/// itself with this.
pub fn kill_allocations(agent_data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(agent_data_dir.join("allocs")) else {
        return;
    };
    for e in entries.flatten() {
        let pid = std::fs::read_to_string(e.path().join("pid.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A spawned agent that is SIGKILLed, with everything it started, when dropped (also
/// when a test fails half-way).
pub struct AgentGuard {
    pub data_dir: std::path::PathBuf,
    pub child: Option<Child>,
}

impl AgentGuard {
    pub fn new(data_dir: &Path, child: Child) -> Self {
        AgentGuard {
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_allocations(&self.data_dir);
    }
}
