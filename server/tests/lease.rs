//! Lease semantics (reference §2.10): grant, revoke, keepalive, time-to-live, listing, expiry
//! and restarts. Waits for expiry are bounded.

mod common;
use common::{assert_status, TestNode, WatchConn, TIMEOUT};
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, WatchCreateRequest,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::Event;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::Code;

async fn grant(n: &TestNode, ttl: i64, id: i64) -> Result<(i64, i64, i64), tonic::Status> {
    n.lease()
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .map(|r| {
            let r = r.into_inner();
            assert!(r.error.is_empty());
            (r.id, r.ttl, r.header.unwrap().revision)
        })
}

async fn ttl(n: &TestNode, id: i64, keys: bool) -> LeaseTimeToLiveResponse {
    n.lease()
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
        .await
        .unwrap()
        .into_inner()
}

async fn leases(n: &TestNode) -> Vec<i64> {
    let mut ids: Vec<i64> = n
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    ids.sort();
    ids
}

async fn revoke(n: &TestNode, id: i64) -> Result<i64, tonic::Status> {
    n.lease()
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .map(|r| r.into_inner().header.unwrap().revision)
}

/// A KeepAlive stream: send IDs, read answers with a bound.
struct KeepAlive {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    rx: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl KeepAlive {
    async fn open(n: &TestNode) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let rx = tokio::time::timeout(
            TIMEOUT,
            n.lease()
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .unwrap()
        .unwrap()
        .into_inner();
        KeepAlive { tx, rx }
    }

