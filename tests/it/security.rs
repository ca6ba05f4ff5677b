//! Security, black-box (issue 12): refused handshakes change nothing; an agent acts only
//! for its own node, also through a follower's forwarding; roles decide what an operator
//! may do; a certificate replaced on disk is served without a restart; oversize messages
//! and bad chunk ids are refused; refusals are counted in `/metrics`; a real outside gRPC
//! client (Python's grpcio) works with a client certificate and is refused without one.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_core::identity::{Identity, Principal, Role};
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{
    GetChunkRequest, HeartbeatRequest, KvListRequest, KvPutRequest, ListNodesRequest,
    PutChunkRequest, RegisterNodeRequest, ReportAllocationsRequest, StatusRequest,
    WatchAllocationsRequest,
};
use steward_runtime::tls::issue::{create_ca, create_cert, write_cert, CertPem};
use steward_runtime::tls::{ServerKind, Tls};
use steward_runtime::transport::{self, ClientOptions};
use steward_tests::pki::{self, pki, CLUSTER};
use steward_tests::{http_get, spawn_agent, steward_cmd, wait_for, AgentGuard, ProcCluster};
use tonic::Code;

fn skipped() -> bool {
    if pki::insecure() {
        eprintln!("SKIPPED: STEWARD_IT_INSECURE=1 runs the harness in plaintext");
        return true;
    }
    false
}

/// A TLS dir holding the cluster's CA (so that the client trusts the server) with `cert`.
fn tls_dir_with(root: &Path, name: &str, cert: CertPem) -> std::path::PathBuf {
    let dir = root.join(name);
    let cert = CertPem {
        ca: pki().ca().cert.clone(),
        ..cert
    };
    write_cert(&dir, &cert, true).expect("write");
    dir
}

fn admin_identity() -> Identity {
    Identity::new(
        CLUSTER,
        Principal::Client {
            name: "mallory".into(),
            role: Role::Admin,
        },
    )
    .expect("identity")
}

fn options(tls: Option<Tls>, kind: ServerKind) -> ClientOptions {
    ClientOptions::new(Duration::from_secs(2))
        .call_timeout(Duration::from_secs(5))
        .tls(tls, kind)
}

