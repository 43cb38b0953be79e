//! The peer port: raft message streams and gRPC peer services on one listener, and the raft
//! stream's refusals (another cluster, an oversized frame, a message whose sender or receiver
//! is not the stream's).

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
    let me = node.server.member_id();
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, me)).await.unwrap();
    s.write_all(&((wire::MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    assert!(answer(s).await.contains("over the limit"));

    // Only members speak raft: a stream whose hello names no member is refused (etcd's
    // "sender not found").
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, 99)).await.unwrap();
    s.write_all(&wire::HEARTBEAT).await.unwrap();
    let reason = answer(s).await;
    assert!(reason.contains("63 is not a member"), "{reason}");

    // A stream from a member with heartbeats only is kept open; the member still serves. (The
    // only member of a one-member cluster is the member itself.)
    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, me)).await.unwrap();
    s.write_all(&wire::HEARTBEAT).await.unwrap();
    let mut one = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut one)).await;
    assert!(read.is_err(), "a heartbeat must not be answered: {read:?}");
    assert!(n.put("k", "v").await > 0);
}

/// A raft stream speaks for the member its hello named, to this member only: a message with
/// another `from` (which raft would count as that member's vote or acknowledgement) or another
/// `to` ends the stream with the reason.
#[tokio::test]
async fn raft_stream_refuses_messages_not_from_its_sender_or_not_to_this_member() {
    let n = TestNode::start().await;
    let node = n.node.as_ref().unwrap();
    let peer = node.peer_addrs[0];
    let cluster_id = node.server.cluster_id();
    let me = node.server.member_id();
    let message = |from: u64, to: u64| {
        let mut m = raft::eraftpb::Message::default();
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeatResponse);
        m.from = from;
        m.to = to;
        let mut out = Vec::new();
        wire::put_message(&mut out, &m);
        out
    };

    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, me)).await.unwrap();
    s.write_all(&message(98, me)).await.unwrap();
    let reason = answer(s).await;
    assert!(
        reason.contains(&format!("from member 62 on the stream of member {me:x}")),
        "{reason}"
    );

    let mut s = TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, me)).await.unwrap();
    s.write_all(&message(me, me ^ 1)).await.unwrap();
    let reason = answer(s).await;
    assert!(
        reason.contains(&format!("to member {:x}", me ^ 1)),
        "{reason}"
    );

    // The member is unharmed.
    assert!(n.put("k", "v").await > 0);
}

/// A committed conf change that raft refuses (here: removing the only voter, which the
/// service layer never proposes) is skipped; it used to stop the raft loop, and with it the
/// member, on every start that replayed it.
#[tokio::test]
async fn a_conf_change_raft_refuses_is_skipped() {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
    let n = TestNode::start().await;
    let server = &n.node.as_ref().unwrap().server;
    let before = server.raft.status.applied_index();
    let mut change = ConfChangeSingle::default();
    change.set_change_type(ConfChangeType::RemoveNode);
    change.node_id = server.member_id();
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(change);
    server.raft.propose_conf_change(1, cc).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while server.raft.status.applied_index() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "conf change not applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(n.put("k", "v").await > 0);
    assert_eq!(server.membership.members().len(), 1);
}

/// Raft messages no member sends, on a stream from a peer: raft-rs panics on each of them (an
/// empty proposal; a heartbeat committing past the log; entries not following the append's
/// position), which stopped the member. They are dropped, and the member serves on.
#[tokio::test]
async fn malformed_raft_messages_from_a_peer_are_dropped() {
    use raft::eraftpb::{Entry, Message, MessageType};
    let n = TestNode::start().await;
    let node = n.node.as_ref().unwrap();
    let peer = node.peer_addrs[0];
    let cluster_id = node.server.cluster_id();
    let me = node.server.member_id();
    let term = node.server.raft.status.term();
    let base = |kind: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        // From a member (the only one: the member itself), so that the stream is admitted
        // and the messages reach the raft loop's checks.
        m.from = me;
        m.to = me;
        m
    };
    let empty_proposal = base(MessageType::MsgPropose);
    let mut heartbeat = base(MessageType::MsgHeartbeat);
    heartbeat.term = term + 1;
    heartbeat.commit = 1 << 40;
    let mut append = base(MessageType::MsgAppend);
    append.term = term + 2;
    append.index = 1;
    append.log_term = 1;
    let e = Entry {
        index: 1000,
        term: term + 2,
        ..Default::default()
    };
    append.entries = vec![e].into();

    for m in [empty_proposal, heartbeat, append] {
        let kind = m.get_msg_type();
        let mut s = TcpStream::connect(peer).await.unwrap();
        s.write_all(&wire::preamble(cluster_id, me)).await.unwrap();
        let mut out = Vec::new();
        wire::put_message(&mut out, &m);
        s.write_all(&out).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            n.put("k", "v").await > 0,
            "the member stopped serving after a {kind:?}"
        );
        assert_eq!(
            node.server.raft.status.term(),
            term,
            "a dropped {kind:?} changed the term"
        );
    }
}
