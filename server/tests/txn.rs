//! Txn semantics (reference §2.7): compares, branches, nested txns, sub-response headers,
//! revisions, and apply-time failures that must leave the store untouched.

mod common;
use common::{assert_status, delete_op, put_op, range_op, TestNode};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use tonic::Code;

fn cmp(key: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: Vec::new(),
        target_union: Some(u),
    }
}

fn cmp_range(
    key: &str,
    end: &str,
    target: CompareTarget,
    result: CompareResult,
    u: TargetUnion,
) -> Compare {
    Compare {
        range_end: end.into(),
        ..cmp(key, target, result, u)
    }
}

async fn txn(n: &TestNode, r: TxnRequest) -> TxnResponse {
    n.kv().txn(r).await.unwrap().into_inner()
}

/// Runs a txn with one compare and no ops; returns whether it succeeded.
async fn holds(n: &TestNode, c: Compare) -> bool {
    txn(
        n,
        TxnRequest {
            compare: vec![c],
            ..Default::default()
        },
    )
    .await
    .succeeded
}

fn txn_op(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

fn union_for(target: CompareTarget, v: i64) -> TargetUnion {
    match target {
        CompareTarget::Version => TargetUnion::Version(v),
        CompareTarget::Create => TargetUnion::CreateRevision(v),
        CompareTarget::Mod => TargetUnion::ModRevision(v),
        CompareTarget::Lease => TargetUnion::Lease(v),
        CompareTarget::Value => unreachable!(),
    }
}

#[tokio::test]
async fn compare_every_target_and_result() {
    let n = TestNode::start().await;
    let lease = n.grant(60, 0).await;
    n.put("k", "m").await; // create 2
    n.put("other", "x").await; // 3
    n.put_lease("k", "m", lease).await; // mod 4, version 2
    use CompareResult::*;
    use CompareTarget::*;
    // Integer targets: the stored value is on the left.
    for (target, have) in [(Version, 2), (Create, 2), (Mod, 4), (Lease, lease)] {
        let c = |r, v| cmp("k", target, r, union_for(target, v));
        assert!(holds(&n, c(Equal, have)).await, "{target:?} ==");
        assert!(!holds(&n, c(Equal, have + 1)).await, "{target:?} == +1");
        assert!(holds(&n, c(NotEqual, have + 1)).await, "{target:?} !=");
        assert!(!holds(&n, c(NotEqual, have)).await, "{target:?} != same");
        assert!(holds(&n, c(Greater, have - 1)).await, "{target:?} >");
        assert!(!holds(&n, c(Greater, have)).await, "{target:?} > same");
        assert!(holds(&n, c(Less, have + 1)).await, "{target:?} <");
        assert!(!holds(&n, c(Less, have)).await, "{target:?} < same");
    }
    // VALUE: byte comparison.
    let c = |r, v: &str| cmp("k", Value, r, TargetUnion::Value(v.into()));
    assert!(holds(&n, c(Equal, "m")).await);
    assert!(!holds(&n, c(Equal, "mm")).await);
    assert!(holds(&n, c(NotEqual, "n")).await);
    assert!(!holds(&n, c(NotEqual, "m")).await);
    assert!(holds(&n, c(Greater, "l")).await);
    assert!(holds(&n, c(Greater, "")).await);
    assert!(!holds(&n, c(Greater, "mm")).await);
    assert!(holds(&n, c(Less, "mm")).await);
    assert!(holds(&n, c(Less, "n")).await);
    assert!(!holds(&n, c(Less, "m")).await);
    // The compare list is a conjunction.
    let t = txn(
        &n,
        TxnRequest {
            compare: vec![
                cmp("k", Version, Equal, TargetUnion::Version(2)),
                cmp("k", Value, Equal, TargetUnion::Value("nope".into())),
            ],
            ..Default::default()
        },
    )
    .await;
    assert!(!t.succeeded);
}

#[tokio::test]
async fn compare_on_a_missing_key_uses_a_zero_key_value() {
    let n = TestNode::start().await;
    use CompareResult::*;
    use CompareTarget::*;
    for target in [Version, Create, Mod, Lease] {
        let c = |r, v| cmp("missing", target, r, union_for(target, v));
        assert!(holds(&n, c(Equal, 0)).await, "{target:?} == 0");
        assert!(!holds(&n, c(Greater, 0)).await, "{target:?} > 0");
        assert!(holds(&n, c(Less, 1)).await, "{target:?} < 1");
        assert!(holds(&n, c(NotEqual, 3)).await, "{target:?} != 3");
    }
    // A VALUE compare on a missing key always fails, even against "".
    for r in [Equal, NotEqual, Greater, Less] {
        for v in ["", "x"] {
            let c = cmp("missing", Value, r, TargetUnion::Value(v.into()));
            assert!(!holds(&n, c).await, "VALUE {r:?} {v:?} on a missing key");
        }
    }
}

#[tokio::test]
async fn compare_with_a_mismatched_target_union_compares_against_zero() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    // VERSION target, but a mod_revision value: compared against 0.
    let c = |r| cmp("k", CompareTarget::Version, r, TargetUnion::ModRevision(1));
    assert!(holds(&n, c(CompareResult::Greater)).await);
    assert!(!holds(&n, c(CompareResult::Equal)).await);
    // VALUE target with an integer union: compared against "".
    let c = cmp(
        "k",
        CompareTarget::Value,
        CompareResult::Greater,
        TargetUnion::Version(100),
    );
    assert!(holds(&n, c).await);
}

