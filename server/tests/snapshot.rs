//! A member catching up through a raft snapshot of a store many times the chunk size: the
//! snapshot streams in small chunks (none over the cap), is staged and installed, and the new
//! member ends with the same keys, values and revisions as the leader. And what a member
//! refuses: an oversized chunk on the snapshot stream, a snapshot on the raft message stream.

mod common;

use clap::Parser;
use common::{free_port, TestNode};
use etcd_proto::etcdserverpb::{
    kv_client::KvClient, DeleteRangeRequest, MemberAddRequest, PutRequest, RangeRequest,
    RangeResponse,
};
use etcd_proto::pgraftpb::{raft_peer_client::RaftPeerClient, SnapshotChunk};
use pgraft_server::raft::wire;
use pgraft_server::{Config, Node};
use raft::eraftpb::{Message, MessageType};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

fn config(dir: &Path, name: &str, peer: &str, cluster: &str, state: &str) -> Config {
    Config::parse_from([
        "pgraftd".to_string(),
        format!("--name={name}"),
        format!("--data-dir={}", dir.display()),
        "--listen-client-urls=http://127.0.0.1:0".into(),
        "--advertise-client-urls=http://127.0.0.1:0".into(),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={cluster}"),
        format!("--initial-cluster-state={state}"),
        "--snapshot-count=100".into(),
    ])
}

