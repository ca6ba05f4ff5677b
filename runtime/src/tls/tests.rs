//! Mutual TLS in process: a gRPC server behind `accept`, clients through `connect`, and
//! every refusal the issue names (plaintext, no certificate, another CA, expired, another
//! cluster), plus rotation without a restart.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use steward_core::identity::{Identity, Principal, Role};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::issue::{create_ca, create_cert, write_cert, CaPem};
use super::net::HandshakeStats;
use super::*;

/// Polls `f` every 50 ms until it gives a value (15 s at most).
async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn id(cluster: &str, principal: Principal) -> Identity {
    Identity::new(cluster, principal).expect("valid identity")
}

fn client(name: &str, role: Role) -> Principal {
    Principal::Client {
        name: name.into(),
        role,
    }
}

/// Writes a TLS dir for `identity` signed by `ca` (validity shifted `back_days` into the
/// past) and loads it.
fn tls_dir(root: &Path, name: &str, ca: &CaPem, identity: &Identity, back_days: i64) -> Tls {
    let dir = root.join(name);
    let cert = create_cert(ca, identity, 30, back_days).expect("cert");
    write_cert(&dir, &cert, true).expect("write");
    Tls::load(&dir).expect("load")
}

type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A health server behind TLS; returns its address, handshake counters and the
/// identities its requests arrived with.
async fn server(tls: Tls) -> (SocketAddr, Arc<HandshakeStats>, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(HandshakeStats::default());
    let incoming = accept(listener, tls, stats.clone());
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen: Seen = Default::default();
    let record = seen.clone();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            let peer = req
                .extensions()
                .get::<PeerIdentity>()
                .ok_or_else(|| tonic::Status::unauthenticated("no peer identity"))?;
            record.lock().expect("lock").push(peer.identity.uri());
            Ok(req)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    (addr, stats, seen)
}

/// A health check over TLS as `tls`'s identity, to a controller.
async fn check(tls: &Tls, addr: SocketAddr) -> Result<(), String> {
    check_kind(tls, addr, ServerKind::Controller).await
}

/// A health check over TLS as `tls`'s identity, to a server of `kind`.
async fn check_kind(tls: &Tls, addr: SocketAddr, kind: ServerKind) -> Result<(), String> {
    health(open_channel_to(tls, addr, kind).await?).await
}

#[tokio::test]
async fn mutual_tls_names_the_peer_and_refuses_strangers() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    let server_tls = tls_dir(
        root.path(),
        "ctl",
        &ca,
        &id("prod", Principal::Controller(1)),
        0,
    );
    assert_eq!(server_tls.identity().uri(), "spiffe://prod/controller/1");
    let (addr, stats, seen) = server(server_tls).await;

    // A client of the cluster's CA: served, and its requests carry its identity.
    let viewer = tls_dir(
        root.path(),
        "viewer",
        &ca,
        &id("prod", client("alice", Role::Viewer)),
        0,
    );
    check(&viewer, addr)
        .await
        .expect("a cluster client is served");
    let agent = tls_dir(
        root.path(),
        "agent",
        &ca,
        &id("prod", Principal::Agent("n1".into())),
        0,
    );
    check(&agent, addr).await.expect("an agent is served");
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 2);
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            "spiffe://prod/client/viewer/alice",
            "spiffe://prod/agent/n1"
        ]
    );

    // Plaintext: refused at the handshake.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await;
    let plain = match plain {
        Ok(ch) => HealthClient::new(ch)
            .check(HealthCheckRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(plain.is_err(), "plaintext is refused");

    // Another CA, and an expired certificate of ours: refused.
    let foreign_ca = create_ca("prod", 30).expect("ca");
    let foreign = tls_dir(
        root.path(),
        "foreign",
        &foreign_ca,
        &id("prod", client("mallory", Role::Admin)),
        0,
    );
    assert!(
        check(&foreign, addr).await.is_err(),
        "a foreign CA is refused"
    );
    let expired = tls_dir(
        root.path(),
        "expired",
        &ca,
        &id("prod", client("old", Role::Admin)),
        60,
    );
    assert!(
        check(&expired, addr).await.is_err(),
        "an expired certificate is refused"
    );

    // No certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut no_cert = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from(server_name("prod", ServerKind::Controller)).expect("name");
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(no_cert))
        .connect(name, tcp)
        .await;
    // TLS 1.3: the client may finish before the server's refusal arrives; the first read
    // then fails.
    if let Ok(mut s) = handshake {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let read = s.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "no certificate: refused");
    }

    // A certificate of our CA for another cluster names no identity here.
    let other = tls_dir(
        root.path(),
        "other-cluster",
        &ca,
        &id("staging", client("bob", Role::Admin)),
        0,
    );
    // Its own client refuses our servers (they are not servers of "staging")...
    assert!(
        check(&other, addr).await.is_err(),
        "another cluster is refused"
    );
    // ...and our server refuses it right after the handshake, before any request.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut s = tokio_rustls::TlsConnector::from(other.client_config())
        .connect(
            ServerName::try_from(server_name("prod", ServerKind::Controller)).expect("name"),
            tcp,
        )
        .await
        .expect("the handshake itself succeeds: same CA");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let read = s.read(&mut buf).await;
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    }
    wait_for("the refusals to be counted", || async {
        let (failed, no_id) = (
            stats.failed.load(Ordering::Relaxed),
            stats.no_identity.load(Ordering::Relaxed),
        );
        (failed >= 5 && no_id >= 1).then_some(())
    })
    .await;
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        2,
        "no stranger was accepted"
    );
}

