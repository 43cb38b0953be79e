//! `etcdserverpb.Cluster`.

use super::{caller, status};
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
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.0
            .check_admin(&caller(&self.0, &req).await?)
            .map_err(status)?;
        self.0
            .member_add(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.0
            .check_admin(&caller(&self.0, &req).await?)
            .map_err(status)?;
        self.0
            .member_remove(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.0
            .check_admin(&caller(&self.0, &req).await?)
            .map_err(status)?;
        self.0
            .member_update(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.0
            .member_list(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.0
            .check_admin(&caller(&self.0, &req).await?)
            .map_err(status)?;
        self.0
            .member_promote(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
