//! etcd's server-side Lock and Election services (`v3lockpb`, `v3electionpb`): key layout,
//! contention, waiters released by unlock, revocation or resignation, clients that go away,
//! errors (etcd's strings, sent as `Unknown` as etcd's in-process client leaves them), and
//! Observe. Every wait is bounded.

mod common;
use common::{assert_status, TestNode, TIMEOUT};
use etcd_proto::etcdserverpb::{LeaseRevokeRequest, LeaseTimeToLiveRequest};
use etcd_proto::v3electionpb::election_client::ElectionClient;
use etcd_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ResignRequest,
};
use etcd_proto::v3lockpb::lock_client::LockClient;
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Long enough that a waiter which was going to return wrongly would have.
const WAITS: Duration = Duration::from_millis(500);

fn locks(n: &TestNode) -> LockClient<Channel> {
    LockClient::new(n.channel.clone())
}

fn elections(n: &TestNode) -> ElectionClient<Channel> {
    ElectionClient::new(n.channel.clone())
}

async fn lock(n: &TestNode, name: &str, lease: i64) -> Result<LockResponse, Status> {
    let req = LockRequest {
        name: name.into(),
        lease,
    };
    tokio::time::timeout(TIMEOUT, locks(n).lock(req))
        .await
        .expect("Lock did not return")
        .map(|r| r.into_inner())
}

/// A Lock that is expected to wait, running in the background.
fn lock_in_background(
    n: &TestNode,
    name: &str,
    lease: i64,
) -> JoinHandle<Result<LockResponse, Status>> {
    let mut c = locks(n);
    let req = LockRequest {
        name: name.into(),
        lease,
    };
    tokio::spawn(async move { c.lock(req).await.map(|r| r.into_inner()) })
}

async fn finished<T>(h: JoinHandle<T>) -> T {
    tokio::time::timeout(TIMEOUT, h)
        .await
        .expect("the waiter did not return in time")
        .expect("waiter task")
}