#[tokio::test]
async fn a_client_never_trusts_a_client_certificate_as_a_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    // A "server" holding a client certificate (no server name, no server purpose).
    let impostor = tls_dir(
        root.path(),
        "impostor",
        &ca,
        &id("prod", client("eve", Role::Admin)),
        0,
    );
    let (addr, _, _) = server(impostor).await;
    let agent = tls_dir(
        root.path(),
        "agent",
        &ca,
        &id("prod", Principal::Agent("n1".into())),
        0,
    );
    assert!(check(&agent, addr).await.is_err());
    assert!(check_kind(&agent, addr, ServerKind::Agent).await.is_err());
}

#[tokio::test]
async fn an_agent_never_passes_as_a_controller() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    let agent_server = tls_dir(
        root.path(),
        "n2",
        &ca,
        &id("prod", Principal::Agent("n2".into())),
        0,
    );
    let (addr, _, _) = server(agent_server).await;
    let viewer = tls_dir(
        root.path(),
        "viewer",
        &ca,
        &id("prod", client("alice", Role::Viewer)),
        0,
    );
    check_kind(&viewer, addr, ServerKind::Agent)
        .await
        .expect("an agent serves as an agent");
    assert!(
        check(&viewer, addr).await.is_err(),
        "a client expecting a controller refuses an agent"
    );
}

