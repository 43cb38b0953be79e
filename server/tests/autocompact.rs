//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`) on etcd's schedule:
//! the leader compacts by itself, keeping the configured history.

mod common;

use common::TIMEOUT;
use etcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use pgraft_server::Node;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

async fn start(
    extra: &[&str],
    revision_interval: Duration,
) -> (Node, KvClient<Channel>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let mut cfg = common::config(dir.path(), &extra);
    cfg.auto_compaction_revision_interval = Some(revision_interval);
    let node = Node::start(cfg).await.expect("node starts");
    let ch = Channel::from_shared(format!("http://{}", node.client_addrs[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while node.server.raft.status.leader() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (node, KvClient::new(ch), dir)
}

async fn put_n(kv: &mut KvClient<Channel>, n: usize) -> i64 {
    let mut rev = 0;
    for i in 0..n {
        let r = kv
            .put(PutRequest {
                key: b"k".to_vec(),
                value: format!("v{i}").into_bytes(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        rev = r.header.unwrap().revision;
    }
    rev
}

/// Waits until the member's compacted revision is `rev` (or `limit` passes).
async fn wait_compacted(node: &Node, rev: i64, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let c = node.server.store.compact_rev();
        if c == rev || Instant::now() > deadline {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn revision_mode_keeps_the_last_n_revisions() {
    let (node, mut kv, _dir) = start(
        &[
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=5",
        ],
        Duration::from_millis(200),
    )
    .await;
    let rev = put_n(&mut kv, 20).await;
    assert_eq!(
        wait_compacted(&node, rev - 5, Duration::from_secs(5)).await,
        rev - 5
    );
    // The history before is gone, the last 5 revisions are still there.
    let old = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            revision: rev - 6,
            ..Default::default()
        })
        .await;
    assert_eq!(
        old.unwrap_err().message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let kept = kv
        .range(RangeRequest {
            key: b"k".to_vec(),
            revision: rev - 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.kvs.len(), 1);
    // Nothing new: no new compaction (etcd skips a revision it already compacted at).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.server.store.compact_rev(), rev - 5);
    node.stop().await;
}

#[tokio::test]
async fn periodic_mode_keeps_the_retention_window() {
    let (node, mut kv, _dir) = start(
        &[
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=2s",
        ],
        Duration::from_secs(300),
    )
    .await;
    let first = put_n(&mut kv, 10).await;
    // The first compaction comes once the whole retention has passed since the start, at the
    // revision sampled 2 s before: the one after the puts.
    assert_eq!(
        wait_compacted(&node, first, Duration::from_secs(5)).await,
        first
    );
    let second = put_n(&mut kv, 10).await;
    let written = Instant::now();
    // Revisions younger than the retention stay.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        node.server.store.compact_rev(),
        first,
        "compacted inside the 2 s window"
    );
    assert_eq!(
        wait_compacted(&node, second, Duration::from_secs(5)).await,
        second
    );
    assert!(
        written.elapsed() >= Duration::from_secs(2),
        "{:?}",
        written.elapsed()
    );
    node.stop().await;
}

#[tokio::test]
async fn off_by_default() {
    let (node, mut kv, _dir) = start(&[], Duration::from_millis(50)).await;
    let before = node.server.store.compact_rev();
    put_n(&mut kv, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.server.store.compact_rev(), before);
    node.stop().await;
}
