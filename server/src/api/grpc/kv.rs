//! `etcdserverpb.KV`.

use super::{caller, require_leader, status};
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::kv_server::Kv;
use etcd_proto::etcdserverpb::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct KvService(pub Arc<EtcdServer>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = caller(&self.0, &req).await?;
        self.0
            .range(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = caller(&self.0, &req).await?;
        self.0
            .put(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = caller(&self.0, &req).await?;
        self.0
            .delete_range(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = caller(&self.0, &req).await?;
        self.0
            .txn(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = caller(&self.0, &req).await?;
        self.0
            .compact(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
