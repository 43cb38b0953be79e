//! `v3lockpb.Lock`: etcd's server-side lock service.

use super::require_leader;
use crate::error::Error;
use crate::service::EtcdServer;
use etcd_proto::v3lockpb::lock_server::Lock;
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// The status etcd's lock and election servers answer an error with. They run etcd's
/// `concurrency` recipes on an in-process client, whose errors are client-side error values
/// (`rpctypes.EtcdError`, or plain Go errors such as `election: not leader`) that carry no gRPC
/// code: grpc-go sends each as `Unknown` with etcd's message (`requested lease not found`
/// included, so HTTP 500 through the gateway).
pub(crate) fn client_side_status(e: Error) -> Status {
    Status::new(Code::Unknown, e.to_string())
}

pub struct LockService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Lock for LockService {
    /// Waits for the lock; tonic drops this future when the client goes away, and the service
    /// layer then removes the waiter's key.
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .lock(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .unlock(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }
}
