//! The client-facing faces of a member. Each only converts its wire format to the service
//! layer's calls and back. gRPC (HTTP/2) and the JSON gateway plus the plain HTTP endpoints
//! (HTTP/1.1) share one listener, as on etcd's client port.

pub mod admin;
mod authority;
mod coalesce;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod peer;

use crate::service::EtcdServer;
use crate::tls::ServerTls;
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use tonic::service::Routes;

/// Serves the client API on `listener` (over TLS when `tls` is given: an `https://` URL)
/// until `shutdown` resolves. Long-lived streams (Watch, LeaseKeepAlive) then end with
/// `etcdserver: server stopped`, so a client that keeps one open does not hold the member (and
/// its database) past its stop.
pub async fn serve_client(
    server: Arc<EtcdServer>,
    listener: conn::Listener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = conn::incoming(listener, tls)
        .map(|conn| conn.map(|c| coalesce::CoalescedWrites::new(authority::AuthorityFix::new(c))));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let app = grpc::routes(server.clone(), stopping.clone())
        .into_axum_router()
        .merge(http::router(server.clone(), stopping))
        .fallback(http::fallback);
    let cfg = &server.cfg;
    let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .http2_keepalive_interval(nonzero(cfg.grpc_keepalive_interval))
        .http2_keepalive_timeout(nonzero(cfg.grpc_keepalive_timeout))
        .layer(grpc::metered::MeteredLayer)
        .layer(grpc::recv_limit::RecvLimitLayer(grpc::max_recv(&server)))
        .add_routes(Routes::from(app))
        .serve_with_incoming_shutdown(incoming, signal)
        .await
}
