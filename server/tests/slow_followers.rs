//! Linearizable reads while the followers' disks are slow and writes keep them syncing: the
//! leader's ReadIndex round needs only the followers' heartbeat answers, which claim nothing
//! durable and so must not queue behind their fsyncs of the writes (see
//! `raft::node::Loop::send_ahead`). Its own test binary: the slow-disk failpoint is switched
//! on once per process, from the environment.

mod common;

use etcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each journal fsync of a follower takes at least this long.
const FOLLOWER_FSYNC_MS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_reads_do_not_wait_for_the_followers_fsyncs() {
    // Before any member starts (the failpoint reads it once); only the data dirs holding
    // the delay file below are slowed.
    std::env::set_var("PGRAFT_FAILPOINT_SLOW_DISK", "1");
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::start_cluster(dir.path(), 3, &[]).await;
    let leader = nodes
        .iter()
        .position(|n| n.server.raft.status.is_leader())
        .expect("a leader");
    for i in (0..nodes.len()).filter(|i| *i != leader) {
        std::fs::write(
            dir.path()
                .join(format!("m{i}"))
                .join("failpoint-fsync-delay-ms"),
            FOLLOWER_FSYNC_MS.to_string(),
        )
        .unwrap();
    }
    let endpoint = format!("http://{}", nodes[leader].client_addrs[0]);

    // Writers keep both followers' syncers busy: every put waits for a follower's slow fsync.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (stop, written) = (stop.clone(), written.clone());
        let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                kv.put(PutRequest {
                    key: format!("w{w}/{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // The writes are slowed by the followers' fsyncs.
    let before = written.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(FOLLOWER_FSYNC_MS * 4)).await;
    let during = written.load(Ordering::Relaxed) - before;
    assert!(
        during <= 4 * 8,
        "{during} puts in 4 follower fsyncs: the failpoint is not slowing the followers"
    );

    // At the leader (its ReadIndex round: the followers' heartbeat answers), then at a
    // follower (its ReadIndex request to the leader, then the same round).
    let follower = (leader + 1) % nodes.len();
    for (who, at) in [("leader", leader), ("follower", follower)] {
        let mut kv = KvClient::connect(format!("http://{}", nodes[at].client_addrs[0]))
            .await
            .unwrap();
        let mut took = Vec::new();
        for _ in 0..15 {
            let start = Instant::now();
            kv.range(RangeRequest {
                key: b"w0/0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
            took.push(start.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.sort();
        eprintln!("linearizable reads at the {who}: {took:?}");
        let median = took[took.len() / 2];
        // Queued behind a follower's fsyncs, a heartbeat answer or a ReadIndex request waits
        // out the fsync in flight and the next: a median of at least half a fsync. Sent at
        // once, the round takes a few loopback round trips.
        assert!(
            median < Duration::from_millis(FOLLOWER_FSYNC_MS / 2),
            "median linearizable read at the {who} {median:?} with follower fsyncs of \
             {FOLLOWER_FSYNC_MS} ms (all: {took:?})"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    for n in nodes {
        n.stop().await;
    }
}
