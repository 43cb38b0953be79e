//! The Maintenance service's bookkeeping RPCs as an operator uses them: Status, HashKV and Hash
//! across a cluster, the NOSPACE alarm that `--quota-backend-bytes` raises and what it
//! refuses, Defragment reclaiming disk space, and the CORRUPT alarm of the corruption check.

mod common;

use clap::Parser;
use common::{assert_status, free_port, put_op, TestNode};
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    kv_client::KvClient, AlarmMember, AlarmRequest, AlarmType, CompactionRequest,
    DefragmentRequest, DeleteRangeRequest, HashKvRequest, HashRequest, LeaseGrantRequest,
    PutRequest, StatusRequest, StatusResponse, TxnRequest,
};
use pgraft_server::{Config, Node};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const NOSPACE: &str = "etcdserver: mvcc: database space exceeded";

/// Incompressible bytes (fjall compresses its tables).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
    AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    }
}

async fn alarms(m: &mut MaintenanceClient<Channel>) -> Vec<AlarmMember> {
    m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None))
        .await
        .unwrap()
        .into_inner()
        .alarms
}

async fn status(m: &mut MaintenanceClient<Channel>) -> StatusResponse {
    m.status(StatusRequest {}).await.unwrap().into_inner()
}

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// Status reports the raft position, the leader, and sizes that are real: `dbSize` the
/// allocated bytes of the data directory (not the journal's 64 MB apparent size), and
/// `dbSizeInUse` the live database.
#[tokio::test]
async fn status_reports_real_sizes_and_raft_position() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    let mut m = n.maintenance();
    let s = status(&mut m).await;
    let me = n.node.as_ref().unwrap().server.member_id();
    assert_eq!(s.leader, me);
    assert!(!s.is_learner);
    assert!(s.raft_term >= 1);
    assert!(
        s.raft_index >= 2 && s.raft_applied_index == s.raft_index,
        "{s:?}"
    );
    assert!(s.errors.is_empty(), "{s:?}");
    assert!(
        s.db_size > 0 && s.db_size < 16 << 20,
        "dbSize {}",
        s.db_size
    );
    assert!(s.db_size_in_use > 0 && s.db_size_in_use < 1 << 20, "{s:?}");
    assert_eq!(s.db_size_quota, 0, "etcd 3.5 has no quota field");
}

/// A tiny quota: writes that take space fail with etcd's error once the backend is over it,
/// and raise NOSPACE for this member; while it is raised, even small puts, txns holding a
/// put and lease grants are refused, reads, deletes and compaction work, and the alarm
/// survives a restart. Compaction and defragmentation free the space; once the alarm is
/// disarmed, writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_lifecycle_with_a_tiny_quota() {
    let mut n =
        TestNode::start_with(&["--quota-backend-bytes=1000000", "--snapshot-count=1"]).await;
    let me = n.node.as_ref().unwrap().server.member_id();
    let mut kv = n.kv();
    let mut stored = 0u64;
    let err = loop {
        match kv
            .put(put(&format!("big/{stored:03}"), noise(60_000, stored)))
            .await
        {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the quota was never reached");
    };
    assert_eq!(
        (err.code(), err.message()),
        (Code::ResourceExhausted, NOSPACE)
    );
    assert!(stored >= 5, "refused after {stored} puts");

    let mut m = n.maintenance();
    let raised = AlarmMember {
        member_id: me,
        alarm: AlarmType::Nospace as i32,
    };
    assert_eq!(alarms(&mut m).await, vec![raised]);
    assert_eq!(
        status(&mut m).await.errors,
        vec![format!("memberID:{me} alarm:NOSPACE ")]
    );

    let refused = |n: &TestNode| {
        let (mut kv, mut lease) = (n.kv(), n.lease());
        async move {
            assert_status(
                kv.put(put("small", b"v".to_vec())).await,
                Code::ResourceExhausted,
                NOSPACE,
            );
            let txn = TxnRequest {
                failure: vec![put_op("small", "v")],
                ..Default::default()
            };
            assert_status(kv.txn(txn).await, Code::ResourceExhausted, NOSPACE);
            let grant = LeaseGrantRequest { ttl: 60, id: 0 };
            assert_status(
                lease.lease_grant(grant).await,
                Code::ResourceExhausted,
                NOSPACE,
            );
        }
    };
    refused(&n).await;
    assert!(n.get("big/000").await.is_some(), "reads work");
    // etcd 3.5's /health reports the alarm, unless told to leave it out.
    let addr = n.node.as_ref().unwrap().client_addrs[0];
    let health = |query: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}/health{query}"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let (code, body) = health("").await;
    assert_eq!(code, 503);
    assert!(body.contains(r#""reason":"ALARM NOSPACE""#), "{body}");
    assert_eq!(health("?exclude=NOSPACE").await.0, 200);

    n.restart().await;
    let mut m = n.maintenance();
    assert_eq!(alarms(&mut m).await, vec![raised], "the alarm survives");
    refused(&n).await;

    let mut kv = n.kv();
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted as u64, stored);
    let rev = deleted.header.unwrap().revision;
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    let before = status(&mut m).await;
    m.defragment(DefragmentRequest {}).await.unwrap();
    let after = status(&mut m).await;
    assert!(
        after.db_size_in_use < 200_000,
        "in use {} -> {}",
        before.db_size_in_use,
        after.db_size_in_use
    );
    // Still raised: space freed does not disarm by itself.
    refused(&n).await;

    let disarmed = m
        .alarm(alarm(AlarmAction::Deactivate, me, AlarmType::Nospace))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(disarmed.alarms, vec![raised]);
    assert!(alarms(&mut m).await.is_empty());
    assert!(status(&mut m).await.errors.is_empty());
    n.put("small", "v").await;
    n.grant(60, 0).await;
}

