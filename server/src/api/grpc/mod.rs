//! The etcd v3 gRPC services (etcd's `v3rpc`), as thin adapters over [`EtcdServer`].

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod cluster;
pub(crate) mod election;
pub(crate) mod kv;
pub(crate) mod lease;
pub(crate) mod lock;
pub(crate) mod maintenance;
pub mod metered;
pub mod recv_limit;
pub(crate) mod unimplemented;
pub(crate) mod watch;

use crate::error::Error;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use etcd_proto::pgraftpb::admin_server::AdminServer;
use etcd_proto::v3electionpb::election_server::ElectionServer;
use etcd_proto::v3lockpb::lock_server::LockServer;
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tonic::service::Routes;
use tonic::Status;

/// The gRPC receive limit etcd uses: max-request-bytes plus 512 KiB of headroom.
pub(crate) fn max_recv(server: &EtcdServer) -> usize {
    server.cfg.max_request_bytes + 512 * 1024
}

/// All client services, plus `grpc.health.v1.Health` reporting SERVING, as routes that the
/// client listener serves next to the JSON gateway. Request messages above [`max_recv`] are
/// refused as grpc-go refuses them by [`recv_limit`], applied by the listener; tonic's own
/// decoding limit stays as a backstop. `stopping` turns true when the member stops; open
/// streams then end (see [`until_stopped`]).
pub fn routes(server: Arc<EtcdServer>, stopping: tokio::sync::watch::Receiver<bool>) -> Routes {
    let recv = max_recv(&server);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    drop(health_reporter);
    let mut b = Routes::builder();
    b.add_service(health)
        .add_service(KvServer::new(kv::KvService(server.clone())).max_decoding_message_size(recv))
        .add_service(
            WatchServer::new(watch::WatchService(server.clone(), stopping.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService(server.clone(), stopping.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(
            LockServer::new(lock::LockService(server.clone())).max_decoding_message_size(recv),
        )
        .add_service(
            ElectionServer::new(election::ElectionService(server.clone(), stopping))
                .max_decoding_message_size(recv),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService(server.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService(server.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(
            AuthServer::new(auth::AuthService(server.clone())).max_decoding_message_size(recv),
        )
        .add_service(AdminServer::new(admin::AdminService(server.clone())));
    b.routes()
}

/// Maps a service error to the status etcd sends.
pub(crate) fn status(e: Error) -> Status {
    e.into()
}

/// The token a request carries (etcd's `AuthInfoFromCtx`): metadata `token`, else
/// `authorization` (the gateway's `Authorization` header), without etcd 3.5's `Bearer ` prefix.
/// A value that is not text is a token no member issued.
pub(crate) fn token<T>(req: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let md = req.metadata();
    let Some(v) = md.get("token").or_else(|| md.get("authorization")) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| Status::from(Error::InvalidAuthToken))?;
    Ok(Some(v.strip_prefix("Bearer ").unwrap_or(v).to_string()))
}

/// The caller a request's token names (see [`EtcdServer::caller`]); without a token, under
/// `--client-cert-auth`, the user its client certificate's common name names (etcd's
/// `AuthInfoFromTLS`; gateway requests carry no certificate, as etcd's gateway's do not).
pub(crate) async fn caller<T>(
    server: &EtcdServer,
    req: &tonic::Request<T>,
) -> Result<crate::auth::Caller, Status> {
    let token = token(req)?;
    if token.is_none() && server.cfg.client_cert_auth {
        let cn = req
            .extensions()
            .get::<crate::api::conn::ConnInfo>()
            .and_then(|c| c.common_name.as_deref());
        if let Some(cn) = cn {
            return Ok(server.caller_from_certificate(cn));
        }
    }
    server.caller(token.as_deref()).await.map_err(status)
}

/// etcd's `hasleader` metadata check (`WithRequireLeader`): refuse when there is no leader.
pub(crate) fn require_leader<T>(
    server: &EtcdServer,
    req: &tonic::Request<T>,
) -> Result<(), Status> {
    if wants_leader(req) && server.raft.status.leader() == 0 {
        return Err(Error::NoLeader.into());
    }
    Ok(())
}

/// True when the client sent `hasleader: true` (etcd's `WithRequireLeader`).
pub(crate) fn wants_leader<T>(req: &tonic::Request<T>) -> bool {
    req.metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true")
}

/// Resolves once the member has had no leader for 3 election timeouts in a row (etcd's
/// `monitorLeader` for `hasleader` streams).
pub(crate) async fn leader_lost(server: Arc<EtcdServer>) {
    let period = server.cfg.election();
    let mut without = 0;
    loop {
        tokio::time::sleep(period).await;
        if server.raft.status.leader() == 0 {
            without += 1;
            if without >= 3 {
                return;
            }
        } else {
            without = 0;
        }
    }
}

/// Passes `inner` through until the member stops, then ends it with `etcdserver: server stopped`
/// (Unavailable, so clients reconnect elsewhere or later, as they do when etcd stops).
pub(crate) fn until_stopped<S, T>(
    inner: S,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    let stopped = async move {
        // A dropped sender means the listener is gone: stopped as well.
        let _ = stopping.wait_for(|s| *s).await;
        Status::from(Error::Stopped)
    };
    until(inner, stopped)
}

/// Passes `inner` through until `end` resolves, then ends the stream with its status.
pub(crate) fn until<S, T>(
    inner: S,
    end: impl std::future::Future<Output = Status> + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    let end = Box::pin(end);
    futures::stream::unfold(Some((inner, end)), |state| async move {
        let (mut inner, mut end) = state?;
        tokio::select! {
            item = inner.next() => item.map(|i| (i, Some((inner, end)))),
            status = &mut end => Some((Err(status), None)),
        }
    })
}