#[tokio::test]
async fn range_compares_need_every_key() {
    let n = TestNode::start().await;
    n.put("p/a", "1").await;
    n.put("p/b", "1").await;
    n.put("p/b", "2").await;
    use CompareResult::*;
    use CompareTarget::*;
    let v = |r, x| cmp_range("p/", "p0", Version, r, TargetUnion::Version(x));
    assert!(holds(&n, v(Greater, 0)).await);
    assert!(!holds(&n, v(Equal, 1)).await, "p/b has version 2");
    assert!(holds(&n, v(Less, 3)).await);
    assert!(!holds(&n, v(Less, 2)).await);
    let val = |r, x: &str| cmp_range("p/", "p0", Value, r, TargetUnion::Value(x.into()));
    assert!(!holds(&n, val(Equal, "1")).await);
    assert!(holds(&n, val(Greater, "0")).await);
    // "\0" end: from the key on.
    assert!(
        holds(
            &n,
            cmp_range("p/b", "\0", Version, Equal, TargetUnion::Version(2))
        )
        .await
    );
    // An empty range compares as the zero KeyValue...
    assert!(
        holds(
            &n,
            cmp_range("q/", "q0", Create, Equal, TargetUnion::CreateRevision(0))
        )
        .await
    );
    assert!(
        !holds(
            &n,
            cmp_range("q/", "q0", Version, Greater, TargetUnion::Version(0))
        )
        .await
    );
    // ...and a VALUE compare over an empty range fails.
    let c = cmp_range("q/", "q0", Value, NotEqual, TargetUnion::Value("x".into()));
    assert!(!holds(&n, c).await);
}

#[tokio::test]
async fn branches_run_by_compare_result() {
    let n = TestNode::start().await;
    // No compares: true, success runs.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![put_op("a", "s")],
            failure: vec![put_op("a", "f")],
            ..Default::default()
        },
    )
    .await;
    assert!(t.succeeded);
    assert_eq!(n.get("a").await.unwrap().value, b"s");
    // A false compare: failure runs, succeeded is false.
    let t = txn(
        &n,
        TxnRequest {
            compare: vec![cmp(
                "a",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("nope".into()),
            )],
            success: vec![put_op("b", "s")],
            failure: vec![put_op("b", "f"), range_op("a")],
        },
    )
    .await;
    assert!(!t.succeeded);
    assert_eq!(t.responses.len(), 2);
    assert!(matches!(
        t.responses[0].response,
        Some(Response::ResponsePut(_))
    ));
    let Some(Response::ResponseRange(r)) = &t.responses[1].response else {
        panic!("{t:?}")
    };
    assert_eq!(r.kvs[0].value, b"s");
    assert_eq!(n.get("b").await.unwrap().value, b"f");
}

#[tokio::test]
async fn sub_response_headers_carry_only_the_revision() {
    let n = TestNode::start().await;
    n.put("d", "1").await; // 2
    let t = txn(
        &n,
        TxnRequest {
            success: vec![put_op("a", "1"), delete_op("d", ""), range_op("a")],
            ..Default::default()
        },
    )
    .await;
    let h = t.header.unwrap();
    assert_eq!(h.revision, 3);
    assert_ne!(h.cluster_id, 0);
    assert_ne!(h.member_id, 0);
    assert_ne!(h.raft_term, 0);
    let only_rev = ResponseHeader {
        revision: 3,
        ..Default::default()
    };
    for op in &t.responses {
        let h = match &op.response {
            Some(Response::ResponsePut(r)) => r.header,
            Some(Response::ResponseDeleteRange(r)) => r.header,
            Some(Response::ResponseRange(r)) => r.header,
            other => panic!("{other:?}"),
        };
        assert_eq!(h, Some(only_rev));
    }
}

