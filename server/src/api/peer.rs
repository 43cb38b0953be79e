//! The peer face (etcd's `rafthttp` receiving side plus its leader-forwarding endpoints): raft
//! messages and snapshots from other members go to the raft loop; leader-only client requests
//! forwarded by followers are served here.

use crate::error::Error;
use crate::raft::transport::MEMBER_REMOVED;
use crate::service::EtcdServer;
use etcd_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    MemberPromoteRequest, MemberPromoteResponse,
};
use etcd_proto::pgraftpb::raft_peer_server::{RaftPeer, RaftPeerServer};
use etcd_proto::pgraftpb::{MembersRequest, MembersResponse, RaftBatch, SendAck, SnapshotChunk};
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// Largest peer message accepted (a batch of raft messages, or one snapshot chunk).
const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

pub struct PeerService(pub Arc<EtcdServer>);

impl PeerService {
    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.0.cluster_id() {
            return Err(Error::ClusterIdMismatch.into());
        }
        Ok(())
    }

    fn step(&self, bytes: &[u8]) -> Result<(), Status> {
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
        if self.0.membership.is_removed(m.from) {
            return Err(Status::failed_precondition(MEMBER_REMOVED));
        }
        self.0.raft.step(m).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<SendAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            self.check_cluster(batch.cluster_id)?;
            if batch.from != 0 {
                self.0.raft.transport.heard_from(batch.from);
            }
            for m in &batch.messages {
                self.step(m)?;
            }
        }
        Ok(Response::new(SendAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = req.into_inner();
        let mut header: Option<Vec<u8>> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            self.check_cluster(chunk.cluster_id)?;
            if header.is_none() {
                header = Some(chunk.message);
            }
            data.extend_from_slice(&chunk.data);
        }
        let header = header.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let mut m = Message::parse_from_bytes(&header)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
        tracing::info!(from = %format!("{:x}", m.from), bytes = data.len(), "received snapshot");
        m.mut_snapshot().data = data.into();
        self.0.raft.step(m).map_err(Status::from)?;
        Ok(Response::new(SendAck {}))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.0
            .lease_renew_local(req.into_inner().id)
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        if !self.0.raft.status.is_leader() {
            return Err(Error::NotLeader.into());
        }
        Ok(Response::new(
            self.0.lease_time_to_live_local(req.into_inner()),
        ))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        if !self.0.raft.status.is_leader() {
            return Err(Error::NotLeader.into());
        }
        self.0
            .member_promote(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.0.cluster_id(),
            members: self.0.membership.members(),
        }))
    }
}

/// Serves the peer protocol on `listener` until `shutdown` resolves. Not gracefully: peer
/// streams are long-lived and never finish by themselves, so waiting for them would only
/// delay the stop (as etcd, the member just closes its peer connections); streams still open
/// end with the raft loop, whose messages they can no longer deliver.
pub async fn serve_peer(
    server: Arc<EtcdServer>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = super::no_delay(listener);
    let svc = RaftPeerServer::new(PeerService(server))
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(svc)
        .serve_with_incoming(incoming);
    tokio::select! {
        r = serve => r,
        _ = shutdown => Ok(()),
    }
}
