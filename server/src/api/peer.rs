//! The peer face (etcd's `rafthttp` receiving side plus its leader-forwarding endpoints): raft
//! messages and snapshots from other members go to the raft loop; leader-only client requests
//! forwarded by followers are served here. One port carries two protocols, told apart by a
//! connection's first byte: raft message streams ([`crate::raft::wire`]) and gRPC (snapshots,
//! forwarding, the member list for joining).

use super::conn::{self, Conn};
use crate::error::Error;
use crate::raft::transport::MEMBER_REMOVED;
use crate::raft::wire::{self, Frame};
use crate::service::EtcdServer;
use crate::tls::ServerTls;
use etcd_proto::etcdserverpb::{
    HashKvRequest, HashKvResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberPromoteRequest, MemberPromoteResponse,
};
use etcd_proto::pgraftpb::raft_peer_server::{RaftPeer, RaftPeerServer};
use etcd_proto::pgraftpb::{MembersRequest, MembersResponse, SendAck, SnapshotChunk};
use futures::StreamExt;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// The answer to a snapshot stream while this member still handles another snapshot.
pub const SNAPSHOT_BUSY: &str = "pgraft: a snapshot is being installed here; try again later";

/// Largest gRPC peer message answered (a forwarded request's response).
const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest gRPC peer message accepted (one snapshot chunk, a forwarded request): a little over
/// the snapshot chunk cap, so that a chunk over it is decoded only to be refused by size.
const MAX_PEER_REQUEST: usize = crate::snapshot::MAX_CHUNK + 1024 * 1024;
/// A new peer connection must say which protocol it speaks within this long.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused raft stream stays open this long at most for its sender to read why.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// A raft stream's receive buffer to start with.
const READ_BUFFER: usize = 64 * 1024;
/// A receive buffer grown past this (by a large frame) is freed once it is read.
const KEEP_BUFFER_CAPACITY: usize = 1024 * 1024;
/// A raft stream that carries nothing this long is dead (a live sender heartbeats every 0.5 s):
/// drop it rather than hold it forever.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PeerService(pub Arc<EtcdServer>);

