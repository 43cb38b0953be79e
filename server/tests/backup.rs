//! Backup and restore end to end: a member's state (keys with several revisions, a compaction,
//! a lease) streamed through `Maintenance.Snapshot` as etcd streams it (remaining bytes down to
//! 0, then the SHA-256), point-in-time while writes go on, saved, restored into the data
//! directories of a new 3-member cluster that then serves the same keys, values, revisions
//! and lease.

mod common;

use clap::Parser;
use common::{free_port, TestNode};
use etcd_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, CompactionRequest, DeleteRangeRequest,
    LeaseLeasesRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RangeResponse,
    SnapshotRequest,
};
use pgraft_server::snapshot::restore::{restore, RestoreArgs};
use pgraft_server::{Config, Node};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

async fn everything(
    kv: &mut KvClient<Channel>,
    revision: i64,
) -> Result<RangeResponse, tonic::Status> {
    kv.range(RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: Vec<u8>, lease: i64) -> i64 {
    kv.put(PutRequest {
        key: key.into(),
        value,
        lease,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_restored_into_a_new_three_member_cluster_serves_the_same_state() {
    let src = TestNode::start().await;
    let mut kv = src.kv();
    for round in 0..3 {
        for i in 0..20 {
            put(&mut kv, &format!("k/{i:02}"), format!("v{round}").into(), 0).await;
        }
    }
    let lease = src.grant(600, 0x77).await;
    src.put_lease("leased", "y", lease).await;
    kv.delete_range(DeleteRangeRequest {
        key: b"k/05".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let compacted_at = put(&mut kv, "k/06", b"v3".to_vec(), 0).await - 10;
    kv.compact(CompactionRequest {
        revision: compacted_at,
        physical: true,
    })
    .await
    .unwrap();
    // Enough data that the stream cannot all sit in the server's queue at once.
    for i in 0..40 {
        put(&mut kv, &format!("big/{i:02}"), vec![i as u8; 64 * 1024], 0).await;
    }
    let want = everything(&mut kv, 0).await.unwrap();
    let rev = want.header.unwrap().revision;

    // The stream as etcdctl reads it; a write goes through while it is open, and is not in it.
    let mut stream = src
        .maintenance()
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut messages = vec![stream.message().await.unwrap().unwrap()];
    let during = tokio::time::timeout(
        Duration::from_secs(5),
        put(&mut kv, "written-during-backup", b"x".to_vec(), 0),
    )
    .await
    .expect("a write waited for the backup");
    assert_eq!(during, rev + 1);
    while let Some(m) = stream.message().await.unwrap() {
        messages.push(m);
    }
    let (digest, data) = messages.split_last().unwrap();
    assert!(data.len() > 10);
    let mut file = Vec::new();
    for m in data {
        assert_eq!(m.header, None, "etcd sends no header on this stream");
        file.extend_from_slice(&m.blob);
        assert_eq!(
            m.remaining_bytes,
            (data.iter().map(|m| m.blob.len()).sum::<usize>() - file.len()) as u64
        );
    }
    assert_eq!(digest.remaining_bytes, 0);
    assert_eq!(digest.blob, Sha256::digest(&file).to_vec());
    assert_eq!(
        file.len() % 512,
        0,
        "etcdctl needs a digest after whole 512-byte pages"
    );

    // Saved through the client path (etcdctl's: .part, sync, rename), checked.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    let url = format!("http://{}", src.node.as_ref().unwrap().client_addrs[0]);
    let saved = pgraft_server::snapshot::cli::save(&url, &path)
        .await
        .unwrap();
    assert_eq!(saved.revision, rev + 1);
    file.extend_from_slice(&digest.blob);
    let first = dir.path().join("first.db");
    std::fs::write(&first, &file).unwrap();

    // Restored into three members of a new cluster.
    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let cluster = (0..3)
        .map(|i| format!("r{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let data_dir = dir.path().join(format!("r{i}"));
        restore(&RestoreArgs::parse_from([
            "restore".to_string(),
            first.display().to_string(),
            format!("--name=r{i}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-token=restored".into(),
            format!("--initial-advertise-peer-urls={peer}"),
        ]))
        .unwrap();
        let cfg = Config::parse_from([
            "pgraftd".to_string(),
            format!("--name=r{i}"),
            format!("--data-dir={}", data_dir.display()),
            "--listen-client-urls=http://127.0.0.1:0".into(),
            "--advertise-client-urls=http://127.0.0.1:0".into(),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={cluster}"),
            "--initial-cluster-token=restored".into(),
        ]);
        nodes.push(Node::start(cfg).await.unwrap());
    }
    let cluster_ids: Vec<u64> = nodes.iter().map(|n| n.server.cluster_id()).collect();
    assert!(cluster_ids.iter().all(|c| *c == cluster_ids[0]));
    assert_ne!(
        cluster_ids[0],
        src.node.as_ref().unwrap().server.cluster_id()
    );

    for n in &nodes {
        let ch = Channel::from_shared(format!("http://{}", n.client_addrs[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut rkv = KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX);
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            match everything(&mut rkv, 0).await {
                Ok(g) => break g,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "restored cluster not serving: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(got.kvs, want.kvs, "keys, values and revisions differ");
        assert_eq!(got.header.unwrap().revision, rev);
        // History since the compaction is there; before it, compacted.
        let old = everything(&mut rkv, compacted_at + 1).await.unwrap();
        let src_old = everything(&mut kv, compacted_at + 1).await.unwrap();
        assert_eq!(old.kvs, src_old.kvs);
        let e = everything(&mut rkv, compacted_at - 1).await.unwrap_err();
        assert!(e.message().contains("compacted"), "{e:?}");
        // The lease, with its key.
        let mut lc = LeaseClient::new(ch);
        let leases = lc
            .lease_leases(LeaseLeasesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            leases.leases.iter().map(|l| l.id).collect::<Vec<_>>(),
            vec![lease]
        );
        let ttl = lc
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: lease,
                keys: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ttl.granted_ttl, 600);
        assert_eq!(ttl.keys, vec![b"leased".to_vec()]);
    }
    // And takes writes at the next revision.
    let ch = Channel::from_shared(format!("http://{}", nodes[1].client_addrs[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rkv = KvClient::new(ch);
    assert_eq!(
        put(&mut rkv, "after", b"restore".to_vec(), 0).await,
        rev + 1
    );
    for n in nodes {
        n.stop().await;
    }
}
