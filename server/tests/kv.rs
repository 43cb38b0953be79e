//! KV semantics (reference §2.3–§2.6, §2.8): revisions, Range, Put, DeleteRange and Compact,
//! through the real gRPC client.

mod common;
use common::{assert_status, TestNode};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    RangeResponse, TxnRequest,
};
use etcd_proto::mvccpb::KeyValue;
use tonic::Code;

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

async fn range(n: &TestNode, r: RangeRequest) -> RangeResponse {
    n.kv().range(r).await.unwrap().into_inner()
}

fn rr(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

async fn delete(n: &TestNode, key: &str, end: &str, prev_kv: bool) -> (i64, i64, Vec<KeyValue>) {
    let r = n
        .kv()
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv,
        })
        .await
        .unwrap()
        .into_inner();
    (r.header.unwrap().revision, r.deleted, r.prev_kvs)
}

async fn compact(n: &TestNode, revision: i64, physical: bool) -> Result<i64, tonic::Status> {
    n.kv()
        .compact(CompactionRequest { revision, physical })
        .await
        .map(|r| r.into_inner().header.unwrap().revision)
}

#[tokio::test]
async fn new_store_is_at_revision_1_and_each_effective_write_adds_one() {
    let n = TestNode::start().await;
    assert_eq!(n.rev().await, 1);
    assert_eq!(n.put("a", "1").await, 2);
    // An unchanged value is still a new revision.
    assert_eq!(n.put("a", "1").await, 3);
    assert_eq!(n.put("b", "2").await, 4);
    assert_eq!(delete(&n, "a", "", false).await, (5, 1, vec![]));
    // Deleting nothing does not bump; the header carries the unchanged current revision.
    assert_eq!(delete(&n, "a", "", false).await, (5, 0, vec![]));
    assert_eq!(delete(&n, "x", "y", false).await, (5, 0, vec![]));
    // Reads do not bump, nor does a read-only txn.
    range(&n, rr("b", "")).await;
    let t = n
        .kv()
        .txn(TxnRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.header.unwrap().revision, 5);
    assert_eq!(n.rev().await, 5);
    assert_eq!(n.put("c", "3").await, 6);
}

#[tokio::test]
async fn put_sets_create_mod_revision_and_version() {
    let n = TestNode::start().await;
    n.put("k", "v1").await;
    n.put("other", "x").await;
    n.put("k", "v2").await;
    let kv = n.get("k").await.unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 4, 2, 0)
    );
    assert_eq!(kv.value, b"v2");
    delete(&n, "k", "", false).await;
    assert!(n.get("k").await.is_none());
    // Re-created after a delete: version restarts at 1, with a new create revision.
    assert_eq!(n.put("k", "v3").await, 6);
    let kv = n.get("k").await.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (6, 6, 1));
}

#[tokio::test]
async fn range_header_is_the_current_revision_even_for_historical_reads() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    n.put("a", "2").await;
    n.put("a", "3").await;
    let r = range(
        &n,
        RangeRequest {
            key: "a".into(),
            revision: 2,
            ..Default::default()
        },
    )
    .await;
    let h = r.header.unwrap();
    assert_eq!(h.revision, 4);
    assert_ne!(h.cluster_id, 0);
    assert_ne!(h.member_id, 0);
    assert_ne!(h.raft_term, 0);
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(r.count, 1);
}

#[tokio::test]
async fn range_single_key_prefix_from_key_and_all_keys() {
    let n = TestNode::start().await;
    for k in ["a", "ab", "abc", "ac", "b", "c"] {
        n.put(k, k).await;
    }
    // A missing single key: no kvs, count 0.
    let r = range(&n, rr("none", "")).await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 0);
    assert!(!r.more);
    // Empty range_end: exactly that key, not its prefix.
    let r = range(&n, rr("ab", "")).await;
    assert_eq!(keys(&r.kvs), ["ab"]);
    assert_eq!(r.count, 1);
    // Prefix "ab": range_end "ac".
    let r = range(&n, rr("ab", "ac")).await;
    assert_eq!(keys(&r.kvs), ["ab", "abc"]);
    // Half-open interval.
    assert_eq!(
        keys(&range(&n, rr("ab", "b")).await.kvs),
        ["ab", "abc", "ac"]
    );
    // "\0" range_end: every key >= key.
    let r = range(&n, rr("ac", "\0")).await;
    assert_eq!(keys(&r.kvs), ["ac", "b", "c"]);
    assert_eq!(r.count, 3);
    // All keys.
    let r = range(&n, rr("\0", "\0")).await;
    assert_eq!(keys(&r.kvs), ["a", "ab", "abc", "ac", "b", "c"]);
    assert_eq!(r.count, 6);
    // range_end <= key: empty.
    let r = range(&n, rr("b", "a")).await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 0);
    let r = range(&n, rr("b", "b")).await;
    assert!(r.kvs.is_empty());
}