async fn unlock(n: &TestNode, key: &[u8]) -> i64 {
    locks(n)
        .unlock(UnlockRequest { key: key.to_vec() })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

async fn revoke(n: &TestNode, id: i64) {
    n.lease()
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap();
}

async fn keys_under(n: &TestNode, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    n.kv()
        .range(etcd_proto::etcdserverpb::RangeRequest {
            key: prefix.into(),
            range_end: end,
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8(kv.key).unwrap())
        .collect()
}

async fn wait_until_keys(n: &TestNode, prefix: &str, want: usize) -> Vec<String> {
    for _ in 0..100 {
        let keys = keys_under(n, prefix).await;
        if keys.len() == want {
            return keys;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "never {want} keys under {prefix}: {:?}",
        keys_under(n, prefix).await
    );
}

fn streams(n: &TestNode) -> usize {
    n.node.as_ref().unwrap().server.hub.stream_count()
}

#[tokio::test]
async fn lock_is_a_key_under_the_name_and_the_next_waiter_gets_it_after_unlock() {
    let n = TestNode::start().await;
    let (a, b) = (n.grant(60, 0x1a).await, n.grant(60, 0x2b).await);
    let held = lock(&n, "L", a).await.unwrap();
    assert_eq!(held.key, b"L/1a");
    let kv = n.get("L/1a").await.unwrap();
    assert_eq!((kv.lease, kv.value.len()), (a, 0));
    assert_eq!(held.header.unwrap().revision, kv.create_revision);
    // The same lease locking again finds its own key: it already holds the lock.
    assert_eq!(lock(&n, "L", a).await.unwrap().key, b"L/1a");

    let idle = streams(&n);
    let waiter = lock_in_background(&n, "L", b);
    tokio::time::sleep(WAITS).await;
    assert!(!waiter.is_finished(), "got a lock someone holds");
    // Waiting is one subscription to new revisions per waiter.
    assert_eq!(streams(&n), idle + 1);
    let unlocked = unlock(&n, b"L/1a").await;
    let got = finished(waiter).await.unwrap();
    assert_eq!(got.key, b"L/2b");
    assert!(got.header.unwrap().revision >= unlocked);
    assert_eq!(streams(&n), idle, "the waiter's subscription outlived it");
    assert_eq!(keys_under(&n, "L/").await, ["L/2b"]);
}

#[tokio::test]
async fn waiters_queue_in_order_and_a_revoked_lease_releases_the_lock() {
    let n = TestNode::start().await;
    let (a, b, c) = (
        n.grant(60, 0xa).await,
        n.grant(60, 0xb).await,
        n.grant(60, 0xc).await,
    );
    lock(&n, "Q", a).await.unwrap();
    let wb = lock_in_background(&n, "Q", b);
    wait_until_keys(&n, "Q/", 2).await;
    let wc = lock_in_background(&n, "Q", c);
    wait_until_keys(&n, "Q/", 3).await;
    tokio::time::sleep(WAITS).await;
    assert!(!wb.is_finished() && !wc.is_finished());
    // The holder's lease ends: its key goes, and the oldest waiter (b) gets the lock, not c.
    revoke(&n, a).await;
    assert_eq!(finished(wb).await.unwrap().key, b"Q/b");
    tokio::time::sleep(WAITS).await;
    assert!(!wc.is_finished(), "c got the lock b holds");
    revoke(&n, b).await;
    assert_eq!(finished(wc).await.unwrap().key, b"Q/c");
}

#[tokio::test]
async fn a_waiter_whose_lease_ends_gets_session_expired() {
    let n = TestNode::start().await;
    let (a, b) = (n.grant(60, 1).await, n.grant(60, 2).await);
    lock(&n, "S", a).await.unwrap();
    let wb = lock_in_background(&n, "S", b);
    wait_until_keys(&n, "S/", 2).await;
    revoke(&n, b).await;
    unlock(&n, b"S/1").await;
    assert_status(
        finished(wb).await,
        Code::Unknown,
        "mutex: session is expired",
    );
    assert!(keys_under(&n, "S/").await.is_empty());
}

#[tokio::test]
async fn a_waiter_whose_client_goes_away_leaves_no_key() {
    let n = TestNode::start().await;
    let (a, b) = (n.grant(60, 1).await, n.grant(60, 2).await);
    lock(&n, "G", a).await.unwrap();
    let idle = streams(&n);
    let mut c = locks(&n);
    let req = LockRequest {
        name: "G".into(),
        lease: b,
    };
    // The client gives up (dropping the call resets its HTTP/2 stream).
    let gave_up = tokio::time::timeout(Duration::from_millis(700), c.lock(req)).await;
    assert!(gave_up.is_err(), "the lock was free: {gave_up:?}");
    assert_eq!(wait_until_keys(&n, "G/", 1).await, ["G/1"]);
    for _ in 0..100 {
        if streams(&n) == idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(streams(&n), idle);
}

#[tokio::test]
async fn lock_errors_are_etcds() {
    let n = TestNode::start().await;
    assert_status(
        lock(&n, "E", 999).await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    );
    assert!(keys_under(&n, "E/").await.is_empty());
    assert_status(
        locks(&n).unlock(UnlockRequest { key: Vec::new() }).await,
        Code::Unknown,
        "etcdserver: key is not provided",
    );
}

#[tokio::test]
async fn lock_without_a_lease_gets_a_60s_session_lease() {
    let n = TestNode::start().await;
    let got = lock(&n, "N", 0).await.unwrap();
    let kv = n.get(std::str::from_utf8(&got.key).unwrap()).await.unwrap();
    assert_ne!(kv.lease, 0);
    assert_eq!(got.key, format!("N/{:x}", kv.lease).into_bytes());
    let ttl = n
        .lease()
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: kv.lease,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
}

async fn campaign(n: &TestNode, name: &str, lease: i64, value: &str) -> CampaignResponse {
    let req = CampaignRequest {
        name: name.into(),
        lease,
        value: value.into(),
    };
    tokio::time::timeout(TIMEOUT, elections(n).campaign(req))
        .await
        .expect("Campaign did not return")
        .unwrap()
        .into_inner()
}

async fn leader(n: &TestNode, name: &str) -> Result<LeaderResponse, Status> {
    elections(n)
        .leader(LeaderRequest { name: name.into() })
        .await
        .map(|r| r.into_inner())
}

async fn proclaim(n: &TestNode, leader: &LeaderKey, value: &str) -> Result<i64, Status> {
    elections(n)
        .proclaim(ProclaimRequest {
            leader: Some(leader.clone()),
            value: value.into(),
        })
        .await
        .map(|r| r.into_inner().header.unwrap().revision)
}

async fn resign(n: &TestNode, leader: &LeaderKey) -> Result<i64, Status> {
    elections(n)
        .resign(ResignRequest {
            leader: Some(leader.clone()),
        })
        .await
        .map(|r| r.into_inner().header.unwrap().revision)
}

#[tokio::test]
async fn campaign_proclaim_leader_resign() {
    let n = TestNode::start().await;
    assert_status(leader(&n, "E").await, Code::Unknown, "election: no leader");
    let a = n.grant(60, 0xa).await;
    let won = campaign(&n, "E", a, "v1").await;
    let l = won.leader.clone().unwrap();
    assert_eq!(
        (l.name.as_slice(), l.key.as_slice(), l.lease),
        (&b"E"[..], &b"E/a"[..], a)
    );
    assert_eq!(l.rev, won.header.unwrap().revision);
    let kv = leader(&n, "E").await.unwrap().kv.unwrap();
    assert_eq!(
        (kv.key, kv.value, kv.create_revision),
        (b"E/a".to_vec(), b"v1".to_vec(), l.rev)
    );

    let rev = proclaim(&n, &l, "v2").await.unwrap();
    let kv = leader(&n, "E").await.unwrap().kv.unwrap();
    assert_eq!(
        (kv.value, kv.mod_revision, kv.lease),
        (b"v2".to_vec(), rev, a)
    );
    // A stale leader key (another create revision) is not the leader.
    let stale = LeaderKey {
        rev: 1,
        ..l.clone()
    };
    assert_status(
        proclaim(&n, &stale, "x").await,
        Code::Unknown,
        "election: not leader",
    );
    assert_status(
        elections(&n)
            .proclaim(ProclaimRequest {
                leader: None,
                value: b"x".to_vec(),
            })
            .await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    assert_status(
        elections(&n).resign(ResignRequest { leader: None }).await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    // Campaigning again with the same lease keeps the place and updates the value.
    let again = campaign(&n, "E", a, "v3").await;
    assert_eq!(again.leader.unwrap().rev, l.rev);
    assert_eq!(leader(&n, "E").await.unwrap().kv.unwrap().value, b"v3");

    resign(&n, &l).await.unwrap();
    assert_status(leader(&n, "E").await, Code::Unknown, "election: no leader");
    // Resigning a key that no longer leads changes nothing.
    let before = n.rev().await;
    assert_eq!(resign(&n, &l).await.unwrap(), before);
}

#[tokio::test]
async fn a_candidate_waits_for_the_leader_and_one_that_leaves_withdraws() {
    let n = TestNode::start().await;
    let (a, b, c) = (
        n.grant(60, 1).await,
        n.grant(60, 2).await,
        n.grant(60, 3).await,
    );
    let first = campaign(&n, "C", a, "a").await.leader.unwrap();
    let mut e = elections(&n);
    let req = CampaignRequest {
        name: "C".into(),
        lease: b,
        value: "b".into(),
    };
    let second = tokio::spawn(async move { e.campaign(req).await.map(|r| r.into_inner()) });
    wait_until_keys(&n, "C/", 2).await;
    // A third candidate gives up while waiting: its key goes.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(700),
        elections(&n).campaign(CampaignRequest {
            name: "C".into(),
            lease: c,
            value: "c".into(),
        }),
    )
    .await;
    assert!(gave_up.is_err());
    wait_until_keys(&n, "C/", 2).await;
    assert!(!second.is_finished(), "elected while another leads");
    resign(&n, &first).await.unwrap();
    let won = finished(second).await.unwrap();
    assert_eq!(won.leader.unwrap().key, b"C/2");
    assert_eq!(leader(&n, "C").await.unwrap().kv.unwrap().value, b"b");
}

#[tokio::test]
async fn observe_follows_the_leader_and_its_values() {
    let n = TestNode::start().await;
    let (a, b) = (n.grant(60, 1).await, n.grant(60, 2).await);
    let mut obs = elections(&n)
        .observe(LeaderRequest { name: "O".into() })
        .await
        .unwrap()
        .into_inner();
    // No leader yet: the first message is the first candidate.
    let _ = n.put("other", "x").await;
    let la = campaign(&n, "O", a, "a1").await.leader.unwrap();
    let m = next(&mut obs).await;
    let kv = m.kv.unwrap();
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (&b"O/1"[..], &b"a1"[..])
    );
    assert_eq!(m.header.unwrap().revision, kv.mod_revision);
    let rev = proclaim(&n, &la, "a2").await.unwrap();
    let m = next(&mut obs).await;
    assert_eq!(m.kv.as_ref().unwrap().value, b"a2");
    assert_eq!(m.header.unwrap().revision, rev);

    let mut e = elections(&n);
    let req = CampaignRequest {
        name: "O".into(),
        lease: b,
        value: "b1".into(),
    };
    let second = tokio::spawn(async move { e.campaign(req).await });
    wait_until_keys(&n, "O/", 2).await;
    revoke(&n, a).await;
    finished(second).await.unwrap();
    let kv = next(&mut obs).await.kv.unwrap();
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (&b"O/2"[..], &b"b1"[..])
    );
}

async fn next(obs: &mut tonic::Streaming<LeaderResponse>) -> LeaderResponse {
    tokio::time::timeout(TIMEOUT, obs.message())
        .await
        .expect("no Observe message in time")
        .expect("Observe failed")
        .expect("Observe ended")
}

#[tokio::test]
async fn many_waiters_get_the_lock_one_at_a_time_in_arrival_order() {
    const N: i64 = 20;
    let n = TestNode::start().await;
    for id in 1..=N {
        n.grant(60, id).await;
    }
    let idle = streams(&n);
    let mut holder = lock(&n, "F", 1).await.unwrap().key;
    let mut waiters = Vec::new();
    for id in 2..=N {
        waiters.push((id, lock_in_background(&n, "F", id)));
        wait_until_keys(&n, "F/", id as usize).await;
    }
    // One subscription per waiter, no more.
    assert_eq!(streams(&n), idle + (N - 1) as usize);
    for (id, w) in waiters {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !w.is_finished(),
            "waiter {id} got the lock {holder:?} holds"
        );
        unlock(&n, &holder).await;
        holder = finished(w).await.unwrap().key;
        assert_eq!(holder, format!("F/{id:x}").into_bytes());
    }
    assert_eq!(streams(&n), idle);
}
