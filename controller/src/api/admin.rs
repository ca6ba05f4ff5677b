//! The operator admin API (`steward.v1.Admin`): one line per method, each delegating to
//! its area's module.

use std::sync::Arc;

use steward_proto::v1::admin_server::Admin;
use steward_proto::v1::*;
use tonic::{Request, Response, Status, Streaming};

use super::snapshot::ChunkStream;
use super::{acl, jobs, kv, membership, nodes, objects, snapshot, status, storage, ApiContext};

pub struct AdminService {
    ctx: Arc<ApiContext>,
}

impl AdminService {
    pub fn new(ctx: Arc<ApiContext>) -> Self {
        AdminService { ctx }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, r: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        status::status(&self.ctx, r).await
    }

    async fn kv_put(&self, r: Request<KvPutRequest>) -> Result<Response<KvPutReply>, Status> {
        kv::put(&self.ctx, r).await
    }

    async fn kv_get(&self, r: Request<KvGetRequest>) -> Result<Response<KvGetReply>, Status> {
        kv::get(&self.ctx, r).await
    }

    async fn kv_list(&self, r: Request<KvListRequest>) -> Result<Response<KvListReply>, Status> {
        kv::list(&self.ctx, r).await
    }

    async fn kv_delete(
        &self,
        r: Request<KvDeleteRequest>,
    ) -> Result<Response<KvDeleteReply>, Status> {
        kv::delete(&self.ctx, r).await
    }

    async fn add_learner(
        &self,
        r: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        membership::add_learner(&self.ctx, r).await
    }

    async fn promote(
        &self,
        r: Request<PromoteRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        membership::promote(&self.ctx, r).await
    }

    async fn remove_peer(
        &self,
        r: Request<RemovePeerRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        membership::remove_peer(&self.ctx, r).await
    }

    async fn transfer_leader(
        &self,
        r: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderReply>, Status> {
        membership::transfer_leader(&self.ctx, r).await
    }

    async fn list_nodes(
        &self,
        r: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        nodes::list(&self.ctx, r).await
    }

    async fn node_events(
        &self,
        r: Request<NodeEventsRequest>,
    ) -> Result<Response<NodeEventsReply>, Status> {
        nodes::events(&self.ctx, r).await
    }

    async fn remove_node(
        &self,
        r: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeReply>, Status> {
        nodes::remove(&self.ctx, r).await
    }

    async fn submit_job(
        &self,
        r: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobReply>, Status> {
        jobs::submit(&self.ctx, r).await
    }

    async fn plan_job(&self, r: Request<PlanJobRequest>) -> Result<Response<PlanJobReply>, Status> {
        jobs::plan(&self.ctx, r).await
    }

    async fn list_jobs(
        &self,
        r: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        jobs::list(&self.ctx, r).await
    }

    async fn get_job(&self, r: Request<GetJobRequest>) -> Result<Response<JobPb>, Status> {
        jobs::get(&self.ctx, r).await
    }

    async fn cancel_job(
        &self,
        r: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobReply>, Status> {
        jobs::cancel(&self.ctx, r).await
    }

    async fn list_allocations(
        &self,
        r: Request<ListAllocationsRequest>,
    ) -> Result<Response<ListAllocationsReply>, Status> {
        jobs::list_allocations(&self.ctx, r).await
    }

    async fn get_allocation(
        &self,
        r: Request<GetAllocationRequest>,
    ) -> Result<Response<AllocationPb>, Status> {
        jobs::get_allocation(&self.ctx, r).await
    }

    async fn set_node_scheduling(
        &self,
        r: Request<SetNodeSchedulingRequest>,
    ) -> Result<Response<SetNodeSchedulingReply>, Status> {
        jobs::set_node_scheduling(&self.ctx, r).await
    }

    async fn node_scheduling(
        &self,
        r: Request<NodeSchedulingRequest>,
    ) -> Result<Response<NodeSchedulingReply>, Status> {
        jobs::node_scheduling(&self.ctx, r).await
    }

    async fn plan_object_put(
        &self,
        r: Request<PlanObjectPutRequest>,
    ) -> Result<Response<PlanObjectPutReply>, Status> {
        objects::plan_put(&self.ctx, r).await
    }

    async fn commit_object_version(
        &self,
        r: Request<CommitObjectVersionRequest>,
    ) -> Result<Response<CommitObjectVersionReply>, Status> {
        objects::commit(&self.ctx, r).await
    }

    async fn get_object(
        &self,
        r: Request<GetObjectRequest>,
    ) -> Result<Response<GetObjectReply>, Status> {
        objects::get(&self.ctx, r).await
    }

    async fn list_objects(
        &self,
        r: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsReply>, Status> {
        objects::list(&self.ctx, r).await
    }

    async fn object_info(
        &self,
        r: Request<ObjectInfoRequest>,
    ) -> Result<Response<ObjectInfoReply>, Status> {
        objects::info(&self.ctx, r).await
    }

    async fn move_object_tag(
        &self,
        r: Request<MoveObjectTagRequest>,
    ) -> Result<Response<MoveObjectTagReply>, Status> {
        objects::move_tag(&self.ctx, r).await
    }

    async fn delete_object(
        &self,
        r: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectReply>, Status> {
        objects::delete(&self.ctx, r).await
    }

    async fn fsck(&self, r: Request<FsckRequest>) -> Result<Response<FsckReply>, Status> {
        storage::fsck(&self.ctx, r).await
    }

    async fn locate_chunk(
        &self,
        r: Request<LocateChunkRequest>,
    ) -> Result<Response<LocateChunkReply>, Status> {
        storage::locate(&self.ctx, r).await
    }

    async fn set_node_maintenance(
        &self,
        r: Request<SetNodeMaintenanceRequest>,
    ) -> Result<Response<SetNodeMaintenanceReply>, Status> {
        storage::set_maintenance(&self.ctx, r).await
    }

    type SnapshotSaveStream = ChunkStream;

    async fn acl_bootstrap(
        &self,
        r: Request<AclBootstrapRequest>,
    ) -> Result<Response<AclTokenCreated>, Status> {
        acl::bootstrap(&self.ctx, r).await
    }

    async fn create_acl_token(
        &self,
        r: Request<CreateAclTokenRequest>,
    ) -> Result<Response<AclTokenCreated>, Status> {
        acl::create(&self.ctx, r).await
    }

    async fn list_acl_tokens(
        &self,
        r: Request<ListAclTokensRequest>,
    ) -> Result<Response<ListAclTokensReply>, Status> {
        acl::list(&self.ctx, r).await
    }

    async fn revoke_acl_token(
        &self,
        r: Request<RevokeAclTokenRequest>,
    ) -> Result<Response<RevokeAclTokenReply>, Status> {
        acl::revoke(&self.ctx, r).await
    }

    async fn snapshot_save(
        &self,
        r: Request<SnapshotSaveRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        snapshot::save(&self.ctx, r).await
    }

    async fn snapshot_restore(
        &self,
        r: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotRestoreReply>, Status> {
        snapshot::restore(&self.ctx, r).await
    }
}
