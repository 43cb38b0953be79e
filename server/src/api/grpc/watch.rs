//! `etcdserverpb.Watch`: bridges the gRPC stream to a [`crate::watch::stream`] task.

use super::{leader_lost, require_leader, until, until_stopped, wants_leader};
use crate::auth::Need;
use crate::error::Error;
use crate::service::EtcdServer;
use crate::watch::outbox::{self, Responses};
use crate::watch::stream::{self, HeaderFn, PermitFn, StreamConfig};
use etcd_proto::etcdserverpb::watch_server::Watch;
use etcd_proto::etcdserverpb::{WatchRequest, WatchResponse};
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The service, and the signal that ends open Watch streams when the member stops.
pub struct WatchService(pub Arc<EtcdServer>, pub tokio::sync::watch::Receiver<bool>);

/// Starts serving one client Watch stream fed by `requests`; its responses come out of the
/// returned channel, which the face forwards until the client goes away (dropping the receiver
/// ends the stream). Shared by the gRPC face and the JSON gateway. Each watch created is
/// checked against the auth store with the stream's `token`, as etcd checks it.
pub(crate) fn open(
    server: &Arc<EtcdServer>,
    token: Option<String>,
    requests: Pin<Box<dyn futures::Stream<Item = WatchRequest> + Send>>,
) -> Responses {
    let (tx, rx) = outbox::channel(outbox::MAX_QUEUED, outbox::MAX_QUEUED_BYTES);
    let header: HeaderFn = {
        let server = server.clone();
        Arc::new(move |rev| server.header(rev))
    };
    let cfg = StreamConfig {
        progress_interval: server.cfg.watch_progress_notify_interval,
        max_response_bytes: server.cfg.max_request_bytes + 512 * 1024,
        permit: Some(permit(server.clone(), token)),
    };
    tokio::spawn(stream::serve(server.hub.clone(), header, cfg, requests, tx));
    rx
}

/// READ on the watched range, for the stream's token; refusals read as etcd's cancel reason,
/// the formatted gRPC status (`rpc error: code = PermissionDenied desc = ...`).
fn permit(server: Arc<EtcdServer>, token: Option<String>) -> PermitFn {
    Arc::new(move |key, range_end| {
        server
            .auth
            .caller(token.as_deref())
            .and_then(|who| server.auth.check(&who, Need::Read, key, range_end))
            .map_err(|e| format!("rpc error: code = {:?} desc = {e}", e.code()))
    })
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream =
        Pin<Box<dyn futures::Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        require_leader(&self.0, &req)?;
        let monitor = wants_leader(&req);
        let token = super::token(&req)?;
        let requests = req.into_inner();
        // A broken request stream ends our reading of it; events keep flowing until the client
        // stops reading the responses.
        let requests = requests
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()));
        let rx = open(&self.0, token, Box::pin(requests));
        let out = until_stopped(rx.map(Ok), self.1.clone());
        if !monitor {
            return Ok(Response::new(Box::pin(out)));
        }
        // `hasleader` streams end with `etcdserver: no leader` when the leader is gone for good.
        let server = self.0.clone();
        let lost = async move {
            leader_lost(server).await;
            Status::from(Error::NoLeader)
        };
        Ok(Response::new(Box::pin(until(Box::pin(out), lost))))
    }
}
