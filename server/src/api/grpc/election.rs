//! `v3electionpb.Election`: etcd's server-side election service.

use super::lock::client_side_status;
use super::{leader_lost, require_leader, until, until_stopped, wants_leader};
use crate::error::Error;
use crate::service::EtcdServer;
use etcd_proto::v3electionpb::election_server::Election;
use etcd_proto::v3electionpb::*;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The service, and the signal that ends open Observe streams when the member stops.
pub struct ElectionService(pub Arc<EtcdServer>, pub tokio::sync::watch::Receiver<bool>);

#[tonic::async_trait]
impl Election for ElectionService {
    /// Waits for leadership; tonic drops this future when the client goes away, and the
    /// service layer then withdraws the candidacy.
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .campaign(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .proclaim(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .leader(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }

    type ObserveStream =
        Pin<Box<dyn futures::Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        let monitor = wants_leader(&req);
        let out = self.0.observe(&who, req.into_inner()).map(Ok);
        let out = until_stopped(Box::pin(out), self.1.clone());
        if !monitor {
            return Ok(Response::new(Box::pin(out)));
        }
        // As every `hasleader` stream: ended with `etcdserver: no leader` once the leader is
        // gone for good.
        let server = self.0.clone();
        let lost = async move {
            leader_lost(server).await;
            Status::from(Error::NoLeader)
        };
        Ok(Response::new(Box::pin(until(Box::pin(out), lost))))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        require_leader(&self.0, &req)?;
        let who = super::caller(&self.0, &req).await?;
        self.0
            .resign(&who, req.into_inner())
            .await
            .map(Response::new)
            .map_err(client_side_status)
    }
}
