//! The agent's own gRPC API on `--api-addr`: `steward.v1.AgentApi` (the latest telemetry,
//! the controls of simulated GPUs (assigned load, fault injection), and allocations' logs)
//! and `steward.v1.ChunkService` (the chunk store, `chunks::service`).

use std::sync::Arc;

use steward_proto::v1::agent_api_server::{AgentApi, AgentApiServer};
use steward_proto::v1::{
    AllocLogsRequest, GetTelemetryRequest, GpuFault, InjectGpuFaultReply, InjectGpuFaultRequest,
    LogChunk, NodeTelemetry, SetGpuLoadReply, SetGpuLoadRequest,
};
use steward_runtime::transport;
use tonic::{Request, Response, Status};

use crate::hardware::simulated::{Fault, SimulatedGpus};
use crate::hardware::ProbeError;
use crate::telemetry::Telemetry;

pub struct AgentApiService {
    telemetry: Arc<Telemetry>,
    /// Where allocations keep their logs (`DATA_DIR/allocs`).
    allocs_dir: std::path::PathBuf,
}

/// Bytes per log chunk streamed.
const LOG_CHUNK: usize = 64 * 1024;
/// How often a followed log is checked for more output.
const LOG_FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(250);

pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<LogChunk, Status>> + Send>>;

impl AgentApiService {
    pub fn new(telemetry: Arc<Telemetry>, allocs_dir: std::path::PathBuf) -> Self {
        AgentApiService {
            telemetry,
            allocs_dir,
        }
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
    type AllocLogsStream = LogStream;

    /// The allocation's stdout or stderr files, oldest first (or the last `tail_bytes`),
    /// then, with `follow`, what the task writes next (across rotations).
    async fn alloc_logs(
        &self,
        request: Request<AllocLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let req = request.into_inner();
        let valid = !req.alloc_id.is_empty()
            && req
                .alloc_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !req.alloc_id.starts_with('.');
        if !valid {
            return Err(Status::invalid_argument(format!(
                "`{}` is not an allocation id",
                req.alloc_id
            )));
        }
        let dir = self.allocs_dir.join(&req.alloc_id);
        if !dir.join("alloc.json").exists() {
            return Err(Status::not_found(format!(
                "allocation {} never ran on this node",
                req.alloc_id
            )));
        }
        let name = if req.stderr {
            "stderr.log"
        } else {
            "stdout.log"
        };
        let files =
            crate::jobs::shim::log_files(&dir, name, crate::jobs::shim::DEFAULT_MAX_LOG_FILES);
        let mut data = Vec::new();
        for f in &files {
            data.extend(std::fs::read(f).unwrap_or_default());
        }
        if req.tail_bytes > 0 && data.len() as u64 > req.tail_bytes {
            data.drain(..data.len() - req.tail_bytes as usize);
        }
        let current = dir.join(name);
        let offset = std::fs::metadata(&current).map_or(0, |m| m.len());
        let head: Vec<Result<LogChunk, Status>> = data
            .chunks(LOG_CHUNK)
            .map(|c| Ok(LogChunk { data: c.to_vec() }))
            .collect();
        let head = futures::stream::iter(head);
        if !req.follow {
            return Ok(Response::new(Box::pin(head)));
        }
        let ended = dir.join("final.json");
        let tail = futures::stream::unfold(
            (current, offset, ended),
            |(path, mut offset, ended)| async move {
                loop {
                    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                    if len < offset {
                        // Rotated: the current file is new.
                        offset = 0;
                    }
                    if len > offset {
                        let mut buf = vec![0u8; LOG_CHUNK.min((len - offset) as usize)];
                        let read = std::fs::File::open(&path).and_then(|f| {
                            use std::os::unix::fs::FileExt;
                            f.read_at(&mut buf, offset)
                        });
                        match read {
                            Ok(n) if n > 0 => {
                                buf.truncate(n);
                                offset += n as u64;
                                return Some((Ok(LogChunk { data: buf }), (path, offset, ended)));
                            }
                            _ => {}
                        }
                    }
                    if ended.exists() {
                        return None;
                    }
                    tokio::time::sleep(LOG_FOLLOW_POLL).await;
                }
            },
        );
        Ok(Response::new(Box::pin(futures::StreamExt::chain(
            head, tail,
        ))))
    }

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
    allocs_dir: std::path::PathBuf,
    chunks: crate::chunks::service::ChunkApi,
    security: transport::ServerSecurity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentApiServer<AgentApiService>>()
        .await;
    let router = transport::grpc_server(&security)
        .add_service(health_service)
        .add_service(transport::agent_api_server(AgentApiService::new(
            telemetry, allocs_dir,
        )))
        .add_service(transport::chunk_server(chunks));
    if let Err(e) = transport::serve(router, listener, shutdown, security).await {
        tracing::error!(error = %e, "agent API stopped");
    }
}