#[tokio::test]
async fn writes_are_visible_to_later_ops_in_the_same_txn() {
    let n = TestNode::start().await;
    n.put("k", "old").await; // 2
    n.put("gone", "x").await; // 3
    let t = txn(
        &n,
        TxnRequest {
            success: vec![
                range_op("k"),
                put_op("k", "new"),
                range_op("k"),
                delete_op("gone", ""),
                range_op("gone"),
            ],
            ..Default::default()
        },
    )
    .await;
    let ranges: Vec<_> = t
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(Response::ResponseRange(r)) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ranges.len(), 3);
    // Before the first write, the read sees revision 3; after it, the txn's revision 4.
    assert_eq!(ranges[0].kvs[0].value, b"old");
    assert_eq!(ranges[0].header.as_ref().unwrap().revision, 3);
    assert_eq!(ranges[1].kvs[0].value, b"new");
    assert_eq!(ranges[1].kvs[0].mod_revision, 4);
    assert_eq!(ranges[1].kvs[0].version, 2);
    assert_eq!(ranges[1].header.as_ref().unwrap().revision, 4);
    assert!(ranges[2].kvs.is_empty());
    assert_eq!(ranges[2].count, 0);
    assert_eq!(t.header.unwrap().revision, 4);
    assert_eq!(n.rev().await, 4);
}

#[tokio::test]
async fn txn_revision_rules() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
                           // Read-only: no bump.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![range_op("a")],
            failure: vec![range_op("b")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.header.unwrap().revision, 2);
    // A write txn whose writes change nothing: no bump.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![delete_op("nothing", ""), range_op("a")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.header.unwrap().revision, 2);
    let Some(Response::ResponseDeleteRange(d)) = &t.responses[0].response else {
        panic!()
    };
    assert_eq!(d.deleted, 0);
    assert_eq!(d.header.as_ref().unwrap().revision, 2);
    // A branch that is not taken does not count.
    let t = txn(
        &n,
        TxnRequest {
            compare: vec![cmp(
                "a",
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(1),
            )],
            success: vec![range_op("a")],
            failure: vec![put_op("x", "1")],
        },
    )
    .await;
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 2);
    assert!(n.get("x").await.is_none());
    // Many changes, one revision, ordered by sub-revision.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![put_op("x", "1"), put_op("y", "1"), delete_op("a", "")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(t.header.unwrap().revision, 3);
    assert_eq!(n.get("x").await.unwrap().mod_revision, 3);
    assert_eq!(n.get("y").await.unwrap().mod_revision, 3);
    assert!(n.get("a").await.is_none());
    assert_eq!(n.rev().await, 3);
}

#[tokio::test]
async fn serializable_read_only_txn() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    let t = txn(
        &n,
        TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: "a".into(),
                    serializable: true,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        },
    )
    .await;
    let Some(Response::ResponseRange(r)) = &t.responses[0].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"1");
    assert_eq!(t.header.unwrap().revision, 2);
}

#[tokio::test]
async fn nested_txn() {
    let n = TestNode::start().await;
    n.put("k", "old").await; // 2
    n.put("d", "x").await; // 3
    let inner = TxnRequest {
        // Nested compares see the state before the whole txn, not the outer put.
        compare: vec![cmp(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("old".into()),
        )],
        success: vec![delete_op("d", ""), range_op("k")],
        failure: vec![put_op("wrong", "1")],
    };
    let t = txn(
        &n,
        TxnRequest {
            compare: vec![cmp(
                "d",
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(1),
            )],
            success: vec![put_op("k", "new"), txn_op(inner)],
            failure: vec![],
        },
    )
    .await;
    assert!(t.succeeded);
    assert_eq!(t.header.unwrap().revision, 4);
    assert_eq!(t.responses.len(), 2);
    let Some(Response::ResponseTxn(nested)) = &t.responses[1].response else {
        panic!("{t:?}")
    };
    assert!(nested.succeeded);
    // As observed on etcd 3.4.23, a nested txn's header is empty.
    assert_eq!(nested.header, Some(ResponseHeader::default()));
    assert_eq!(nested.responses.len(), 2);
    let Some(Response::ResponseDeleteRange(d)) = &nested.responses[0].response else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    assert_eq!(d.header.as_ref().unwrap().revision, 4);
    // The nested range runs after the outer put.
    let Some(Response::ResponseRange(r)) = &nested.responses[1].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"new");
    assert!(n.get("d").await.is_none());
    assert!(n.get("wrong").await.is_none());
    assert_eq!(n.rev().await, 4);

    // A failing nested compare picks the nested failure branch.
    let inner = TxnRequest {
        compare: vec![cmp(
            "k",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value("old".into()),
        )],
        success: vec![put_op("s", "1")],
        failure: vec![put_op("f", "1")],
    };
    let t = txn(
        &n,
        TxnRequest {
            success: vec![txn_op(inner)],
            ..Default::default()
        },
    )
    .await;
    let Some(Response::ResponseTxn(nested)) = &t.responses[0].response else {
        panic!()
    };
    assert!(!nested.succeeded);
    assert!(n.get("s").await.is_none());
    assert_eq!(n.get("f").await.unwrap().mod_revision, 5);
}

