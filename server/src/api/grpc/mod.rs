//! The etcd v3 gRPC services (etcd's `v3rpc`), as thin adapters over [`EtcdServer`].

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod unimplemented;
mod watch;

use crate::error::Error;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use std::sync::Arc;
use tonic::transport::server::Router;
use tonic::Status;

/// The gRPC receive limit etcd uses: max-request-bytes plus 512 KiB of headroom.
fn max_recv(server: &EtcdServer) -> usize {
    server.cfg.max_request_bytes + 512 * 1024
}

/// All client services on one router, plus `grpc.health.v1.Health` reporting SERVING.
pub fn router(server: Arc<EtcdServer>) -> Router {
    let recv = max_recv(&server);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    drop(health_reporter);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(KvServer::new(kv::KvService(server.clone())).max_decoding_message_size(recv))
        .add_service(
            WatchServer::new(watch::WatchService(server.clone())).max_decoding_message_size(recv),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService(server.clone())).max_decoding_message_size(recv),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService(server.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService(server.clone()))
                .max_decoding_message_size(recv),
        )
        .add_service(AuthServer::new(unimplemented::AuthService))
}

/// Maps a service error to the status etcd sends.
pub(crate) fn status(e: Error) -> Status {
    e.into()
}

/// etcd's `hasleader` metadata check (`WithRequireLeader`): refuse when there is no leader.
pub(crate) fn require_leader<T>(
    server: &EtcdServer,
    req: &tonic::Request<T>,
) -> Result<(), Status> {
    let wants = req
        .metadata()
        .get("hasleader")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "true");
    if wants && server.raft.status.leader() == 0 {
        return Err(Error::NoLeader.into());
    }
    Ok(())
}
