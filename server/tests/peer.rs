//! The peer port: raft message streams and gRPC peer services on one listener, and the raft
//! stream's refusals (another cluster, an oversized frame).

mod common;

use common::{TestNode, TIMEOUT};
use etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient;
use etcd_proto::pgraftpb::MembersRequest;
use pgraft_server::raft::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the member answers on a raft stream until it closes it.
async fn answer(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("member closes a refused stream")
        .expect("read");
    match wire::next_frame(&buf) {
        wire::Frame::Whole(reason, _) => String::from_utf8_lossy(reason).into_owned(),
        other => panic!("expected a refusal frame, got {other:?} in {buf:?}"),
    }
}

#[tokio::test]
async fn peer_port_serves_grpc_and_refuses_foreign_raft_streams() {
    let n = TestNode::start().await;
    let node = n.node.as_ref().unwrap();
    let peer = node.peer_addrs[0];
    let cluster_id = node.server.cluster_id();

    // gRPC on the same port (the joining member's view of the cluster).
    let mut c = RaftPeerClient::connect(format!("http://{peer}"))
        .await
        .unwrap();
    let members = c.members(MembersRequest {}).await.unwrap().into_inner();
    assert_eq!(members.cluster_id, cluster_id);
    assert_eq!(members.members.len(), 1);

    // A raft stream from another cluster is refused with etcd's reason.
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id ^ 1, 99))
        .await
        .unwrap();
    assert_eq!(answer(s).await, "etcdserver: cluster ID mismatch");

    // A frame over the limit breaks the stream, with the reason.
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, 99)).await.unwrap();
    s.write_all(&((wire::MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    assert!(answer(s).await.contains("over the limit"));

    // A stream from this cluster with heartbeats only is kept open; the member still serves.
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, 99)).await.unwrap();
    s.write_all(&wire::HEARTBEAT).await.unwrap();
    let mut one = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut one)).await;
    assert!(read.is_err(), "a heartbeat must not be answered: {read:?}");
    assert!(n.put("k", "v").await > 0);
}