#[tokio::test]
async fn range_orders_keys_by_raw_bytes() {
    let n = TestNode::start().await;
    for k in [&b"a\xff"[..], b"a\x00", b"a", b"B", b"a\x7f"] {
        n.kv()
            .put(PutRequest {
                key: k.to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let r = range(&n, rr("\0", "\0")).await;
    let got: Vec<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key).collect();
    let want: Vec<Vec<u8>> = vec![
        b"B".to_vec(),
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"a\x7f".to_vec(),
        b"a\xff".to_vec(),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn range_limit_more_and_count() {
    let n = TestNode::start().await;
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        n.put(k, "v").await;
    }
    let lim = |limit| RangeRequest {
        key: "k".into(),
        range_end: "l".into(),
        limit,
        ..Default::default()
    };
    let r = range(&n, lim(2)).await;
    assert_eq!(keys(&r.kvs), ["k1", "k2"]);
    assert!(r.more);
    assert_eq!(r.count, 5);
    let r = range(&n, lim(4)).await;
    assert_eq!(r.kvs.len(), 4);
    assert!(r.more);
    let r = range(&n, lim(5)).await;
    assert_eq!(r.kvs.len(), 5);
    assert!(!r.more);
    let r = range(&n, lim(6)).await;
    assert_eq!(r.kvs.len(), 5);
    assert!(!r.more);
    // 0 and negative mean no limit.
    for l in [0, -1] {
        let r = range(&n, lim(l)).await;
        assert_eq!(r.kvs.len(), 5);
        assert!(!r.more);
        assert_eq!(r.count, 5);
    }
}

#[tokio::test]
async fn range_count_only_and_keys_only() {
    let n = TestNode::start().await;
    for k in ["a", "b", "c"] {
        n.put(k, "value").await;
    }
    let r = range(
        &n,
        RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            count_only: true,
            limit: 1,
            ..Default::default()
        },
    )
    .await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    assert!(!r.more);
    let r = range(
        &n,
        RangeRequest {
            key: "a".into(),
            range_end: "c".into(),
            keys_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&r.kvs), ["a", "b"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    // Everything but the value is still there.
    assert_eq!(
        (
            r.kvs[0].create_revision,
            r.kvs[0].mod_revision,
            r.kvs[0].version
        ),
        (2, 2, 1)
    );
    assert_eq!(r.count, 2);
}

/// a: create 4, mod 4, version 1, value x1
/// b: create 2, mod 7, version 3, value x5
/// c: create 3, mod 5, version 2, value x0
async fn sort_fixture(n: &TestNode) {
    n.put("b", "x2").await;
    n.put("c", "x3").await;
    n.put("a", "x1").await;
    n.put("c", "x0").await;
    n.put("b", "x9").await;
    n.put("b", "x5").await;
}

#[tokio::test]
async fn range_sorts_by_every_target_and_order() {
    let n = TestNode::start().await;
    sort_fixture(&n).await;
    let cases = [
        (SortTarget::Key, ["a", "b", "c"]),
        (SortTarget::Version, ["a", "c", "b"]),
        (SortTarget::Create, ["b", "c", "a"]),
        (SortTarget::Mod, ["a", "c", "b"]),
        (SortTarget::Value, ["c", "a", "b"]),
    ];
    for (target, asc) in cases {
        let sorted = |order: SortOrder| RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            sort_order: order as i32,
            sort_target: target as i32,
            ..Default::default()
        };
        let got = keys(&range(&n, sorted(SortOrder::Ascend)).await.kvs);
        assert_eq!(got, asc, "{target:?} ascend");
        let got = keys(&range(&n, sorted(SortOrder::Descend)).await.kvs);
        let mut desc = asc.to_vec();
        desc.reverse();
        assert_eq!(got, desc, "{target:?} descend");
        // Order NONE: ascending for a target other than KEY, key order for KEY (the same).
        let got = keys(&range(&n, sorted(SortOrder::None)).await.kvs);
        assert_eq!(got, asc, "{target:?} none");
    }
}

#[tokio::test]
async fn range_sort_then_limit() {
    let n = TestNode::start().await;
    sort_fixture(&n).await;
    // As observed on 3.4.23: DESCEND by MOD with limit 1 -> the newest key, more, count 3.
    let r = range(
        &n,
        RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Mod as i32,
            limit: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&r.kvs), ["b"]);
    assert!(r.more);
    assert_eq!(r.count, 3);
    let r = range(
        &n,
        RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Key as i32,
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&r.kvs), ["c", "b"]);
    assert!(r.more);
}

#[tokio::test]
async fn range_revision_filters_are_inclusive_and_count_ignores_them() {
    let n = TestNode::start().await;
    sort_fixture(&n).await;
    let f = |min_mod, max_mod, min_create, max_create| RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        min_mod_revision: min_mod,
        max_mod_revision: max_mod,
        min_create_revision: min_create,
        max_create_revision: max_create,
        ..Default::default()
    };
    let r = range(&n, f(5, 0, 0, 0)).await;
    assert_eq!(keys(&r.kvs), ["b", "c"]);
    assert_eq!(r.count, 3);
    let r = range(&n, f(0, 5, 0, 0)).await;
    assert_eq!(keys(&r.kvs), ["a", "c"]);
    assert_eq!(r.count, 3);
    let r = range(&n, f(0, 0, 3, 0)).await;
    assert_eq!(keys(&r.kvs), ["a", "c"]);
    let r = range(&n, f(0, 0, 0, 3)).await;
    assert_eq!(keys(&r.kvs), ["b", "c"]);
    assert_eq!(r.count, 3);
    let r = range(&n, f(5, 5, 3, 3)).await;
    assert_eq!(keys(&r.kvs), ["c"]);
    assert_eq!(r.count, 3);
    let r = range(&n, f(8, 0, 0, 0)).await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 3);
    // With a limit, filtering happens before truncation.
    let mut req = f(5, 0, 0, 0);
    req.limit = 1;
    let r = range(&n, req).await;
    assert_eq!(keys(&r.kvs), ["b"]);
    assert!(r.more);
    assert_eq!(r.count, 3);
}