async fn client(node: &Node) -> KvClient<Channel> {
    let ch = Channel::from_shared(format!("http://{}", node.client_addrs[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    KvClient::new(ch).max_decoding_message_size(usize::MAX)
}

/// Everything, read locally (a learner serves serializable reads).
async fn everything(kv: &mut KvClient<Channel>) -> Option<RangeResponse> {
    let r = kv
        .range(RangeRequest {
            key: vec![0],
            range_end: vec![0],
            serializable: true,
            ..Default::default()
        })
        .await;
    r.ok().map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_member_catches_up_through_a_snapshot_larger_than_the_chunk_cap() {
    const CHUNK: usize = 64 * 1024;
    pgraft_server::snapshot::set_chunk_bytes(CHUNK);
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (ua, ub) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let a = Node::start(config(
        &dir.path().join("a"),
        "a",
        &ua,
        &format!("a={ua}"),
        "new",
    ))
    .await
    .unwrap();
    let mut kva = client(&a).await;

    // About 4 MB of values (60+ chunks), some overwritten or deleted so that revisions and
    // versions differ from a plain load.
    let mut bytes = 0;
    for i in 0..400u32 {
        let value: Vec<u8> = (0..10_000u32).map(|j| (i * 31 + j) as u8).collect();
        bytes += value.len();
        let key = format!("key/{i:04}").into_bytes();
        kva.put(PutRequest {
            key,
            value,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for i in 0..20u32 {
        kva.put(PutRequest {
            key: format!("key/{:04}", i * 7).into_bytes(),
            value: format!("again {i}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    kva.delete_range(DeleteRangeRequest {
        key: b"key/0100".to_vec(),
        range_end: b"key/0105".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(bytes > 50 * CHUNK);
    let before = pgraft_server::snapshot::stats();

    // The log the new member would need is compacted away: it gets a snapshot.
    a.server
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ub.clone()],
            is_learner: true,
        })
        .await
        .unwrap();
    let b_dir = dir.path().join("b");
    let b = Node::start(config(
        &b_dir,
        "b",
        &ub,
        &format!("a={ua},b={ub}"),
        "existing",
    ))
    .await
    .unwrap();
    let mut kvb = client(&b).await;

    let want = everything(&mut kva).await.unwrap();
    assert_eq!(want.kvs.len(), 395);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = everything(&mut kvb).await;
        if let Some(got) = got.filter(|g| g.kvs.len() == want.kvs.len()) {
            assert_eq!(got.kvs, want.kvs, "keys, values and revisions differ");
            assert_eq!(got.header.unwrap().revision, want.header.unwrap().revision);
            break;
        }
        assert!(Instant::now() < deadline, "the new member did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let after = pgraft_server::snapshot::stats();
    assert!(after.installed > before.installed, "no snapshot installed");
    let chunks = after.chunks_received - before.chunks_received;
    assert!(chunks as usize > bytes / CHUNK, "only {chunks} chunks");
    assert!(
        after.largest_chunk_received as usize <= CHUNK,
        "a chunk of {} bytes",
        after.largest_chunk_received
    );
    let staged: Vec<_> = std::fs::read_dir(pgraft_server::snapshot::staging_dir(&b_dir))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "staged files left: {staged:?}");
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn oversized_chunks_and_snapshots_off_the_snapshot_stream_are_refused() {
    let n = TestNode::start().await;
    let node = n.node.as_ref().unwrap();
    let peer = node.peer_addrs[0];
    let cluster_id = node.server.cluster_id();

    let chunk = SnapshotChunk {
        // Over the 4 MiB cap.
        data: vec![0; 4 * 1024 * 1024 + 1],
        cluster_id,
        ..Default::default()
    };
    let e = RaftPeerClient::connect(format!("http://{peer}"))
        .await
        .unwrap()
        .snapshot(tokio_stream::iter(vec![chunk]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");

    // A snapshot message on the raft stream (its data could name any file) is refused.
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    // From a member (the member itself, the only one), to this member: checks that refuse
    // before this one would otherwise answer.
    m.from = node.server.member_id();
    m.to = node.server.member_id();
    m.mut_snapshot().mut_metadata().index = 1000;
    let mut frames = Vec::new();
    wire::put_message(&mut frames, &m);
    let mut s = tokio::net::TcpStream::connect(peer).await.unwrap();
    s.write_all(&wire::preamble(cluster_id, m.from))
        .await
        .unwrap();
    s.write_all(&frames).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(common::TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("member closes a refused stream")
        .unwrap();
    match wire::next_frame(&buf) {
        wire::Frame::Whole(reason, _) => assert_eq!(
            String::from_utf8_lossy(reason),
            "snapshots must come over the snapshot stream"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(n.put("k", "v").await > 0);
}

/// A member installing a snapshot goes on with raft: it follows the leader's commit index
/// (appending and acknowledging the entries after the snapshot) while the install runs on its
/// own thread; its reads wait for the install and then see the whole state; the entries held
/// back are applied afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_goes_on_while_a_snapshot_installs() {
    // The installer waits this long before it writes (a test hook), so that the member can be
    // watched while it installs.
    std::env::set_var("PGRAFT_TEST_INSTALL_DELAY_MS", "3000");
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (ua, ub) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let cluster_a = format!("a={ua}");
    let a = Node::start(config(&dir.path().join("a"), "a", &ua, &cluster_a, "new"))
        .await
        .unwrap();
    let mut kva = client(&a).await;
    let put = |i: u32| PutRequest {
        key: format!("k/{i:04}").into_bytes(),
        value: vec![b'v'; 100],
        ..Default::default()
    };
    for i in 0..300 {
        kva.put(put(i)).await.unwrap();
    }
    a.server
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ub.clone()],
            is_learner: true,
        })
        .await
        .unwrap();
    let cluster_ab = format!("a={ua},b={ub}");
    let b = Node::start(config(
        &dir.path().join("b"),
        "b",
        &ub,
        &cluster_ab,
        "existing",
    ))
    .await
    .unwrap();
    let mut kvb = client(&b).await;

    // The install begins: reads on b wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let snap_index = loop {
        if let Err(index) = b.server.store.try_read() {
            break index;
        }
        assert!(Instant::now() < deadline, "no snapshot install began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let read = tokio::spawn(async move { everything(&mut kvb).await });

    // Another snapshot stream meanwhile is refused before anything of it is read: a second
    // snapshot once removed the staged file of one still on its way into raft.
    let refused = snapshot_stream(&ub, b.server.cluster_id()).await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), pgraft_server::api::peer::SNAPSHOT_BUSY);

    // Meanwhile the leader commits more, and b follows its commit index (it appends and
    // acknowledges them) without applying them.
    for i in 300..350 {
        kva.put(put(i)).await.unwrap();
    }
    let leader_commit = a.server.status().raft_index;
    assert!(leader_commit > snap_index);
    loop {
        let st = b.server.status();
        assert!(
            b.server.store.try_read().is_err(),
            "the install ended before b followed the leader"
        );
        assert!(
            st.raft_applied_index < snap_index,
            "applied during the install"
        );
        if st.raft_index >= leader_commit {
            assert_eq!(st.leader, a.server.member_id());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!read.is_finished(), "a read was served during the install");

    // Once installed, the read sees the whole snapshot at least, and b catches up fully.
    let got = read.await.unwrap().expect("read after the install");
    assert!(got.kvs.len() >= 300, "{} keys", got.kvs.len());
    let want = everything(&mut kva).await.unwrap();
    let mut kvb = client(&b).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(got) = everything(&mut kvb).await.filter(|g| g.kvs == want.kvs) {
            assert_eq!(got.header.unwrap().revision, want.header.unwrap().revision);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b did not apply the held-back entries"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.server.status().raft_applied_index >= leader_commit);
    // The install done, the slot is free: a stream is read (and this one refused for what it
    // holds, not for being a second one).
    let read_now = snapshot_stream(&ub, b.server.cluster_id()).await;
    assert_eq!(
        read_now.code(),
        tonic::Code::InvalidArgument,
        "{read_now:?}"
    );
    std::env::remove_var("PGRAFT_TEST_INSTALL_DELAY_MS");
    b.stop().await;
    a.stop().await;
}

/// Opens a snapshot stream to the member at `peer_url` whose only chunk holds no snapshot
/// header, and returns how the member refused it.
async fn snapshot_stream(peer_url: &str, cluster_id: u64) -> tonic::Status {
    let chunk = SnapshotChunk {
        cluster_id,
        data: vec![0; 16],
        ..Default::default()
    };
    RaftPeerClient::connect(peer_url.to_string())
        .await
        .unwrap()
        .snapshot(tokio_stream::iter(vec![chunk]))
        .await
        .expect_err("a stream without a snapshot header is refused")
}
