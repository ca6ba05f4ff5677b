//! The agent's own gRPC API (`steward.v1.AgentApi`) on `--api-addr`: the latest telemetry,
//! and the controls of simulated GPUs (assigned load, fault injection). The chunk store and
//! job execution will add their services on the same listener.

use std::sync::Arc;

use steward_proto::v1::agent_api_server::{AgentApi, AgentApiServer};
use steward_proto::v1::{
    GetTelemetryRequest, GpuFault, InjectGpuFaultReply, InjectGpuFaultRequest, NodeTelemetry,
    SetGpuLoadReply, SetGpuLoadRequest,
};
use steward_runtime::transport;
use tonic::{Request, Response, Status};

use crate::hardware::simulated::{Fault, SimulatedGpus};
use crate::hardware::ProbeError;
use crate::telemetry::Telemetry;

pub struct AgentApiService {
    telemetry: Arc<Telemetry>,
}

impl AgentApiService {
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        AgentApiService { telemetry }
    }

    fn simulation(&self) -> Result<&SimulatedGpus, Status> {
        self.telemetry.probe().simulation().ok_or_else(|| {
            Status::failed_precondition(
                "this agent reads real GPUs through NVML; load and fault injection need simulated GPUs (--simulate-gpus)",
            )
        })
    }
}

fn probe_status(e: ProbeError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The simulated fault an API request asks for.
pub fn fault_of(req: &InjectGpuFaultRequest) -> Result<Fault, Status> {
    match GpuFault::try_from(req.fault) {
        Ok(GpuFault::Xid) if req.xid > 0 => Ok(Fault::Xid(req.xid)),
        Ok(GpuFault::Xid) => Err(Status::invalid_argument("an XID fault needs `xid` above 0")),
        Ok(GpuFault::EccDoubleBit) => Ok(Fault::EccDoubleBit),
        Ok(GpuFault::EccSingleBit) => Ok(Fault::EccSingleBit),
        Ok(GpuFault::OverTemperature) => Ok(Fault::OverTemperature),
        Ok(GpuFault::FellOffBus) => Ok(Fault::FellOffBus),
        Ok(GpuFault::Clear) => Ok(Fault::Clear),
        Ok(GpuFault::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "unknown fault {}; one of: xid, ecc-double-bit, ecc-single-bit, over-temperature, fell-off-bus, clear",
            req.fault
        ))),
    }
}

#[tonic::async_trait]
impl AgentApi for AgentApiService {
    async fn get_telemetry(
        &self,
        _request: Request<GetTelemetryRequest>,
    ) -> Result<Response<NodeTelemetry>, Status> {
        Ok(Response::new(self.telemetry.latest().to_proto()))
    }

    async fn inject_gpu_fault(
        &self,
        request: Request<InjectGpuFaultRequest>,
    ) -> Result<Response<InjectGpuFaultReply>, Status> {
        let req = request.into_inner();
        let fault = fault_of(&req)?;
        self.simulation()?
            .inject(req.gpu_index, fault)
            .map_err(probe_status)?;
        tracing::warn!(gpu = req.gpu_index, ?fault, "simulated GPU fault injected");
        self.telemetry.sample_soon();
        Ok(Response::new(InjectGpuFaultReply {}))
    }

    async fn set_gpu_load(
        &self,
        request: Request<SetGpuLoadRequest>,
    ) -> Result<Response<SetGpuLoadReply>, Status> {
        let req = request.into_inner();
        self.simulation()?
            .set_load(req.gpu_index, req.util_pct, req.memory_used_mib)
            .map_err(probe_status)?;
        self.telemetry.sample_soon();
        Ok(Response::new(SetGpuLoadReply {}))
    }
}

/// Serves the agent API (with gRPC health) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    telemetry: Arc<Telemetry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentApiServer<AgentApiService>>()
        .await;
    let router = transport::grpc_server()
        .add_service(health_service)
        .add_service(transport::agent_api_server(AgentApiService::new(telemetry)));
    if let Err(e) = transport::serve(router, listener, shutdown).await {
        tracing::error!(error = %e, "agent API stopped");
    }
}