impl PeerService {
    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.0.cluster_id() {
            return Err(Error::ClusterIdMismatch.into());
        }
        Ok(())
    }

    /// Steps one message of the raft stream that member `sender` opened. The message must say
    /// the same sender and name this member as its receiver: raft trusts `from` (votes,
    /// acknowledgements and heartbeat answers are counted by it), so a stream could otherwise
    /// speak for another member, and a message meant for another member would be taken as
    /// this one's.
    fn step(&self, bytes: &[u8], sender: u64) -> Result<(), Status> {
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
        if m.from != sender {
            return Err(Status::permission_denied(format!(
                "pgraft: raft message from member {:x} on the stream of member {sender:x}",
                m.from
            )));
        }
        if m.to != self.0.member_id() {
            return Err(Status::failed_precondition(format!(
                "pgraft: raft message to member {:x} reached member {:x}",
                m.to,
                self.0.member_id()
            )));
        }
        if self.0.membership.is_removed(m.from) {
            return Err(Status::failed_precondition(MEMBER_REMOVED));
        }
        // A snapshot's data names a staged file: it may only come from the snapshot stream.
        if m.get_msg_type() == MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "snapshots must come over the snapshot stream",
            ));
        }
        self.0.raft.step(m).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SendAck>, Status> {
        // One snapshot at a time: the slot passes to the raft loop with the message, which
        // gives it back when raft refuses the snapshot or its install is done. The leader
        // hears `unavailable`, and sends again later if it must.
        let status = &self.0.raft.status;
        if !status.claim_snapshot_slot() {
            return Err(Status::unavailable(SNAPSHOT_BUSY));
        }
        let dir = crate::snapshot::staging_dir(&self.0.cfg.data_dir());
        let received =
            crate::snapshot::receive::receive(&dir, self.0.cluster_id(), req.into_inner()).await;
        let stepped = received.and_then(|m| {
            if self.0.membership.is_removed(m.from) {
                crate::snapshot::receive::discard(&m);
                return Err(Status::failed_precondition(MEMBER_REMOVED));
            }
            if !self.0.membership.contains(m.from) {
                crate::snapshot::receive::discard(&m);
                return Err(Status::permission_denied(format!(
                    "pgraft: member {:x} is not a member of this cluster",
                    m.from
                )));
            }
            self.0.raft.step(m.clone()).map_err(|e| {
                crate::snapshot::receive::discard(&m);
                Status::from(e)
            })
        });
        if stepped.is_err() {
            status.release_snapshot_slot();
        }
        stepped.map(|()| Response::new(SendAck {}))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.0
            .hash_kv(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> Result<Response<LeaseKeepAliveResponse>, Status> {
        self.0
            .lease_renew_local(req.into_inner().id)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.0
            .lease_time_to_live_local(req.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::from)
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

/// Serves the peer protocols on `listener` (over TLS when `tls` is given: an `https://` URL)
/// until `shutdown` resolves. Not gracefully: peer streams are long-lived and never finish by
/// themselves, so waiting for them would only delay the stop (as etcd, the member just closes
/// its peer connections): raft streams end with `shutdown`, gRPC streams still open with the
/// raft loop, whose messages they can no longer deliver.
pub async fn serve_peer(
    server: Arc<EtcdServer>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let peer = Arc::new(PeerService(server));
    let svc = RaftPeerServer::from_arc(peer.clone())
        .max_decoding_message_size(MAX_PEER_REQUEST)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    // Handshakes done: each connection's first byte tells a raft stream from gRPC.
    let mut accepted = conn::incoming(listener, tls);
    let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel::<std::io::Result<Conn>>(64);
    // Dropped when this function returns: every raft stream task then ends.
    let (_stop, stopped) = tokio::sync::watch::channel(());
    let accept = async move {
        while let Some(Ok(mut conn)) = accepted.next().await {
            let (peer, grpc_tx, mut stopped) = (peer.clone(), grpc_tx.clone(), stopped.clone());
            tokio::spawn(async move {
                match conn.peek_first(HELLO_TIMEOUT).await {
                    Ok(first) if first == wire::MAGIC[0] => tokio::select! {
                        _ = peer.serve_raft_stream(conn) => {}
                        _ = stopped.changed() => {}
                    },
                    Ok(_) => {
                        let _ = grpc_tx.send(Ok(conn)).await;
                    }
                    Err(_) => {}
                }
            });
        }
    };
    let serve = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(grpc_rx));
    tokio::select! {
        r = serve => r,
        _ = accept => Ok(()),
        _ = shutdown => Ok(()),
    }
}

impl PeerService {
    /// Receives one peer's raft message stream, stepping each message into the raft loop as it
    /// arrives, until the peer closes it; refuses it (with the reason, then closing) to another
    /// cluster, to a member removed from this one, and at the first message that does not come
    /// from the member the hello named or is not addressed to this member.
    async fn serve_raft_stream(&self, mut conn: Conn) {
        let mut preamble = [0u8; wire::PREAMBLE_LEN];
        let read = tokio::time::timeout(HELLO_TIMEOUT, conn.read_exact(&mut preamble)).await;
        let Some((cluster_id, from)) = read
            .ok()
            .and_then(|r| r.ok())
            .and_then(|_| wire::parse_preamble(&preamble))
        else {
            return;
        };
        if let Err(e) = self.check_cluster(cluster_id) {
            return refuse(conn, e.message()).await;
        }
        if self.0.membership.is_removed(from) {
            return refuse(conn, MEMBER_REMOVED).await;
        }
        // Only members speak raft here (etcd's "sender not found"): a member this one has not
        // yet applied the addition of is refused until it has, and its sender retries.
        if !self.0.membership.contains(from) {
            let reason = format!("pgraft: member {from:x} is not a member of this cluster");
            return refuse(conn, &reason).await;
        }
        let transport = &self.0.raft.transport;
        transport.heard_from(from);
        transport.peer_dialed(from);
        let mut buf: Vec<u8> = Vec::with_capacity(READ_BUFFER);
        let mut used = 0;
        loop {
            if used == buf.len() {
                if buf.capacity() > KEEP_BUFFER_CAPACITY {
                    buf = Vec::with_capacity(READ_BUFFER);
                }
                buf.clear();
                used = 0;
            } else if used > 0 && buf.capacity() - buf.len() < 16 * 1024 {
                buf.drain(..used);
                used = 0;
            }
            match tokio::time::timeout(STREAM_IDLE_TIMEOUT, conn.read_buf(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            transport.heard_from(from);
            loop {
                match wire::next_frame(&buf[used..]) {
                    Frame::Partial => break,
                    Frame::TooLarge(len) => {
                        let reason = format!("raft frame of {len} bytes is over the limit");
                        return refuse(conn, &reason).await;
                    }
                    Frame::Whole(payload, len) => {
                        used += len;
                        if payload.is_empty() {
                            continue;
                        }
                        if let Err(e) = self.step(payload, from) {
                            return refuse(conn, e.message()).await;
                        }
                    }
                }
            }
        }
    }
}

/// Tells a raft stream's sender why it is refused, then closes the stream: after the sender
/// closes its side (or a second), so that frames it sent meanwhile, left unread, do not make
/// the kernel reset the connection and drop the reason before the sender reads it.
async fn refuse(mut conn: Conn, reason: &str) {
    let mut frame = Vec::new();
    wire::put_frame(&mut frame, reason.as_bytes());
    let _ = conn.write_all(&frame).await;
    let _ = conn.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}