#[tokio::test]
async fn nested_then_and_else_may_put_the_same_key() {
    let n = TestNode::start().await;
    let inner = TxnRequest {
        compare: vec![],
        success: vec![put_op("k", "then")],
        failure: vec![put_op("k", "else")],
    };
    let t = txn(
        &n,
        TxnRequest {
            success: vec![txn_op(inner)],
            ..Default::default()
        },
    )
    .await;
    assert!(t.succeeded);
    assert_eq!(n.get("k").await.unwrap().value, b"then");
}

async fn assert_txn_fails_and_changes_nothing(
    n: &TestNode,
    r: TxnRequest,
    code: Code,
    msg: &str,
    untouched: &[&str],
) {
    let rev = n.rev().await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for k in untouched {
            v.push(n.get(k).await);
        }
        v
    };
    assert_status(n.kv().txn(r).await, code, msg);
    assert_eq!(
        n.rev().await,
        rev,
        "a failed txn must not bump the revision"
    );
    for (k, b) in untouched.iter().zip(before) {
        assert_eq!(n.get(k).await, b, "{k} changed by a failed txn");
    }
}

#[tokio::test]
async fn apply_time_failures_change_nothing() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    n.put("a", "2").await; // 3
    n.put("a", "3").await; // 4
    let range_at = |revision| RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: "a".into(),
            revision,
            ..Default::default()
        })),
    };
    // A range at a future revision.
    assert_txn_fails_and_changes_nothing(
        &n,
        TxnRequest {
            success: vec![put_op("a", "x"), put_op("b", "x"), range_at(9)],
            ..Default::default()
        },
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
        &["a", "b"],
    )
    .await;
    // Read-only too.
    assert_status(
        n.kv()
            .txn(TxnRequest {
                success: vec![range_at(9)],
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    // A range at a compacted revision.
    n.kv()
        .compact(CompactionRequest {
            revision: 3,
            physical: true,
        })
        .await
        .unwrap();
    assert_txn_fails_and_changes_nothing(
        &n,
        TxnRequest {
            success: vec![put_op("b", "x"), range_at(2)],
            ..Default::default()
        },
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
        &["b"],
    )
    .await;
    // At the compact revision is fine.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![range_at(3)],
            ..Default::default()
        },
    )
    .await;
    let Some(Response::ResponseRange(r)) = &t.responses[0].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"2");
    // A put with a lease that does not exist.
    assert_txn_fails_and_changes_nothing(
        &n,
        TxnRequest {
            success: vec![
                put_op("b", "x"),
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: "c".into(),
                        value: "v".into(),
                        lease: 4242,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        },
        Code::NotFound,
        "etcdserver: requested lease not found",
        &["b", "c"],
    )
    .await;
    // ignore_value on a missing key, in the branch that runs (a nested one).
    let bad = RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: "missing".into(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    assert_txn_fails_and_changes_nothing(
        &n,
        TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: "a".into(),
                        ..Default::default()
                    })),
                },
                txn_op(TxnRequest {
                    success: vec![bad.clone()],
                    ..Default::default()
                }),
            ],
            ..Default::default()
        },
        Code::InvalidArgument,
        "etcdserver: key not found",
        &["a", "missing"],
    )
    .await;
    // The same op in a branch that does not run is harmless.
    let t = txn(
        &n,
        TxnRequest {
            success: vec![put_op("b", "ok")],
            failure: vec![bad],
            ..Default::default()
        },
    )
    .await;
    assert!(t.succeeded);
    assert_eq!(n.get("b").await.unwrap().value, b"ok");
}
