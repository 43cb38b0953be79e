//! `etcdserverpb.Maintenance`: Status, Alarm (GET), Snapshot and MoveLeader are served; the rest answer `Unimplemented`
//! until pgraft offers them.

use super::unimplemented::unimplemented;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use etcd_proto::etcdserverpb::*;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct MaintenanceService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        match req.into_inner().action() {
            // pgraft raises no alarms (no space quota, no corruption check yet): the list is
            // truly empty.
            AlarmAction::Get => Ok(Response::new(AlarmResponse {
                header: Some(self.0.header(self.0.store.current_rev())),
                alarms: Vec::new(),
            })),
            _ => Err(unimplemented("Alarm ACTIVATE/DEACTIVATE")),
        }
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.0.status()))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(unimplemented("Defragment"))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream =
        Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let stream = self.0.snapshot().map_err(super::status)?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map_err(super::status)),
        )))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.0
            .check_admin(&super::caller(&self.0, &req).await?)
            .map_err(super::status)?;
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