#[tokio::test]
async fn range_at_a_revision_sees_that_revision() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    n.put("b", "1").await; // 3
    n.put("a", "2").await; // 4
    delete(&n, "b", "", false).await; // 5
    n.put("c", "1").await; // 6
    let at = |revision| RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        revision,
        ..Default::default()
    };
    let r = range(&n, at(1)).await;
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 0);
    let r = range(&n, at(3)).await;
    assert_eq!(keys(&r.kvs), ["a", "b"]);
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(r.count, 2);
    let r = range(&n, at(4)).await;
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(r.kvs[0].version, 2);
    let r = range(&n, at(5)).await;
    assert_eq!(keys(&r.kvs), ["a"]);
    let r = range(&n, at(6)).await;
    assert_eq!(keys(&r.kvs), ["a", "c"]);
    assert_eq!(r.header.unwrap().revision, 6);
    // 0 and negative mean latest.
    assert_eq!(keys(&range(&n, at(-3)).await.kvs), ["a", "c"]);
}

#[tokio::test]
async fn range_future_and_compacted_revisions() {
    let n = TestNode::start().await;
    n.put("foo", "1").await; // 2
    n.put("foo", "2").await; // 3
    n.put("foo", "3").await; // 4
    let at = |revision| RangeRequest {
        key: "foo".into(),
        revision,
        ..Default::default()
    };
    assert_status(
        n.kv().range(at(5)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Exactly the current revision is fine.
    assert_eq!(range(&n, at(4)).await.kvs[0].value, b"3");
    assert_eq!(compact(&n, 3, false).await.unwrap(), 4);
    assert_status(
        n.kv().range(at(2)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    // Reading at the compact revision works.
    let r = range(&n, at(3)).await;
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(r.header.unwrap().revision, 4);
    assert_eq!(range(&n, at(0)).await.kvs[0].value, b"3");
}

#[tokio::test]
async fn serializable_range() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    let r = range(
        &n,
        RangeRequest {
            key: "a".into(),
            serializable: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(r.header.unwrap().revision, 2);
}

#[tokio::test]
async fn put_prev_kv() {
    let n = TestNode::start().await;
    let p = |v: &str| PutRequest {
        key: "foo".into(),
        value: v.into(),
        prev_kv: true,
        ..Default::default()
    };
    let r = n.kv().put(p("bar")).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, 2);
    assert!(r.prev_kv.is_none());
    let r = n.kv().put(p("baz")).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, 3);
    let prev = r.prev_kv.unwrap();
    assert_eq!(prev.key, b"foo");
    assert_eq!(prev.value, b"bar");
    assert_eq!(
        (prev.create_revision, prev.mod_revision, prev.version),
        (2, 2, 1)
    );
    // Without the flag there is no prev_kv.
    let r = n
        .kv()
        .put(PutRequest {
            key: "foo".into(),
            value: "q".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.prev_kv.is_none());
}

#[tokio::test]
async fn put_ignore_value_and_ignore_lease() {
    let n = TestNode::start().await;
    let l1 = n.grant(60, 0).await;
    let l2 = n.grant(60, 0).await;
    // Flags on a missing key: key not found, nothing written.
    for (iv, il) in [(true, false), (false, true)] {
        assert_status(
            n.kv()
                .put(PutRequest {
                    key: "nokey".into(),
                    ignore_value: iv,
                    ignore_lease: il,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
    }
    assert_eq!(n.rev().await, 1);
    assert!(n.get("nokey").await.is_none());

    n.put_lease("k", "v1", l1).await; // 2
                                      // ignore_value: keep the value, take the new lease.
    let r = n
        .kv()
        .put(PutRequest {
            key: "k".into(),
            lease: l2,
            ignore_value: true,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 3);
    assert_eq!(r.prev_kv.unwrap().lease, l1);
    let kv = n.get("k").await.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v1"[..], l2, 2)
    );
    // ignore_lease: keep the lease, take the new value.
    n.kv()
        .put(PutRequest {
            key: "k".into(),
            value: "v2".into(),
            ignore_lease: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let kv = n.get("k").await.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.mod_revision),
        (&b"v2"[..], l2, 4)
    );
    // Both: a pure "touch".
    n.kv()
        .put(PutRequest {
            key: "k".into(),
            ignore_value: true,
            ignore_lease: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let kv = n.get("k").await.unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.lease, kv.version),
        (&b"v2"[..], l2, 4)
    );
    // The key moved from l1 to l2.
    let ttl = |id| LeaseTimeToLiveRequest { id, keys: true };
    let t1 = n
        .lease()
        .lease_time_to_live(ttl(l1))
        .await
        .unwrap()
        .into_inner();
    assert!(t1.keys.is_empty());
    let t2 = n
        .lease()
        .lease_time_to_live(ttl(l2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t2.keys, vec![b"k".to_vec()]);
}

#[tokio::test]
async fn put_ignore_flags_reject_provided_value_or_lease() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    assert_status(
        n.kv()
            .put(PutRequest {
                key: "k".into(),
                value: "x".into(),
                ignore_value: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        n.kv()
            .put(PutRequest {
                key: "k".into(),
                lease: 5,
                ignore_lease: true,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    assert_eq!(n.rev().await, 2);
    assert_eq!(n.get("k").await.unwrap().value, b"v");
}

#[tokio::test]
async fn put_attaches_and_detaches_leases() {
    let n = TestNode::start().await;
    assert_status(
        n.kv()
            .put(PutRequest {
                key: "k".into(),
                value: "v".into(),
                lease: 12345,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(n.rev().await, 1);
    let l1 = n.grant(60, 0).await;
    let l2 = n.grant(60, 0).await;
    n.put_lease("a", "1", l1).await;
    n.put_lease("b", "1", l1).await;
    assert_eq!(n.get("a").await.unwrap().lease, l1);
    assert_eq!(n.lease_keys(l1).await, vec![b"a".to_vec(), b"b".to_vec()]);
    // A put without a lease detaches.
    n.put("a", "2").await;
    assert_eq!(n.get("a").await.unwrap().lease, 0);
    assert_eq!(n.lease_keys(l1).await, vec![b"b".to_vec()]);
    // A put with another lease moves the key.
    n.put_lease("b", "2", l2).await;
    assert!(n.lease_keys(l1).await.is_empty());
    assert_eq!(n.lease_keys(l2).await, vec![b"b".to_vec()]);
    // Revoking the old lease no longer touches the detached keys (and bumps nothing).
    let rev = n.rev().await;
    n.lease()
        .lease_revoke(etcd_proto::etcdserverpb::LeaseRevokeRequest { id: l1 })
        .await
        .unwrap();
    assert_eq!(n.rev().await, rev);
    assert!(n.get("a").await.is_some());
    assert!(n.get("b").await.is_some());
}

#[tokio::test]
async fn delete_prev_kv_and_ranges() {
    let n = TestNode::start().await;
    for k in ["p/a", "p/b", "p/c", "q", "r"] {
        n.put(k, k).await;
    } // rev 6
    let (rev, deleted, prevs) = delete(&n, "p/", "p0", true).await;
    assert_eq!((rev, deleted), (7, 3));
    assert_eq!(keys(&prevs), ["p/a", "p/b", "p/c"]);
    assert_eq!(prevs[1].value, b"p/b");
    assert_eq!(prevs[1].mod_revision, 3);
    // One revision for all deleted keys.
    assert_eq!(n.rev().await, 7);
    // Without prev_kv: only the count.
    let (rev, deleted, prevs) = delete(&n, "q", "", false).await;
    assert_eq!((rev, deleted, prevs.len()), (8, 1, 0));
    // range_end "\0": everything from the key on.
    n.put("s", "s").await; // 9
    let (rev, deleted, prevs) = delete(&n, "r", "\0", true).await;
    assert_eq!((rev, deleted), (10, 2));
    assert_eq!(keys(&prevs), ["r", "s"]);
    assert_eq!(range(&n, rr("\0", "\0")).await.count, 0);
    // History keeps the deleted values.
    let r = range(
        &n,
        RangeRequest {
            key: "\0".into(),
            range_end: "\0".into(),
            revision: 6,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.count, 5);
}

#[tokio::test]
async fn delete_detaches_keys_from_their_lease() {
    let n = TestNode::start().await;
    let l = n.grant(60, 0).await;
    n.put_lease("a", "1", l).await;
    n.put_lease("b", "1", l).await;
    delete(&n, "a", "", false).await;
    let t = n
        .lease()
        .lease_time_to_live(LeaseTimeToLiveRequest { id: l, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.keys, vec![b"b".to_vec()]);
}

#[tokio::test]
async fn compact_rules() {
    let n = TestNode::start().await;
    for v in ["1", "2", "3", "4"] {
        n.put("k", v).await;
    } // rev 5
    assert_status(
        compact(&n, 6, false).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // Compaction does not change the revision; the header carries the current one.
    assert_eq!(compact(&n, 3, false).await.unwrap(), 5);
    assert_eq!(n.rev().await, 5);
    for r in [3, 2, 1] {
        assert_status(
            compact(&n, r, false).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    // Compacting up to the current revision is allowed.
    assert_eq!(compact(&n, 5, true).await.unwrap(), 5);
    assert_eq!(n.get("k").await.unwrap().value, b"4");
    assert_eq!(n.put("k", "5").await, 6);
}

#[tokio::test]
async fn compact_physical_removes_old_revisions_and_keeps_live_keys() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    n.put("a", "2").await; // 3
    n.put("b", "1").await; // 4
    delete(&n, "b", "", false).await; // 5
    n.put("c", "1").await; // 6
    n.put("a", "3").await; // 7
    assert_eq!(compact(&n, 6, true).await.unwrap(), 7);
    let at = |revision| RangeRequest {
        key: "\0".into(),
        range_end: "\0".into(),
        revision,
        ..Default::default()
    };
    for r in 2..6 {
        assert_status(
            n.kv().range(at(r)).await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
    }
    // The newest value of each key at the compact revision survives.
    let r = range(&n, at(6)).await;
    assert_eq!(keys(&r.kvs), ["a", "c"]);
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(r.kvs[0].create_revision, 2);
    let r = range(&n, at(7)).await;
    assert_eq!(r.kvs[0].value, b"3");
    assert_eq!(r.kvs[0].version, 3);
    // Survives a restart.
    let mut n = n;
    n.restart().await;
    assert_status(
        n.kv().range(at(5)).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_eq!(keys(&range(&n, at(6)).await.kvs), ["a", "c"]);
    assert_eq!(n.rev().await, 7);
}

#[tokio::test]
async fn first_compaction_may_use_revision_0() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    // etcd's compact revision starts at -1, so 0 is a valid first compaction...
    assert_eq!(compact(&n, 0, false).await.unwrap(), 2);
    // ...and after it, 0 is compacted.
    assert_status(
        compact(&n, 0, false).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    assert_eq!(compact(&n, 1, false).await.unwrap(), 2);
}

/// A put carries on the create revision and version of the value it replaces, also when that
/// value was written before a restart (the key index is rebuilt from the stored values).
#[tokio::test]
async fn put_after_a_restart_continues_the_key_history() {
    let mut n = TestNode::start().await;
    let created = n.put("a", "1").await;
    n.put("a", "2").await;
    n.restart().await;
    let rev = n.put("a", "3").await;
    let kv = n.get("a").await.unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (created, rev, 3)
    );
    // The put's prev_kv is the value from before the restart.
    let r = n
        .kv()
        .put(PutRequest {
            key: b"a".to_vec(),
            value: b"4".to_vec(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let prev = r.prev_kv.unwrap();
    assert_eq!((prev.value.as_slice(), prev.version), (&b"3"[..], 3));
}
