//! `etcdserverpb.Lease`.

use super::{caller, status, until_stopped};
use crate::error::Error;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::lease_server::Lease;
use etcd_proto::etcdserverpb::*;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The service, and the signal that ends open KeepAlive streams when the member stops.
pub struct LeaseService(pub Arc<EtcdServer>, pub tokio::sync::watch::Receiver<bool>);

/// Answers one keepalive of a LeaseKeepAlive stream (shared by the gRPC face and the gateway).
pub(crate) async fn keep_alive_once(
    server: &EtcdServer,
    id: i64,
) -> Result<LeaseKeepAliveResponse, Status> {
    match server.lease_renew(id).await {
        Ok(resp) => Ok(resp),
        // An unknown or expired lease answers TTL 0 and keeps the stream open.
        Err(Error::LeaseNotFound) => Ok(LeaseKeepAliveResponse {
            header: Some(server.header(server.store.current_rev())),
            id,
            ttl: 0,
        }),
        Err(e) => Err(status(e)),
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.0
            .lease_grant(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let who = caller(&self.0, &req).await?;
        self.0
            .lease_revoke(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    type LeaseKeepAliveStream = Pin<
        Box<dyn futures::Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>,
    >;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let server = self.0.clone();
        let out = req.into_inner().then(move |r| {
            let server = server.clone();
            async move { keep_alive_once(&server, r?.id).await }
        });
        Ok(Response::new(Box::pin(until_stopped(
            Box::pin(out),
            self.1.clone(),
        ))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.0
            .lease_time_to_live(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.0
            .lease_leases()
            .await
            .map(Response::new)
            .map_err(status)
    }
}