/// Defragmentation gives the disk space of deleted and compacted history back: `dbSize` (the
/// data directory's allocated bytes) goes down, and the member serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_reclaims_disk_space() {
    let n = TestNode::start_with(&["--snapshot-count=1"]).await;
    let mut kv = n.kv();
    // 12 MB: several memtable flushes, so the values are in tables on disk.
    for i in 0..120u64 {
        kv.put(put(&format!("big/{i:03}"), noise(100_000, i)))
            .await
            .unwrap();
    }
    let rev = kv
        .delete_range(DeleteRangeRequest {
            key: b"big/".to_vec(),
            range_end: b"big0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await
    .unwrap();
    let mut m = n.maintenance();
    let before = status(&mut m).await;
    let defrag = {
        let mut m = m.clone();
        tokio::spawn(async move { m.defragment(DefragmentRequest {}).await })
    };
    // Serving meanwhile.
    n.put("during", "defrag").await;
    let resp = defrag.await.unwrap().unwrap().into_inner();
    assert_eq!(resp.header, None, "etcd answers an empty message");
    let after = status(&mut m).await;
    assert!(
        after.db_size < before.db_size - (4 << 20),
        "dbSize {} -> {}",
        before.db_size,
        after.db_size
    );
    assert!(
        after.db_size_in_use < 1 << 20,
        "in use {} -> {}",
        before.db_size_in_use,
        after.db_size_in_use
    );
    assert!(n.get("during").await.is_some());
}

/// HashKV on a single member: a revision's hash does not change as the store moves on or
/// as history before it is compacted away (the compaction keeps what reads at it need);
/// compacted and future revisions answer etcd's errors.
#[tokio::test]
async fn hash_kv_of_a_revision_is_stable_and_checks_its_revision() {
    let n = TestNode::start().await;
    for i in 0..10 {
        n.put(&format!("k{}", i % 4), &format!("v{i}")).await;
    }
    let mut m = n.maintenance();
    let hkv = |rev| HashKvRequest { revision: rev };
    let cur = n.rev().await;
    let at_cur = m.hash_kv(hkv(0)).await.unwrap().into_inner();
    assert_eq!(at_cur.hash_revision, cur);
    assert_eq!(at_cur.compact_revision, -1);
    let mid = m.hash_kv(hkv(cur - 3)).await.unwrap().into_inner();
    assert_ne!(mid.hash, at_cur.hash);
    assert_eq!(mid.hash_revision, cur - 3);
    n.put("k9", "later").await;
    assert_eq!(
        m.hash_kv(hkv(cur)).await.unwrap().into_inner().hash,
        at_cur.hash
    );

    n.kv()
        .compact(CompactionRequest {
            revision: cur - 5,
            physical: true,
        })
        .await
        .unwrap();
    let after = m.hash_kv(hkv(cur)).await.unwrap().into_inner();
    assert_eq!(after.compact_revision, cur - 5);
    // The hash covers the revisions after the compaction and what it kept: the same on a
    // member that compacted and one that did not yet is what the cluster test shows; here,
    // compacting again at the same point changes nothing.
    assert_eq!(
        m.hash_kv(hkv(cur)).await.unwrap().into_inner().hash,
        after.hash
    );
    assert_status(
        m.hash_kv(hkv(cur - 5)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_status(
        m.hash_kv(hkv(cur + 100)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let h = m.hash(HashRequest {}).await.unwrap().into_inner();
    assert_eq!(h.header.unwrap().revision, cur + 1);
}

/// Three members bootstrapped together, with extra flags. Peer ports are picked before the
/// members bind them, so another process may take one first: then it tries again.
async fn cluster(dir: &std::path::Path, extra: &[&str]) -> Vec<(Node, Channel)> {
    for attempt in 0..3 {
        if let Some(members) = try_cluster(&dir.join(attempt.to_string()), extra).await {
            return members;
        }
    }
    panic!("could not start a cluster: peer ports kept being taken");
}

async fn try_cluster(dir: &std::path::Path, extra: &[&str]) -> Option<Vec<(Node, Channel)>> {
    let starts = common::cluster_args(dir, 3, extra)
        .into_iter()
        .map(|args| Node::start(Config::parse_from(args)));
    let results = futures::future::join_all(starts).await;
    if results.iter().any(|r| r.is_err()) {
        for node in results.into_iter().flatten() {
            node.stop().await;
        }
        return None;
    }
    let mut out = Vec::new();
    for node in results.into_iter().flatten() {
        let ch = Channel::from_shared(format!("http://{}", node.client_addrs[0]))
            .unwrap()
            .connect()
            .await
            .unwrap();
        out.push((node, ch));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.iter().any(|(n, _)| n.server.raft.status.leader() == 0) {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(out)
}

/// Waits until every member applied revision `rev`.
async fn all_at(members: &[(Node, Channel)], rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while members
        .iter()
        .any(|(n, _)| n.server.store.current_rev() < rev)
    {
        assert!(Instant::now() < deadline, "members did not reach {rev}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every member of a cluster answers the same HashKV at a revision, before and after a
/// compaction; an alarm raised through one member is listed by all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hash_kv_and_alarms_agree_across_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let members = cluster(dir.path(), &[]).await;
    let mut kv = KvClient::new(members[0].1.clone());
    let mut rev = 0;
    for i in 0..30 {
        let key = format!("k{}", i % 7);
        rev = kv
            .put(put(&key, format!("v{i}").into_bytes()))
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision;
    }
    all_at(&members, rev).await;
    let hashes = |rev: i64| {
        let chans: Vec<Channel> = members.iter().map(|(_, c)| c.clone()).collect();
        async move {
            let mut out = Vec::new();
            for ch in chans {
                let r = MaintenanceClient::new(ch)
                    .hash_kv(HashKvRequest { revision: rev })
                    .await
                    .unwrap()
                    .into_inner();
                out.push((r.hash, r.compact_revision, r.hash_revision));
            }
            out
        }
    };
    let h = hashes(rev).await;
    assert!(h.iter().all(|x| *x == h[0]), "{h:?}");
    assert_eq!(h[0].2, rev);

    // A compaction proposed on one member: the others drop history on their own time.
    kv.compact(CompactionRequest {
        revision: rev - 10,
        physical: true,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while members
        .iter()
        .any(|(n, _)| n.server.store.compact_rev() != rev - 10)
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h2 = hashes(rev).await;
    assert!(h2.iter().all(|x| *x == h2[0]), "{h2:?}");
    assert_eq!(h2[0].1, rev - 10);

    let target = members[2].0.server.member_id();
    let mut m1 = MaintenanceClient::new(members[1].1.clone());
    let resp = m1
        .alarm(alarm(AlarmAction::Activate, target, AlarmType::Nospace))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.alarms.len(), 1);
    for (n, ch) in &members {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut m = MaintenanceClient::new(ch.clone());
        while alarms(&mut m).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{:x} lacks the alarm",
                n.server.member_id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(alarms(&mut m).await[0].member_id, target);
    }
    assert_status(
        kv.put(put("x", b"y".to_vec())).await,
        Code::ResourceExhausted,
        NOSPACE,
    );
    m1.alarm(alarm(AlarmAction::Deactivate, target, AlarmType::Nospace))
        .await
        .unwrap();
    kv.put(put("x", b"y".to_vec())).await.unwrap();
    for (n, _) in members {
        n.stop().await;
    }
}

/// The corruption check: a member whose key space differs from the leader's at the same
/// revision is found by the leader's periodic HashKV comparison, CORRUPT is raised for it
/// on every member, and writes fail with etcd's `corrupt cluster` while reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corruption_check_raises_corrupt_for_a_diverged_member() {
    let dir = tempfile::tempdir().unwrap();
    let members = cluster(dir.path(), &["--experimental-corrupt-check-time=300ms"]).await;
    let mut kv = KvClient::new(members[0].1.clone());
    let rev = kv
        .put(put("k", b"v".to_vec()))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    all_at(&members, rev).await;
    // Let a few checks pass on the healthy cluster.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut m = MaintenanceClient::new(members[0].1.clone());
    assert!(
        alarms(&mut m).await.is_empty(),
        "a healthy cluster is not corrupt"
    );

    // Damage one follower's stored value of `k` behind raft's back.
    let victim = members
        .iter()
        .find(|(n, _)| !n.server.raft.status.is_leader())
        .unwrap();
    let backend = &victim.0.server.backend;
    let (key, value) = backend.kv.iter().last().unwrap().into_inner().unwrap();
    let mut damaged = value.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x55;
    backend.kv.insert(key, damaged).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let a = alarms(&mut m).await;
        if !a.is_empty() {
            break a;
        }
        assert!(Instant::now() < deadline, "no CORRUPT alarm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        found,
        vec![AlarmMember {
            member_id: victim.0.server.member_id(),
            alarm: AlarmType::Corrupt as i32,
        }]
    );
    assert_status(
        kv.put(put("k2", b"v".to_vec())).await,
        Code::DataLoss,
        "etcdserver: corrupt cluster",
    );
    assert!(kv
        .range(etcd_proto::etcdserverpb::RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .is_ok());
    for (n, _) in members {
        n.stop().await;
    }
}

/// Alarms are part of the replicated state: a member that joins after one was raised, and
/// catches up through a raft snapshot (the log before it is compacted), has it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_catching_up_by_snapshot_gets_the_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let cfg = |name: &str, cluster: &str, state: &str, peer: &str| {
        Config::parse_from([
            "pgraftd".to_string(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join(name).display()),
            "--listen-client-urls=http://127.0.0.1:0".into(),
            "--advertise-client-urls=http://127.0.0.1:0".into(),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--snapshot-count=1".into(),
        ])
    };
    let a = Node::start(cfg("a", &format!("a={ua}"), "new", &ua))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.server.raft.status.leader() == 0 {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raised = a
        .server
        .alarm(alarm(
            AlarmAction::Activate,
            a.server.member_id(),
            AlarmType::Nospace,
        ))
        .await
        .unwrap();
    assert_eq!(raised.alarms.len(), 1);
    // Entries after the alarm (deletes: NOSPACE lets them through), so the log that held it
    // is compacted away.
    for i in 0..20 {
        a.server
            .delete_range(
                &pgraft_server::auth::Caller::Internal,
                DeleteRangeRequest {
                    key: format!("nothing/{i}").into_bytes(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let before = pgraft_server::snapshot::stats().installed;
    a.server
        .member_add(etcd_proto::etcdserverpb::MemberAddRequest {
            peer_ur_ls: vec![ub.clone()],
            is_learner: true,
        })
        .await
        .unwrap();
    let b = Node::start(cfg("b", &format!("a={ua},b={ub}"), "existing", &ub))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.server.alarms.get(AlarmType::None).is_empty() {
        assert!(Instant::now() < deadline, "the new member has no alarm");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        pgraft_server::snapshot::stats().installed > before,
        "no snapshot installed"
    );
    assert_eq!(
        b.server.alarms.get(AlarmType::None),
        a.server.alarms.get(AlarmType::None)
    );
    b.stop().await;
    a.stop().await;
}
