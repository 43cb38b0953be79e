//! `etcdserverpb.Cluster`: MemberList is served; membership changes answer `Unimplemented`
//! until the multi-member cluster lands.

use super::unimplemented::unimplemented;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::cluster_server::Cluster;
use etcd_proto::etcdserverpb::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(self.0.member_list()))
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}
