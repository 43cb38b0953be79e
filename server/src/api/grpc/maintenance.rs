//! `etcdserverpb.Maintenance`: Status, Alarm, Hash, HashKV, Defragment, Snapshot and MoveLeader
//! are served (see `service::maintenance` and `service::backup`); Downgrade answers
//! `Unimplemented` until pgraft offers it.

use super::unimplemented::unimplemented;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::*;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct MaintenanceService(pub Arc<EtcdServer>);

impl MaintenanceService {
    /// While auth is on, the calls etcd's `authMaintenanceServer` guards (Defragment, Hash,
    /// HashKV, Snapshot, MoveLeader) need root's permission, as there.
    async fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.0
            .check_admin(&super::caller(&self.0, req).await?)
            .map_err(super::status)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        self.0
            .alarm(req.into_inner())
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin(&req).await?;
        self.0
            .defragment()
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.check_admin(&req).await?;
        self.0
            .hash()
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.check_admin(&req).await?;
        self.0
            .hash_kv(req.into_inner())
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    type SnapshotStream =
        Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(&req).await?;
        let stream = self.0.snapshot().map_err(super::status)?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map_err(super::status)),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.check_admin(&req).await?;
        self.0
            .move_leader(req.into_inner())
            .await
            .map(Response::new)
            .map_err(super::status)
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
