//! Request validation and limits (reference §2.1, §2.4, §2.5, §2.7, §3): every rejected
//! request answers etcd's exact code and message, and changes nothing.

mod common;
use common::{assert_status, delete_op, put_op, range_op, TestNode};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::Message;
use tonic::Code;

const DUP: &str = "etcdserver: duplicate key given in txn request";
const TOO_MANY: &str = "etcdserver: too many operations in txn request";

fn puts(prefix: &str, n: usize) -> Vec<RequestOp> {
    (0..n)
        .map(|i| put_op(&format!("{prefix}{i}"), "v"))
        .collect()
}

fn txn_op(t: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

fn version_cmp(key: &str) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: key.into(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::Version(0)),
    }
}

/// Sends `r`, expects `code`/`msg`, and checks that the revision and the store did not change.
async fn rejected(n: &TestNode, r: TxnRequest, code: Code, msg: &str) {
    let rev = n.rev().await;
    let count = n
        .kv()
        .range(RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_status(n.kv().txn(r).await, code, msg);
    assert_eq!(
        n.rev().await,
        rev,
        "a rejected txn must not bump the revision"
    );
    let after = n
        .kv()
        .range(RangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(after, count, "a rejected txn must not write");
}

#[tokio::test]
async fn request_too_large() {
    let n = TestNode::start_with(&["--max-request-bytes=1024"]).await;
    n.put("small", "v").await; // 2
    let big = "x".repeat(2000);
    assert_status(
        n.kv()
            .put(PutRequest {
                key: "k".into(),
                value: big.clone().into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    rejected(
        &n,
        TxnRequest {
            success: vec![put_op("k", &big)],
            ..Default::default()
        },
        Code::InvalidArgument,
        "etcdserver: request is too large",
    )
    .await;
    assert_status(
        n.kv()
            .delete_range(DeleteRangeRequest {
                key: big.clone().into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_eq!(n.rev().await, 2);
    assert!(n.get("k").await.is_none());
    // Beyond max-request-bytes + 512 KiB, gRPC itself refuses the message.
    let huge = PutRequest {
        key: "k".into(),
        value: vec![b'x'; 1024 + 512 * 1024],
        ..Default::default()
    };
    let len = huge.encoded_len();
    assert_status(
        n.kv().put(huge).await,
        Code::ResourceExhausted,
        &format!("grpc: received message larger than max ({len} vs. 525312)"),
    );
    assert_eq!(n.rev().await, 2);
    // Just under the limit still works.
    assert_eq!(n.put("k", &"y".repeat(900)).await, 3);
}

#[tokio::test]
async fn reads_are_not_proposals_and_have_no_size_limit() {
    let n = TestNode::start_with(&["--max-request-bytes=1024"]).await;
    let big_key = "k".repeat(2000);
    let r = n
        .kv()
        .range(RangeRequest {
            key: big_key.clone().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 0);
    // A read-only txn skips raft, so max-request-bytes does not apply to it either.
    let t = n
        .kv()
        .txn(TxnRequest {
            compare: vec![version_cmp(&big_key)],
            success: vec![range_op(&big_key)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.succeeded);
}

#[tokio::test]
async fn too_many_txn_ops_default_128() {
    let n = TestNode::start().await;
    // Exactly 128 of each is fine.
    let t = n
        .kv()
        .txn(TxnRequest {
            compare: (0..128).map(|i| version_cmp(&format!("c{i}"))).collect(),
            success: puts("s", 128),
            failure: puts("f", 128),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 128);
    assert_eq!(n.rev().await, 2);
    for (compare, success, failure) in [(129, 0, 0), (0, 129, 0), (0, 0, 129)] {
        rejected(
            &n,
            TxnRequest {
                compare: (0..compare)
                    .map(|i| version_cmp(&format!("c{i}")))
                    .collect(),
                success: puts("s", success),
                failure: puts("f", failure),
            },
            Code::InvalidArgument,
            TOO_MANY,
        )
        .await;
    }
    // Ranges count as ops too.
    rejected(
        &n,
        TxnRequest {
            success: (0..129).map(|_| range_op("a")).collect(),
            ..Default::default()
        },
        Code::InvalidArgument,
        TOO_MANY,
    )
    .await;
}

#[tokio::test]
async fn nested_txns_share_the_op_budget() {
    let n = TestNode::start().await;
    // 100 ops at the top leave 28 for a nested txn.
    let with_nested = |nested: usize| {
        let mut ops = puts("top", 99);
        ops.push(txn_op(TxnRequest {
            success: puts("in", nested),
            ..Default::default()
        }));
        TxnRequest {
            success: ops,
            ..Default::default()
        }
    };
    rejected(&n, with_nested(29), Code::InvalidArgument, TOO_MANY).await;
    n.kv().txn(with_nested(28)).await.unwrap();
    assert_eq!(n.get("in27").await.unwrap().mod_revision, 2);
}

#[tokio::test]
async fn max_txn_ops_flag() {
    let n = TestNode::start_with(&["--max-txn-ops=3"]).await;
    n.kv()
        .txn(TxnRequest {
            success: puts("a", 3),
            ..Default::default()
        })
        .await
        .unwrap();
    rejected(
        &n,
        TxnRequest {
            success: puts("b", 4),
            ..Default::default()
        },
        Code::InvalidArgument,
        TOO_MANY,
    )
    .await;
}

#[tokio::test]
async fn empty_keys_are_rejected() {
    let n = TestNode::start().await;
    const EMPTY: &str = "etcdserver: key is not provided";
    assert_status(
        n.kv().range(RangeRequest::default()).await,
        Code::InvalidArgument,
        EMPTY,
    );
    assert_status(
        n.kv()
            .put(PutRequest {
                value: "v".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        EMPTY,
    );
    assert_status(
        n.kv()
            .delete_range(DeleteRangeRequest {
                range_end: "\0".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        EMPTY,
    );
    rejected(
        &n,
        TxnRequest {
            compare: vec![version_cmp("")],
            success: vec![put_op("a", "1")],
            ..Default::default()
        },
        Code::InvalidArgument,
        EMPTY,
    )
    .await;
    rejected(
        &n,
        TxnRequest {
            success: vec![put_op("a", "1"), put_op("", "1")],
            ..Default::default()
        },
        Code::InvalidArgument,
        EMPTY,
    )
    .await;
    rejected(
        &n,
        TxnRequest {
            success: vec![put_op("a", "1")],
            failure: vec![delete_op("", "")],
            ..Default::default()
        },
        Code::InvalidArgument,
        EMPTY,
    )
    .await;
    rejected(
        &n,
        TxnRequest {
            success: vec![
                put_op("a", "1"),
                txn_op(TxnRequest {
                    success: vec![range_op("")],
                    ..Default::default()
                }),
            ],
            ..Default::default()
        },
        Code::InvalidArgument,
        EMPTY,
    )
    .await;
    // An op with nothing set: "key not found".
    rejected(
        &n,
        TxnRequest {
            success: vec![put_op("a", "1"), RequestOp { request: None }],
            ..Default::default()
        },
        Code::InvalidArgument,
        "etcdserver: key not found",
    )
    .await;
    assert_eq!(n.rev().await, 1);
}

#[tokio::test]
async fn invalid_sort_option() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    const BAD: &str = "etcdserver: invalid sort option";
    for (order, target) in [(7, 0), (3, 0), (-1, 0), (0, 9), (1, 5)] {
        assert_status(
            n.kv()
                .range(RangeRequest {
                    key: "a".into(),
                    sort_order: order,
                    sort_target: target,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            BAD,
        );
    }
    rejected(
        &n,
        TxnRequest {
            success: vec![
                put_op("b", "1"),
                RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key: "a".into(),
                        sort_order: 7,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        },
        Code::InvalidArgument,
        BAD,
    )
    .await;
}

#[tokio::test]
async fn value_or_lease_provided_with_ignore_flags() {
    let n = TestNode::start().await;
    n.put("k", "v").await;
    let iv = PutRequest {
        key: "k".into(),
        value: "x".into(),
        ignore_value: true,
        ..Default::default()
    };
    let il = PutRequest {
        key: "k".into(),
        lease: 7,
        ignore_lease: true,
        ..Default::default()
    };
    assert_status(
        n.kv().put(iv.clone()).await,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    assert_status(
        n.kv().put(il.clone()).await,
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    );
    // Checked before raft inside a txn too, whichever branch.
    for (op, msg) in [
        (iv, "etcdserver: value is provided"),
        (il, "etcdserver: lease is provided"),
    ] {
        rejected(
            &n,
            TxnRequest {
                success: vec![put_op("other", "1")],
                failure: vec![RequestOp {
                    request: Some(Request::RequestPut(op)),
                }],
                ..Default::default()
            },
            Code::InvalidArgument,
            msg,
        )
        .await;
    }
    assert_eq!(n.get("k").await.unwrap().value, b"v");
}

#[tokio::test]
async fn duplicate_keys_in_one_branch_are_rejected() {
    let n = TestNode::start().await;
    n.put("a", "0").await;
    let branch = |ops: Vec<RequestOp>| TxnRequest {
        success: ops,
        ..Default::default()
    };
    // The same key put twice.
    rejected(
        &n,
        branch(vec![put_op("a", "1"), put_op("a", "2")]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // In the failure branch too.
    rejected(
        &n,
        TxnRequest {
            failure: vec![put_op("b", "1"), put_op("b", "2")],
            ..Default::default()
        },
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // A put inside a deleted range, before or after the delete.
    rejected(
        &n,
        branch(vec![delete_op("a", "c"), put_op("b", "1")]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    rejected(
        &n,
        branch(vec![put_op("b", "1"), delete_op("a", "c")]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // A put of the single key a delete names.
    rejected(
        &n,
        branch(vec![delete_op("a", ""), put_op("a", "1")]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // A nested txn's put against an outer put or an outer delete.
    rejected(
        &n,
        branch(vec![
            put_op("a", "1"),
            txn_op(TxnRequest {
                success: vec![put_op("a", "2")],
                ..Default::default()
            }),
        ]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    rejected(
        &n,
        branch(vec![
            delete_op("a", "z"),
            txn_op(TxnRequest {
                failure: vec![put_op("m", "2")],
                ..Default::default()
            }),
        ]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // An outer put inside a nested delete.
    rejected(
        &n,
        branch(vec![
            put_op("m", "1"),
            txn_op(TxnRequest {
                success: vec![delete_op("a", "z")],
                ..Default::default()
            }),
        ]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    // Two nested txns putting the same key.
    rejected(
        &n,
        branch(vec![
            txn_op(TxnRequest {
                success: vec![put_op("q", "1")],
                ..Default::default()
            }),
            txn_op(TxnRequest {
                failure: vec![put_op("q", "2")],
                ..Default::default()
            }),
        ]),
        Code::InvalidArgument,
        DUP,
    )
    .await;
    assert_eq!(n.get("a").await.unwrap().value, b"0");
}

#[tokio::test]
async fn allowed_key_repetitions() {
    let n = TestNode::start().await;
    n.put("a", "0").await; // 2
    let ok = |r: TxnRequest| {
        let mut kv = n.kv();
        async move { kv.txn(r).await.unwrap().into_inner() }
    };
    // Overlapping deletes, ranges next to puts, and a put in each top-level branch.
    let t = ok(TxnRequest {
        success: vec![
            delete_op("x", "z"),
            delete_op("y", "zz"),
            range_op("a"),
            put_op("a", "1"),
            range_op("a"),
        ],
        failure: vec![put_op("a", "f")],
        ..Default::default()
    })
    .await;
    assert!(t.succeeded);
    assert_eq!(n.get("a").await.unwrap().value, b"1");
    // The then and else branches of one nested txn may put the same key, also a key that the
    // outer level reads.
    let t = ok(TxnRequest {
        success: vec![
            range_op("k"),
            txn_op(TxnRequest {
                compare: vec![version_cmp("k")],
                success: vec![put_op("k", "then"), put_op("j", "then")],
                failure: vec![put_op("k", "else")],
            }),
        ],
        ..Default::default()
    })
    .await;
    assert!(t.succeeded);
    assert_eq!(n.get("k").await.unwrap().value, b"then");
    assert_eq!(n.get("j").await.unwrap().value, b"then");
    // A delete next to a put outside its range.
    ok(TxnRequest {
        success: vec![delete_op("a", "b"), put_op("b", "1")],
        ..Default::default()
    })
    .await;
    assert!(n.get("a").await.is_none());
    assert_eq!(n.get("b").await.unwrap().value, b"1");
}
