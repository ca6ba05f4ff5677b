//! Every server answers gRPC health checks and lists its services through reflection.

use std::time::Duration;

use futures::StreamExt;
use steward_tests::ProcCluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    steward_tests::channel(
        addr,
        steward_runtime::tls::ServerKind::Controller,
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serving_and_reflection_lists_admin() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let node = cluster.node(1);
    for (addr, service) in [
        (&node.api_addr, ""),
        (&node.api_addr, "steward.v1.Admin"),
        (&node.raft_addr, ""),
        (&node.raft_addr, "steward.v1.RaftService"),
    ] {
        let mut health = HealthClient::new(channel(addr).await?);
        let resp = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await?
            .into_inner();
        assert_eq!(
            resp.status,
            ServingStatus::Serving as i32,
            "{addr} {service:?}"
        );
    }

    let mut refl = ServerReflectionClient::new(channel(&node.api_addr).await?);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(futures::stream::iter([req]))
        .await?
        .into_inner();
    let resp = stream.next().await.expect("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        anyhow::bail!("unexpected reflection response {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "steward.v1.Admin",
        "steward.v1.AgentControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    Ok(())
}
