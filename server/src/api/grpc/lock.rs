//! `v3lockpb.Lock`: etcd's server-side lock service.

use super::{require_leader, status};
use crate::service::EtcdServer;
use etcd_proto::v3lockpb::lock_server::Lock;
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct LockService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Lock for LockService {
    /// Waits for the lock; tonic drops this future when the client goes away, and the service
    /// layer then removes the waiter's key.
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        require_leader(&self.0, &req)?;
        self.0
            .lock(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        require_leader(&self.0, &req)?;
        self.0
            .unlock(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