#[tokio::test]
async fn a_client_expecting_one_node_refuses_another_nodes_agent() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    let n2 = tls_dir(
        root.path(),
        "n2",
        &ca,
        &id("prod", Principal::Agent("n2".into())),
        0,
    );
    let (addr, _, _) = server(n2).await;
    let controller = tls_dir(
        root.path(),
        "ctl",
        &ca,
        &id("prod", Principal::Controller(1)),
        0,
    );
    let options = crate::transport::ClientOptions::new(Duration::from_secs(5))
        .tls(Some(controller), ServerKind::Agent);
    let to = |node: &str| {
        let options = options.clone().node(node);
        async move { crate::transport::connect(&addr.to_string(), &options).await }
    };
    health(to("n2").await.expect("the agent of n2 answers as n2"))
        .await
        .expect("served");
    // n2 at the address n1 registered (a forged or a stale address): refused at connect,
    // before any request is sent.
    let e = to("n1").await.expect_err("n2 passing as n1");
    let text = format!("{e:?}");
    assert!(
        text.contains("is not the agent of node `n1`") && text.contains("agent/n2"),
        "{text}"
    );
    // The pool keeps one channel per (address, node): asking for n1 at n2's address
    // never hands out the channel checked for n2.
    let pool = crate::transport::ChannelPool::new(options.clone());
    health(pool.get_node(&addr.to_string(), "n2").expect("n2 channel"))
        .await
        .expect("n2 through the pool");
    assert!(
        health(pool.get_node(&addr.to_string(), "n1").expect("n1 channel"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn replaced_files_are_used_for_new_connections_without_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    let server_tls = tls_dir(
        root.path(),
        "ctl",
        &ca,
        &id("prod", Principal::Controller(1)),
        0,
    );
    let (addr, _, _) = server(server_tls).await;
    // The client starts with an expired certificate: refused.
    let who = id("prod", client("rotating", Role::Operator));
    let client_tls = tls_dir(root.path(), "client", &ca, &who, 60);
    assert!(check(&client_tls, addr).await.is_err());
    // A fresh one is written over it; the same `Tls` picks it up within RELOAD_CHECK.
    let fresh = create_cert(&ca, &who, 30, 0).expect("cert");
    write_cert(client_tls.dir(), &fresh, true).expect("write");
    wait_for("the new certificate to be used", || async {
        check(&client_tls, addr).await.ok()
    })
    .await;
    assert_eq!(client_tls.reloads(), 1);
    // A broken set keeps the last good one.
    std::fs::write(client_tls.dir().join(KEY_FILE), "not a key").expect("write");
    wait_for("the broken set to be refused", || async {
        (client_tls.reload_failures() > 0).then_some(())
    })
    .await;
    check(&client_tls, addr)
        .await
        .expect("the previous certificate is still used");
    // A certificate for someone else is not a rotation: refused, the identity stays.
    let failures = client_tls.reload_failures();
    let other = create_cert(&ca, &id("prod", client("mallory", Role::Admin)), 30, 0).expect("cert");
    write_cert(client_tls.dir(), &other, true).expect("write");
    wait_for("the other identity to be refused", || async {
        (client_tls.reload_failures() > failures).then_some(())
    })
    .await;
    assert_eq!(client_tls.identity(), who);
}

#[test]
fn a_dir_that_does_not_load_says_which_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let e = Tls::load(root.path()).expect_err("empty dir");
    assert!(e.to_string().contains(CA_FILE), "{e}");
    let ca = create_ca("prod", 30).expect("ca");
    let cert = create_cert(&ca, &id("prod", Principal::Controller(2)), 30, 0).expect("cert");
    write_cert(root.path(), &cert, false).expect("write");
    assert!(
        write_cert(root.path(), &cert, false).is_err(),
        "no silent overwrite"
    );
    assert_eq!(
        Tls::load(root.path()).expect("loads").identity(),
        id("prod", Principal::Controller(2))
    );
    std::fs::write(
        root.path().join(CERT_FILE),
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    )
    .expect("w");
    let e = Tls::load(root.path()).expect_err("bad pem");
    assert!(e.to_string().contains(CERT_FILE), "{e}");
    assert!(create_ca("Bad_Name", 30).is_err());
    assert!(create_ca("prod", 0).is_err());
}

/// A channel to the controller at `addr` over TLS as `tls`'s identity, connected now.
async fn open_channel(tls: &Tls, addr: SocketAddr) -> Result<tonic::transport::Channel, String> {
    open_channel_to(tls, addr, ServerKind::Controller).await
}

/// A channel to the server of `kind` at `addr` over TLS as `tls`'s identity.
async fn open_channel_to(
    tls: &Tls,
    addr: SocketAddr,
    kind: ServerKind,
) -> Result<tonic::transport::Channel, String> {
    let tls = tls.clone();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let tls = tls.clone();
            async move {
                connect(&tls, kind, None, addr, None, Duration::from_secs(5))
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

async fn health(ch: tonic::transport::Channel) -> Result<(), String> {
    HealthClient::new(ch)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let root = tempfile::tempdir().expect("tempdir");
    let ca = create_ca("prod", 30).expect("ca");
    let server_tls = tls_dir(
        root.path(),
        "ctl",
        &ca,
        &id("prod", Principal::Controller(1)),
        0,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(HandshakeStats::default());
    let incoming = net::accept_limited(listener, server_tls, stats.clone(), 2);
    let (_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(incoming),
    );
    let viewer = tls_dir(
        root.path(),
        "v",
        &ca,
        &id("prod", client("v", Role::Viewer)),
        0,
    );
    let first = open_channel(&viewer, addr).await.expect("first");
    health(first.clone()).await.expect("first served");
    let second = open_channel(&viewer, addr).await.expect("second");
    health(second.clone()).await.expect("second served");
    // A third connection from the same address is closed before its handshake.
    let third = match open_channel(&viewer, addr).await {
        Ok(ch) => health(ch).await,
        Err(e) => Err(e),
    };
    assert!(third.is_err(), "a third connection was served");
    assert!(stats.peer_limit.load(Ordering::Relaxed) >= 1);
    // Closing one frees its slot.
    drop(first);
    wait_for("a slot freed", || async {
        match open_channel(&viewer, addr).await {
            Ok(ch) => health(ch).await.ok(),
            Err(_) => None,
        }
    })
    .await;
    health(second).await.expect("the second still served");
}
