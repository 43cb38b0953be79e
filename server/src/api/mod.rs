//! The client-facing faces of a member. Each only converts its wire format to the service
//! layer's calls and back.

pub mod grpc;
pub mod peer;

use crate::service::EtcdServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the client API on `listener` until `shutdown` resolves.
pub async fn serve_client(
    server: Arc<EtcdServer>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    grpc::router(server)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