/// Every key in the KV namespace, as the admin reads it.
async fn kv_keys(cluster: &ProcCluster, leader: u64) -> anyhow::Result<Vec<String>> {
    let mut c = cluster.client(leader).await?;
    let reply = c
        .kv_list(KvListRequest {
            prefix: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(reply.entries.into_iter().map(|e| e.key).collect())
}

/// Whether a TLS client with `config` gets an HTTP/2 answer from `addr` (false: the
/// handshake or the first read failed).
async fn served_raw(addr: &str, config: rustls::ClientConfig) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(steward_runtime::tls::server_name(
        CLUSTER,
        ServerKind::Controller,
    ))
    .expect("name");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut s = connector.connect(name, tcp).await.ok()?;
        // The HTTP/2 preface and an empty SETTINGS frame: a server that took the
        // connection answers with its own SETTINGS.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .ok()?;
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).await.ok()?;
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A rustls client trusting the cluster's CA, presenting no certificate.
fn no_certificate_config() -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(pki().ca().cert.as_bytes())
                .expect("ca"),
        )
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// The sum of a metric's series whose labels contain `label` (e.g. `reason="role"`).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_at_the_handshake_or_by_role_with_nothing_changed() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(1, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addr = cluster.node(leader).api_addr.clone();
    let before = kv_keys(&cluster, leader).await?;
    let root = tempfile::tempdir()?;
    let foreign_ca = create_ca(CLUSTER, 30)?;
    let foreign = tls_dir_with(
        root.path(),
        "foreign",
        create_cert(&foreign_ca, &admin_identity(), 30, 0)?,
    );
    let expired = tls_dir_with(
        root.path(),
        "expired",
        create_cert(pki().ca(), &admin_identity(), 1, 10)?,
    );
    let put = || KvPutRequest {
        key: "intruder".into(),
        value: b"was here".to_vec(),
        ..Default::default()
    };
    for (what, tls) in [
        ("a plaintext client", None),
        (
            "a certificate from a foreign CA",
            Some(Tls::load(&foreign)?),
        ),
        ("an expired certificate", Some(Tls::load(&expired)?)),
    ] {
        let refused = match transport::connect(&addr, &options(tls, ServerKind::Controller)).await {
            Err(_) => true,
            Ok(ch) => transport::admin_client(ch).kv_put(put()).await.is_err(),
        };
        assert!(refused, "{what} was served");
    }
    assert!(
        !served_raw(&addr, no_certificate_config()).await,
        "a client without a certificate was served"
    );
    // An agent's certificate is no operator's: the handshake passes, every admin call is
    // refused.
    let agent_dir = pki().issue(
        &root.path().join("agent"),
        Principal::Agent("node-intruder".into()),
    );
    let ch = transport::connect(
        &addr,
        &options(Some(Tls::load(&agent_dir)?), ServerKind::Controller),
    )
    .await?;
    let mut as_agent = transport::admin_client(ch);
    let e = as_agent.kv_put(put()).await.expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = as_agent
        .status(StatusRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nothing changed, and each refusal was counted.
    assert_eq!(kv_keys(&cluster, leader).await?, before);
    let metrics = http_get(&cluster.node(leader).metrics_addr, "/metrics").expect("metrics");
    assert!(
        metric_sum(
            &metrics,
            "steward_tls_handshakes_refused_total",
            "server=\"api\""
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "steward_auth_refused_total", "reason=\"role\"") >= 2.0,
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certificate_acts_only_for_its_own_node() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = cluster.dir.path().join("agent-b");
    let child = spawn_agent(&dir, &cluster.addrs(), &[], None)?;
    let _agent = AgentGuard::new(&dir, child);
    let list = || async {
        let mut c = cluster.client(leader).await.ok()?;
        let nodes = c
            .list_nodes(ListNodesRequest::default())
            .await
            .ok()?
            .into_inner()
            .nodes;
        Some(nodes)
    };
    let nodes = wait_for("node B registered", Duration::from_secs(20), || async {
        list()
            .await
            .filter(|n| n.len() == 1 && n[0].health == "ready")
    })
    .await?;
    let b = nodes[0].id.clone();
    let b_host = nodes[0].hostname.clone();
    // Agent A's certificate, through the leader and through each follower (which
    // forwards naming A).
    let a_dir = pki().issue(
        &cluster.dir.path().join("agent-a-tls"),
        Principal::Agent("node-aaaa".into()),
    );
    let a_tls = Tls::load(&a_dir)?;
    for id in 1..=3u64 {
        let ch = transport::connect(
            &cluster.node(id).api_addr,
            &options(Some(a_tls.clone()), ServerKind::Controller),
        )
        .await?;
        let mut a = AgentControlClient::new(ch);
        let e = a
            .heartbeat(HeartbeatRequest {
                node_id: b.clone(),
                seq: 1,
                ..Default::default()
            })
            .await
            .expect_err("heartbeat for B");
        assert_eq!(e.code(), Code::PermissionDenied, "controller {id}: {e:?}");
        let e = a
            .register_node(RegisterNodeRequest {
                node_id: b.clone(),
                hostname: "evil".into(),
                ..Default::default()
            })
            .await
            .expect_err("register B");
        assert_eq!(e.code(), Code::PermissionDenied, "controller {id}: {e:?}");
        let e = a
            .report_allocations(ReportAllocationsRequest {
                node_id: b.clone(),
                reports: vec![],
            })
            .await
            .expect_err("report for B");
        assert_eq!(e.code(), Code::PermissionDenied, "controller {id}: {e:?}");
        let e = match a
            .watch_allocations(WatchAllocationsRequest {
                node_id: b.clone(),
                after_revision: 0,
            })
            .await
        {
            Err(e) => e,
            Ok(mut stream) => stream.get_mut().message().await.expect_err("watch for B"),
        };
        assert_eq!(e.code(), Code::PermissionDenied, "controller {id}: {e:?}");
        // For its own node, the same certificate is heard (the leader asks it to
        // register first).
        let own = a
            .heartbeat(HeartbeatRequest {
                node_id: "node-aaaa".into(),
                seq: 1,
                ..Default::default()
            })
            .await;
        assert!(
            !matches!(&own, Err(e) if e.code() == Code::PermissionDenied),
            "controller {id}: {own:?}"
        );
    }
    // Each refusal was logged and counted as the node rule's.
    let metrics = http_get(&cluster.node(leader).metrics_addr, "/metrics").expect("metrics");
    assert!(
        metric_sum(&metrics, "steward_auth_refused_total", "reason=\"node\"") >= 1.0,
        "{metrics}"
    );
    let after = list().await.expect("nodes");
    assert_eq!(after.len(), 1, "no node was added: {after:?}");
    assert_eq!(after[0].id, b);
    assert_eq!(after[0].hostname, b_host, "B's registration is unchanged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_certificate_speaks_only_for_its_own_id() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(1, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let root = tempfile::tempdir()?;
    let two = Tls::load(pki().issue(&root.path().join("c2"), Principal::Controller(2)))?;
    let ch = transport::connect(
        &cluster.node(leader).raft_addr,
        &options(Some(two), ServerKind::Controller),
    )
    .await?;
    let mut raft = transport::raft_client(ch);
    let claim = |id: u64| steward_proto::v1::RaftRequest {
        from: Some(steward_proto::v1::PeerIdentity {
            controller_id: id,
            incarnation: 0,
            feature_level: 1,
        }),
        to_controller_id: leader,
        to_incarnation: 0,
        payload: vec![1, 2, 3],
    };
    // Controller 2's certificate claiming to be controller 3: refused before anything
    // is decoded.
    let e = raft.vote(claim(3)).await.expect_err("impersonation");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nor by naming controller 3 as the caller it forwards for.
    let mut forged = tonic::Request::new(claim(3));
    forged.metadata_mut().insert(
        steward_runtime::access::ON_BEHALF_OF,
        "spiffe://it/controller/3".parse()?,
    );
    let e = raft
        .vote(forged)
        .await
        .expect_err("impersonation by forwarding");
    assert!(e.message().contains("x-steward-on-behalf-of"), "{e:?}");
    // As itself it is heard (and its garbage payload refused as such).
    let e = raft.vote(claim(2)).await.expect_err("garbage payload");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    Ok(())
}

/// `steward ARGS` with the TLS dir `dir` against `addrs`.
fn steward_as(dir: &Path, addrs: &str, args: &[&str]) -> Output {
    steward_cmd()
        .env("STEWARD_TLS_DIR", dir)
        .env("STEWARD_ADDR", addrs)
        .args(args)
        .output()
        .expect("run steward")
}

fn denied(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_and_an_operator_changes() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let dir = cluster.dir.path().join("agent");
    let api = format!("127.0.0.1:{}", steward_tests::free_port());
    let child = spawn_agent(&dir, &addrs, &["--api-addr", &api], None)?;
    let _agent = AgentGuard::new(&dir, child);
    let viewer = pki().client_dir(Role::Viewer);
    let operator = pki().client_dir(Role::Operator);
    let node = wait_for("the agent registered", Duration::from_secs(20), || async {
        let out = steward_as(&viewer, &addrs, &["node", "list", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list.get(0)?["id"]
            .as_str()
            .or_else(|| list.get(0)?["node_id"].as_str())
            .map(str::to_string)
    })
    .await?;
    // A viewer reads (through any controller; a follower forwards naming the viewer).
    let status = steward_as(&viewer, &addrs, &["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let changes: [&[&str]; 5] = [
        &["kv", "put", "k", "v"],
        &["job", "cancel", "job-0000"],
        &["object", "tag", "models/m", "1", "prod"],
        &["operator", "raft", "remove-peer", "9"],
        &[
            "node", "fault", &node, "--agent", &api, "--gpu", "0", "xid", "79",
        ],
    ];
    for args in changes {
        let out = steward_as(&viewer, &addrs, args);
        assert!(
            denied(&out),
            "a viewer may not {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // An operator may: the call reaches its handler (which may still say the job or
        // the object does not exist).
        let out = steward_as(&operator, &addrs, args);
        assert!(
            !denied(&out),
            "an operator may {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the operator did took effect.
    let got = steward_as(&viewer, &addrs, &["kv", "get", "k", "-o", "json"]);
    assert!(String::from_utf8_lossy(&got.stdout).contains("\"v\""));
    Ok(())
}

/// The DER of the certificate the server at `addr` presents.
async fn served_certificate(addr: &str) -> Option<Vec<u8>> {
    let admin = pki().admin_tls();
    let tcp: std::net::SocketAddr = addr.parse().ok()?;
    let stream = steward_runtime::tls::connect(
        &admin,
        ServerKind::Controller,
        None,
        tcp,
        None,
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    Some(stream.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn file_certificate(dir: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(dir.join("cert.pem"))
        .expect("cert.pem")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_without_a_restart() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let mut cluster = ProcCluster::start(1, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addr = cluster.node(leader).api_addr.clone();
    let mut tls_dir = cluster.node(leader).data_dir.as_os_str().to_owned();
    tls_dir.push("-tls");
    let tls_dir = std::path::PathBuf::from(tls_dir);
    let pid = cluster.pid(leader);
    assert_eq!(
        served_certificate(&addr).await,
        Some(file_certificate(&tls_dir))
    );
    // A new key and certificate for the same controller, as a rotation writes them.
    pki().issue(&tls_dir, Principal::Controller(leader));
    let fresh = file_certificate(&tls_dir);
    wait_for(
        "the new certificate served",
        Duration::from_secs(15),
        || async { (served_certificate(&addr).await.as_ref() == Some(&fresh)).then_some(()) },
    )
    .await?;
    assert_eq!(cluster.pid(leader), pid, "no restart");
    // Calls work over the new certificate.
    let mut c = cluster.client(leader).await?;
    c.status(StatusRequest::default()).await?;
    // A certificate naming another controller is not taken: the old one stays. (Each
    // connection makes the server check its files.)
    pki().issue(&tls_dir, Principal::Controller(leader + 1));
    let served = wait_for("the reload refused", Duration::from_secs(15), || async {
        let served = served_certificate(&addr).await;
        cluster
            .log_text(leader)
            .contains("restart it to change who it is")
            .then_some(served)
    })
    .await?;
    assert_eq!(served.as_ref(), Some(&fresh));
    cluster.kill(leader);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_and_bad_chunk_ids_are_refused() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = cluster.dir.path().join("agent");
    let api = format!("127.0.0.1:{}", steward_tests::free_port());
    let child = spawn_agent(&dir, &cluster.addrs(), &["--api-addr", &api], None)?;
    let _agent = AgentGuard::new(&dir, child);
    let ch = wait_for("the agent API", Duration::from_secs(20), || async {
        steward_tests::channel(&api, ServerKind::Agent, Duration::from_secs(10))
            .await
            .ok()
    })
    .await?;
    let mut chunks = transport::chunk_client(ch.clone());
    // The chunk service takes messages up to 2 MiB: 3 MiB is refused before decoding. (A
    // client without Steward's own limit, which would refuse to send it.)
    let mut unlimited =
        steward_proto::v1::chunk_service_client::ChunkServiceClient::new(ch.clone());
    let big = vec![7u8; 3 << 20];
    let first = PutChunkRequest {
        chunk_id: steward_core::chunk::ChunkId::of(&big).to_string(),
        size: big.len() as u64,
        data: big.into(),
    };
    let e = unlimited
        .put_chunk(futures::stream::iter([first]))
        .await
        .expect_err("over the limit");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let started = Instant::now();
    tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "health answered late"
    );
    // Bad chunk ids: refused before the store is touched.
    let chunks_dir = dir.join("chunks");
    let listing = |p: &Path| {
        let mut v: Vec<_> = walk(p);
        v.sort();
        v
    };
    let before = listing(&chunks_dir);
    let hex63 = "a".repeat(63);
    let upper = "A".repeat(64);
    for bad in ["../x", hex63.as_str(), upper.as_str(), "../../etc/passwd"] {
        let e = match chunks
            .get_chunk(GetChunkRequest {
                chunk_id: bad.to_string(),
                ..Default::default()
            })
            .await
        {
            Err(e) => e,
            Ok(mut s) => s.get_mut().message().await.expect_err("a bad id"),
        };
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        let e = chunks
            .put_chunk(futures::stream::iter([PutChunkRequest {
                chunk_id: bad.to_string(),
                size: 1,
                data: vec![1].into(),
            }]))
            .await
            .expect_err("a bad id");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }
    assert_eq!(listing(&chunks_dir), before, "the store is untouched");
    assert!(!dir.join("x").exists() && !dir.parent().expect("parent").join("x").exists());
    Ok(())
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

/// Python's grpcio as an outside client: lists the services through reflection and calls
/// `Admin/Status` on the controller at `addr`, with the TLS dir `tls` (ca.pem, and
/// cert.pem and key.pem unless `with_cert` is false). `Ok(services)`, or `Err(stderr)`;
/// `None` when python3 with grpcio is not installed.
pub fn python_grpc(addr: &str, tls: &Path, with_cert: bool) -> Option<Result<Vec<String>, String>> {
    const SCRIPT: &str = r#"
import sys, grpc
addr, ca, cert, key, name = sys.argv[1:6]
read = lambda p: open(p, "rb").read() if p else None
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", name)])
def fields(buf):
    i = 0
    while i < len(buf):
        key = 0; shift = 0
        while True:
            b = buf[i]; i += 1; key |= (b & 0x7f) << shift; shift += 7
            if b < 0x80: break
        num, wire = key >> 3, key & 7
        if wire == 2:
            n = 0; shift = 0
            while True:
                b = buf[i]; i += 1; n |= (b & 0x7f) << shift; shift += 7
                if b < 0x80: break
            yield num, buf[i:i + n]; i += n
        elif wire == 0:
            while buf[i] >= 0x80: i += 1
            i += 1
        else:
            raise ValueError("unexpected wire type %d" % wire)
info = ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
reply = next(info(iter([b"\x3a\x00"]), timeout=10))
names = []
for num, body in fields(reply):
    if num == 6:
        for n2, svc in fields(body):
            if n2 == 1:
                names += [v.decode() for n3, v in fields(svc) if n3 == 1]
status = ch.unary_unary("/steward.v1.Admin/Status")(b"", timeout=10)
assert len(status) > 0, "an empty status"
print("\n".join(names))
"#;
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import grpc"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let file = |name: &str| tls.join(name).display().to_string();
    let (cert, key) = match with_cert {
        true => (file("cert.pem"), file("key.pem")),
        false => (String::new(), String::new()),
    };
    let out = std::process::Command::new(python)
        .args(["-c", SCRIPT, addr, &file("ca.pem"), &cert, &key])
        .arg(steward_runtime::tls::server_name(
            &Tls::load(tls).ok()?.identity().cluster,
            ServerKind::Controller,
        ))
        .output()
        .ok()?;
    Some(match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()),
        false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
    })
}

/// Runs [`python_grpc`] with and without the certificate and checks both outcomes; skips
/// (or fails under STEWARD_REQUIRE_ALL_TESTS=1) without python3-grpcio.
pub fn check_outside_client(addr: &str, tls: &Path) {
    let Some(with) = python_grpc(addr, tls, true) else {
        assert!(
            std::env::var("STEWARD_REQUIRE_ALL_TESTS").as_deref() != Ok("1"),
            "python3 with grpcio is required (`make deps` installs python3-grpcio)"
        );
        eprintln!("SKIPPED: python3 with grpcio is not installed (`make deps`)");
        return;
    };
    let services = with.unwrap_or_else(|e| panic!("grpcio with the certificate failed: {e}"));
    assert!(
        services.iter().any(|s| s == "steward.v1.Admin"),
        "reflection lists Admin: {services:?}"
    );
    let without = python_grpc(addr, tls, false).expect("python");
    assert!(
        without.is_err(),
        "served without a certificate: {without:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_grpc_client_needs_a_certificate() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(1, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addr = cluster.node(leader).api_addr.clone();
    tokio::task::spawn_blocking(move || check_outside_client(&addr, &pki().admin_dir())).await?;
    Ok(())
}

/// `steward ARGS` with the TLS dir `dir` and bearer `token` against `addrs`.
fn steward_with_token(dir: &Path, token: &str, addrs: &str, args: &[&str]) -> Output {
    steward_cmd()
        .env("STEWARD_TLS_DIR", dir)
        .env("STEWARD_TOKEN", token)
        .env("STEWARD_ADDR", addrs)
        .args(args)
        .output()
        .expect("run steward")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_raise_a_role_until_revoked_or_expired() -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let viewer = pki().client_dir(Role::Viewer);
    let admin = pki().admin_dir();
    let json = |out: &Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    // Bootstrap: an admin certificate, once.
    let out = steward_as(&viewer, &addrs, &["acl", "bootstrap"]);
    assert!(denied(&out), "a viewer may not bootstrap");
    let boot = json(&steward_as(
        &admin,
        &addrs,
        &["acl", "bootstrap", "-o", "json"],
    ));
    let boot_token = boot["token"].as_str().expect("token").to_string();
    let again = steward_as(&admin, &addrs, &["acl", "bootstrap"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("bootstrapped already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The bootstrap token makes a viewer certificate an admin: it makes an operator token.
    let op = json(&steward_with_token(
        &viewer,
        &boot_token,
        &addrs,
        &[
            "acl", "token", "create", "--role", "operator", "--name", "ci", "-o", "json",
        ],
    ));
    let op_token = op["token"].as_str().expect("token").to_string();
    let op_accessor = op["accessor"].as_str().expect("accessor").to_string();
    // A viewer with the operator token may write, through any controller (a follower
    // checks the token, forwards it, and the leader checks it again).
    wait_for(
        "the token usable everywhere",
        Duration::from_secs(10),
        || async {
            let out = steward_with_token(&viewer, &op_token, &addrs, &["kv", "put", "k", "v"]);
            out.status.success().then_some(())
        },
    )
    .await?;
    for id in 1..=3u64 {
        let one = cluster.node(id).api_addr.clone();
        let out = steward_with_token(&viewer, &op_token, &one, &["kv", "put", "k", "v"]);
        assert!(
            out.status.success(),
            "controller {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // But not an admin's: an operator token cannot make tokens.
    let out = steward_with_token(
        &viewer,
        &op_token,
        &addrs,
        &["acl", "token", "create", "--role", "admin"],
    );
    assert!(denied(&out), "{}", String::from_utf8_lossy(&out.stderr));
    // The list shows accessors, never secrets, and the state holds no secret either.
    let listed = steward_as(&admin, &addrs, &["acl", "token", "list", "-o", "json"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        text.contains(&op_accessor) && !text.contains(&op_token[21..]),
        "{text}"
    );
    let snap = cluster.dir.path().join("state.snap");
    let saved = steward_as(
        &admin,
        &addrs,
        &[
            "operator",
            "snapshot",
            "save",
            snap.to_str().expect("utf-8"),
        ],
    );
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let bytes = std::fs::read(&snap)?;
    let secret = &op_token.as_bytes()[21..];
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret),
        "the secret is not in the state"
    );
    // Token records are not KV entries an operator can see or write.
    let keys = steward_as(&admin, &addrs, &["kv", "list", "-o", "json"]);
    assert!(
        keys.status.success(),
        "{}",
        String::from_utf8_lossy(&keys.stderr)
    );
    let listed = String::from_utf8_lossy(&keys.stdout);
    assert!(
        listed.contains("\"k\"") && !listed.contains("_steward/"),
        "{listed}"
    );
    let forged = steward_as(
        &admin,
        &addrs,
        &["kv", "put", "_steward/acl/tokens/x", "{}"],
    );
    assert!(!forged.status.success(), "the reserved prefix is refused");
    // Revoked: refused by every controller within 1 s of the revoke's answer.
    let revoke = steward_as(&admin, &addrs, &["acl", "token", "revoke", &op_accessor]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let revoked_at = Instant::now();
    for id in 1..=3u64 {
        let one = cluster.node(id).api_addr.clone();
        wait_for(
            "the revoked token refused",
            Duration::from_secs(1),
            || async {
                let out = steward_with_token(&viewer, &op_token, &one, &["kv", "put", "k", "v2"]);
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                (!out.status.success()
                    && (err.contains("unknown token") || err.contains("revoked")))
                .then_some(())
            },
        )
        .await?;
    }
    eprintln!(
        "revoked token refused everywhere {:?} after the revoke",
        revoked_at.elapsed()
    );
    // Expired: a token with a one-second life stops working.
    let short = json(&steward_with_token(
        &viewer,
        &boot_token,
        &addrs,
        &[
            "acl", "token", "create", "--role", "operator", "--ttl", "1s", "-o", "json",
        ],
    ));
    let short_token = short["token"].as_str().expect("token").to_string();
    wait_for(
        "the short token expired",
        Duration::from_secs(10),
        || async {
            let out = steward_with_token(&viewer, &short_token, &addrs, &["kv", "put", "k", "v3"]);
            String::from_utf8_lossy(&out.stderr)
                .contains("expired")
                .then_some(())
        },
    )
    .await?;
    // A malformed token is refused outright.
    let out = steward_with_token(&admin, "not-a-token", &addrs, &["status"]);
    assert!(!out.status.success());
    Ok(())
}

/// The nodes the cluster knows, as `steward node list -o json` prints them.
fn node_list(addrs: &str) -> Option<Vec<serde_json::Value>> {
    let out = steward_cmd()
        .env("STEWARD_ADDR", addrs)
        .args(["node", "list", "-o", "json"])
        .output()
        .ok()?;
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registering_another_nodes_address_is_never_dialed_as_that_node(
) -> anyhow::Result<()> {
    if skipped() {
        return Ok(());
    }
    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let b_dir = cluster.dir.path().join("agent-b");
    let b_api = format!("127.0.0.1:{}", steward_tests::free_port());
    let _b = AgentGuard::new(
        &b_dir,
        spawn_agent(&b_dir, &addrs, &["--api-addr", &b_api], None)?,
    );
    // Agent L advertises B's address as its own API address: a compromised agent trying
    // to have calls meant for it land on B (or an address B took over from L).
    let l_dir = cluster.dir.path().join("agent-l");
    let _l = AgentGuard::new(
        &l_dir,
        spawn_agent(&l_dir, &addrs, &["--advertise-addr", &b_api], None)?,
    );
    let nodes = wait_for(
        "both agents registered",
        Duration::from_secs(30),
        || async {
            node_list(&addrs).filter(|n| n.len() == 2 && n.iter().all(|n| n["state"] == "ready"))
        },
    )
    .await?;
    let b = std::fs::read_to_string(b_dir.join("node-id"))?
        .trim()
        .to_string();
    let l = std::fs::read_to_string(l_dir.join("node-id"))?
        .trim()
        .to_string();
    for n in &nodes {
        assert_eq!(
            n["agent_api_addr"],
            b_api.as_str(),
            "both registered B's address: {n}"
        );
    }
    // A call meant for L reaches B's address and is refused before any request is sent:
    // B's certificate does not name L.
    let out = steward_cmd()
        .env("STEWARD_ADDR", &addrs)
        .args(["node", "scrub", &l])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a scrub meant for {l} ran on {b}");
    assert!(
        stderr.contains(&format!("is not the agent of node `{l}`")) && stderr.contains(&b),
        "{stderr}"
    );
    // The same command for B, at the same address, is served.
    let out = steward_cmd()
        .env("STEWARD_ADDR", &addrs)
        .args(["node", "scrub", &b, "-o", "json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