    async fn renew(&mut self, id: i64) -> LeaseKeepAliveResponse {
        self.tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
        match tokio::time::timeout(TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("no keepalive answer: {other:?}"),
        }
    }
}

async fn prefix_watch(n: &TestNode, p: &str) -> (WatchConn, i64) {
    let mut w = n.watch_stream().await;
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let id = w
        .create(WatchCreateRequest {
            key: p.into(),
            range_end: end,
            ..Default::default()
        })
        .await
        .watch_id;
    (w, id)
}

fn delete_keys(events: &[Event], rev: i64) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e.r#type, EventType::Delete as i32, "{e:?}");
            let kv = e.kv.as_ref().unwrap();
            assert_eq!(kv.mod_revision, rev);
            String::from_utf8(kv.key.clone()).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn grant_assigns_a_positive_id_when_asked_for_0() {
    let n = TestNode::start().await;
    let (a, ttl_a, rev) = grant(&n, 60, 0).await.unwrap();
    let (b, _, _) = grant(&n, 60, 0).await.unwrap();
    assert!(a > 0 && b > 0, "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(ttl_a, 60);
    // Grants do not bump the revision; the header carries the current one.
    assert_eq!(rev, 1);
    assert_eq!(n.rev().await, 1);
    assert_eq!(leases(&n).await, {
        let mut v = vec![a, b];
        v.sort();
        v
    });
}

#[tokio::test]
async fn grant_with_an_explicit_id_and_a_duplicate() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    assert_eq!(grant(&n, 60, 1000).await.unwrap(), (1000, 60, 2));
    assert_status(
        grant(&n, 30, 1000).await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    // The original lease is unchanged.
    assert_eq!(ttl(&n, 1000, false).await.granted_ttl, 60);
    assert_eq!(leases(&n).await, [1000]);
    assert_eq!(n.rev().await, 2);
}

#[tokio::test]
async fn grant_raises_short_ttls_to_the_minimum() {
    let n = TestNode::start().await;
    // Minimum TTL: ceil(1.5 x 1000 ms election timeout) = 2 s.
    for (asked, got) in [(1, 2), (0, 2), (-5, 2), (2, 2), (3, 3)] {
        let (id, t, _) = grant(&n, asked, 0).await.unwrap();
        assert_eq!(t, got, "TTL {asked}");
        assert_eq!(ttl(&n, id, false).await.granted_ttl, got);
    }
}

#[tokio::test]
async fn grant_rejects_ttls_above_9e9() {
    let n = TestNode::start().await;
    assert_status(
        grant(&n, 9_000_000_001, 0).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    assert_status(
        grant(&n, i64::MAX, 5).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    assert!(leases(&n).await.is_empty());
    // The maximum itself is fine.
    let (id, t, _) = grant(&n, 9_000_000_000, 0).await.unwrap();
    assert_eq!(t, 9_000_000_000);
    let r = ttl(&n, id, false).await;
    assert_eq!(r.granted_ttl, 9_000_000_000);
    assert!(r.ttl > 8_999_999_000, "{r:?}");
    let mut ka = KeepAlive::open(&n).await;
    assert_eq!(ka.renew(id).await.ttl, 9_000_000_000);
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let n = TestNode::start().await;
    let (l, _, _) = grant(&n, 60, 0).await.unwrap();
    n.put_lease("p/c", "1", l).await;
    n.put_lease("p/a", "1", l).await;
    n.put_lease("p/b", "1", l).await;
    n.put("p/free", "1").await;
    let before = n.put_lease("q", "1", l).await; // 6
    let (mut w, id) = prefix_watch(&n, "p/").await;
    let rev = revoke(&n, l).await.unwrap();
    assert_eq!(rev, before + 1, "one revision for all keys");
    assert_eq!(n.rev().await, before + 1);
    // One response, DELETE events in key order, all at that revision.
    let r = w.next().await;
    assert_eq!(r.watch_id, id);
    assert_eq!(r.header.unwrap().revision, rev);
    assert_eq!(delete_keys(&r.events, rev), ["p/a", "p/b", "p/c"]);
    w.expect_silence(Duration::from_millis(300)).await;
    for k in ["p/a", "p/b", "p/c", "q"] {
        assert!(n.get(k).await.is_none(), "{k} survived the revoke");
    }
    assert!(n.get("p/free").await.is_some());
    assert_eq!(ttl(&n, l, true).await.ttl, -1);
    assert!(leases(&n).await.is_empty());
    // Gone: a second revoke does not find it.
    assert_status(
        revoke(&n, l).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

#[tokio::test]
async fn revoking_a_lease_without_keys_does_not_bump_the_revision() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    let (l, _, _) = grant(&n, 60, 0).await.unwrap();
    assert_eq!(revoke(&n, l).await.unwrap(), 2);
    assert_eq!(n.rev().await, 2);
    assert!(leases(&n).await.is_empty());
}

#[tokio::test]
async fn revoke_unknown_lease() {
    let n = TestNode::start().await;
    assert_status(
        revoke(&n, 12345).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(n.rev().await, 1);
}

#[tokio::test]
async fn keepalive_returns_the_full_ttl() {
    let n = TestNode::start().await;
    let (l, _, _) = grant(&n, 10, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = ttl(&n, l, false).await.ttl;
    assert!(before <= 9, "TTL after 1.2 s: {before}");
    let mut ka = KeepAlive::open(&n).await;
    let r = ka.renew(l).await;
    assert_eq!((r.id, r.ttl), (l, 10));
    let h = r.header.unwrap();
    assert_eq!(h.revision, 1);
    assert_ne!(h.member_id, 0);
    // The deadline moved: remaining time is back near the full TTL.
    let after = ttl(&n, l, false).await;
    assert!(after.ttl >= 9 && after.ttl <= 10, "{after:?}");
    assert_eq!(after.granted_ttl, 10);
    // The same stream keeps serving.
    assert_eq!(ka.renew(l).await.ttl, 10);
}

#[tokio::test]
async fn keepalive_of_an_unknown_lease_answers_ttl_0_and_keeps_the_stream() {
    let n = TestNode::start().await;
    let (l, _, _) = grant(&n, 30, 0).await.unwrap();
    let mut ka = KeepAlive::open(&n).await;
    let r = ka.renew(4242).await;
    assert_eq!((r.id, r.ttl), (4242, 0));
    assert!(r.header.is_some());
    // The stream is still open.
    let r = ka.renew(l).await;
    assert_eq!((r.id, r.ttl), (l, 30));
    // Also for a revoked lease.
    revoke(&n, l).await.unwrap();
    assert_eq!(ka.renew(l).await.ttl, 0);
    assert_eq!(ka.renew(4242).await.ttl, 0);
}

#[tokio::test]
async fn keepalives_keep_a_lease_alive() {
    let n = TestNode::start().await;
    let (l, t, _) = grant(&n, 2, 0).await.unwrap();
    assert_eq!(t, 2);
    n.put_lease("kept", "1", l).await;
    let mut ka = KeepAlive::open(&n).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        assert_eq!(ka.renew(l).await.ttl, 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(n.get("kept").await.is_some(), "renewed lease expired");
    assert_eq!(ttl(&n, l, false).await.granted_ttl, 2);
}

#[tokio::test]
async fn time_to_live() {
    let n = TestNode::start().await;
    let (l, _, _) = grant(&n, 60, 0).await.unwrap();
    n.put_lease("b", "1", l).await;
    n.put_lease("a", "1", l).await;
    n.put("c", "1").await;
    let r = ttl(&n, l, true).await;
    assert_eq!(r.id, l);
    assert_eq!(r.granted_ttl, 60);
    assert!(r.ttl >= 58 && r.ttl <= 60, "{r:?}");
    assert_eq!(r.keys, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(r.header.unwrap().revision, 4);
    // Keys only when asked for.
    let r = ttl(&n, l, false).await;
    assert!(r.keys.is_empty());
    // Unknown lease: TTL -1 and no error.
    let r = ttl(&n, 12345, true).await;
    assert_eq!((r.id, r.ttl, r.granted_ttl), (12345, -1, 0));
    assert!(r.keys.is_empty());
    assert_eq!(r.header.unwrap().revision, 4);
}

#[tokio::test]
async fn leases_lists_every_lease() {
    let n = TestNode::start().await;
    assert!(leases(&n).await.is_empty());
    grant(&n, 60, 7).await.unwrap();
    grant(&n, 60, 3).await.unwrap();
    let (auto, _, _) = grant(&n, 60, 0).await.unwrap();
    let mut want = vec![3, 7, auto];
    want.sort();
    assert_eq!(leases(&n).await, want);
    revoke(&n, 7).await.unwrap();
    want.retain(|id| *id != 7);
    assert_eq!(leases(&n).await, want);
    let r = n
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 1);
}

#[tokio::test]
async fn expiry_deletes_the_keys_with_delete_events() {
    let n = TestNode::start().await;
    let (l, t, _) = grant(&n, 2, 0).await.unwrap();
    assert_eq!(t, 2);
    n.put_lease("e/b", "1", l).await;
    let before = n.put_lease("e/a", "1", l).await; // 3
    n.put("e/other", "1").await; // 4
    let (mut w, id) = prefix_watch(&n, "e/").await;
    let start = Instant::now();
    // Expiry after ~2 s; the leader checks twice a second. Bounded by the stream read timeout.
    let r = w.next().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "expired early: {waited:?}"
    );
    assert_eq!(r.watch_id, id);
    let rev = r.header.unwrap().revision;
    assert_eq!(rev, before + 2);
    assert_eq!(delete_keys(&r.events, rev), ["e/a", "e/b"]);
    assert!(n.get("e/a").await.is_none());
    assert!(n.get("e/b").await.is_none());
    assert!(n.get("e/other").await.is_some());
    assert_eq!(ttl(&n, l, false).await.ttl, -1);
    assert!(leases(&n).await.is_empty());
    assert_eq!(n.rev().await, rev);
    let mut ka = KeepAlive::open(&n).await;
    assert_eq!(ka.renew(l).await.ttl, 0);
}

#[tokio::test]
async fn leases_and_their_keys_survive_a_restart() {
    let mut n = TestNode::start().await;
    let (l, _, _) = grant(&n, 60, 1000).await.unwrap();
    let (short, _, _) = grant(&n, 30, 0).await.unwrap();
    n.put_lease("a", "1", l).await;
    n.put_lease("b", "1", l).await;
    n.put_lease("c", "1", short).await;
    n.put("b", "2").await; // detached from l before the restart
    let rev = n.rev().await;
    n.restart().await;
    assert_eq!(n.rev().await, rev);
    let mut want = vec![1000, short];
    want.sort();
    assert_eq!(leases(&n).await, want);
    let r = ttl(&n, l, true).await;
    assert_eq!(r.granted_ttl, 60);
    assert!(r.ttl > 0 && r.ttl <= 62, "{r:?}");
    assert_eq!(r.keys, vec![b"a".to_vec()]);
    assert_eq!(ttl(&n, short, true).await.keys, vec![b"c".to_vec()]);
    assert_eq!(n.get("a").await.unwrap().lease, l);
    // The lease still works: keepalive, a new attachment, a duplicate grant, and revoke.
    let mut ka = KeepAlive::open(&n).await;
    assert_eq!(ka.renew(l).await.ttl, 60);
    n.put_lease("d", "1", l).await;
    assert_status(
        grant(&n, 60, 1000).await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    let r = revoke(&n, l).await.unwrap();
    assert_eq!(r, rev + 2);
    assert!(n.get("a").await.is_none());
    assert!(n.get("d").await.is_none());
    assert_eq!(n.get("b").await.unwrap().value, b"2");
    assert!(n.get("c").await.is_some());
    // A revoked lease stays revoked across a restart.
    n.restart().await;
    assert_eq!(leases(&n).await, [short]);
    assert!(n.get("a").await.is_none());
}

#[tokio::test]
async fn expiry_after_a_restart() {
    let mut n = TestNode::start().await;
    let (l, _, _) = grant(&n, 2, 0).await.unwrap();
    n.put_lease("k", "1", l).await;
    n.restart().await;
    assert!(n.get("k").await.is_some());
    // Re-armed at election timeout + TTL after the restart, then revoked by the leader.
    let deadline = Instant::now() + Duration::from_secs(8);
    while n.get("k").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "lease never expired after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ttl(&n, l, false).await.ttl, -1);
}

#[tokio::test]
async fn open_keepalive_and_watch_streams_do_not_block_a_restart() {
    let mut n = TestNode::start().await;
    let (l, _, _) = grant(&n, 60, 0).await.unwrap();
    n.put_lease("k", "1", l).await;
    let mut ka = KeepAlive::open(&n).await;
    assert_eq!(ka.renew(l).await.ttl, 60);
    let mut w = n.watch_stream().await;
    w.watch_key("k").await;
    // Both streams stay open on the client side while the member restarts.
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), n.restart())
        .await
        .expect("restart hung on open streams");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // The old streams end with etcd's `server stopped` (Unavailable, so clients reconnect).
    for r in [
        tokio::time::timeout(TIMEOUT, ka.rx.message())
            .await
            .map(|r| r.map(|_| ())),
        tokio::time::timeout(TIMEOUT, w.rx.message())
            .await
            .map(|r| r.map(|_| ())),
    ] {
        let e = r
            .expect("old stream still open")
            .expect_err("old stream ended without status");
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unavailable, "etcdserver: server stopped")
        );
    }
    // The restarted member has the lease and its key.
    assert_eq!(ttl(&n, l, true).await.keys, vec![b"k".to_vec()]);
}
