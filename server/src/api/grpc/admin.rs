//! `pgraftpb.Admin`: pgraft's own requests on the client port, for what etcd's API does not
//! carry (the raft view of a member, adding a member under a chosen ID). The PostgreSQL
//! extension's status and membership functions use it.

use super::status;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::MemberAddResponse;
use etcd_proto::pgraftpb::admin_server::Admin;
use etcd_proto::pgraftpb::{MemberAddWithIdRequest, RaftStatusRequest, RaftStatusResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Admin for AdminService {
    async fn raft_status(
        &self,
        _req: Request<RaftStatusRequest>,
    ) -> Result<Response<RaftStatusResponse>, Status> {
        self.0
            .raft_status()
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn member_add_with_id(
        &self,
        req: Request<MemberAddWithIdRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        // A membership change: root only while auth is on, as MemberAdd.
        self.0
            .check_admin(&super::caller(&self.0, &req).await?)
            .map_err(status)?;
        let r = req.into_inner();
        self.0
            .member_add_with_id(r.id, r.peer_ur_ls, r.is_learner)
            .await
            .map(Response::new)
            .map_err(status)
    }
}
