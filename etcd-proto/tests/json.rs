//! Pins the gateway JSON conventions and protobuf wire numbers of the generated types.

use etcd_proto::etcdserverpb::{
    compare, request_op, response_op, Compare, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveResponse, Member, PutRequest, PutResponse, RangeRequest, RangeResponse,
    ResponseHeader, ResponseOp, StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use prost::Message;

fn kv(key: &[u8], create: i64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: create,
        ..Default::default()
    }
}

#[test]
fn range_response_uses_gateway_conventions() {
    let resp = RangeResponse {
        header: None,
        kvs: vec![kv(b"foo", 5)],
        more: false,
        count: 1,
    };
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        r#"{"kvs":[{"key":"Zm9v","create_revision":"5"}],"count":"1"}"#
    );

    let with_header = RangeResponse {
        header: Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 12,
            raft_term: 2,
        }),
        kvs: vec![KeyValue {
            key: b"foo".to_vec(),
            create_revision: 5,
            mod_revision: 12,
            version: 3,
            value: b"bar".to_vec(),
            lease: 0,
        }],
        more: true,
        count: 2,
    };
    assert_eq!(
        serde_json::to_string(&with_header).unwrap(),
        concat!(
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","#,
            r#""revision":"12","raft_term":"2"},"#,
            r#""kvs":[{"key":"Zm9v","create_revision":"5","mod_revision":"12","version":"3","value":"YmFy"}],"#,
            r#""more":true,"count":"2"}"#
        )
    );
}

#[test]
fn lease_fields_keep_proto_names() {
    let req = LeaseGrantRequest { ttl: 30, id: 7 };
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"TTL":"30","ID":"7"}"#
    );
    let resp = LeaseGrantResponse {
        header: None,
        id: 7,
        ttl: 30,
        error: String::new(),
    };
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        r#"{"ID":"7","TTL":"30"}"#
    );
    // A keepalive on a dead lease carries no TTL.
    let dead = LeaseKeepAliveResponse {
        header: None,
        id: 7,
        ttl: 0,
    };
    assert_eq!(serde_json::to_string(&dead).unwrap(), r#"{"ID":"7"}"#);

    let parsed: LeaseGrantRequest = serde_json::from_str(r#"{"TTL":60}"#).unwrap();
    assert_eq!(parsed, LeaseGrantRequest { ttl: 60, id: 0 });
}

#[test]
fn mixed_case_names_are_preserved() {
    let member = Member {
        id: 1,
        name: "n1".into(),
        peer_ur_ls: vec!["http://a:2380".into()],
        client_ur_ls: vec!["http://a:2379".into()],
        is_learner: true,
    };
    assert_eq!(
        serde_json::to_string(&member).unwrap(),
        r#"{"ID":"1","name":"n1","peerURLs":["http://a:2380"],"clientURLs":["http://a:2379"],"isLearner":true}"#
    );
    let status = StatusResponse {
        version: "3.6.0".into(),
        db_size: 4096,
        leader: 1,
        raft_index: 9,
        raft_term: 2,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&status).unwrap(),
        r#"{"version":"3.6.0","dbSize":"4096","leader":"1","raftIndex":"9","raftTerm":"2"}"#
    );
}

#[test]
fn deserialization_is_lenient() {
    let req: RangeRequest = serde_json::from_str(
        r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":10,"revision":"3",
            "sort_order":"DESCEND","serializable":true,"someUnknownField":{"x":[1,2]}}"#,
    )
    .unwrap();
    assert_eq!(req.key, b"foo");
    assert_eq!(req.range_end, b"fop");
    assert_eq!(req.limit, 10);
    assert_eq!(req.revision, 3);
    assert_eq!(
        req.sort_order(),
        etcd_proto::etcdserverpb::range_request::SortOrder::Descend
    );
    assert!(req.serializable);

    let snake: RangeRequest =
        serde_json::from_str(r#"{"key":"Zm9v","range_end":"AA==","keys_only":true}"#).unwrap();
    assert_eq!(snake.range_end, vec![0u8]);
    assert!(snake.keys_only);

    let empty: RangeRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, RangeRequest::default());
    let empty: WatchRequest = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, WatchRequest::default());
}

#[test]
fn events_serialize_type_by_name() {
    let del = Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: b"foo".to_vec(),
            mod_revision: 9,
            ..Default::default()
        }),
        prev_kv: None,
    };
    assert_eq!(
        serde_json::to_string(&del).unwrap(),
        r#"{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"9"}}"#
    );
    let put = Event {
        r#type: EventType::Put as i32,
        kv: Some(kv(b"foo", 8)),
        prev_kv: None,
    };
    assert_eq!(
        serde_json::to_string(&put).unwrap(),
        r#"{"kv":{"key":"Zm9v","create_revision":"8"}}"#
    );
    let back: Event = serde_json::from_str(r#"{"type":"DELETE","kv":{"key":"Zm9v"}}"#).unwrap();
    assert_eq!(back.r#type(), EventType::Delete);

    let watch = WatchResponse {
        watch_id: 0,
        created: true,
        events: vec![del],
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&watch).unwrap(),
        r#"{"created":true,"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"9"}}]}"#
    );
}

#[test]
fn txn_oneofs_round_trip() {
    // The shape Patroni sends to take the leader key.
    let req: TxnRequest = serde_json::from_str(
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","create_revision":"0"}],
            "success":[{"request_put":{"key":"Zm9v","value":"YmFy","lease":"7"}}],
            "failure":[{"request_txn":{"success":[{"request_delete_range":{"key":"Zm9v"}}]}}]}"#,
    )
    .unwrap();
    assert_eq!(req.compare.len(), 1);
    assert_eq!(
        req.compare[0].target(),
        etcd_proto::etcdserverpb::compare::CompareTarget::Create
    );
    assert_eq!(
        req.compare[0].target_union,
        Some(compare::TargetUnion::CreateRevision(0))
    );
    match &req.success[0].request {
        Some(request_op::Request::RequestPut(p)) => {
            assert_eq!(p.key, b"foo");
            assert_eq!(p.value, b"bar");
            assert_eq!(p.lease, 7);
        }
        other => panic!("unexpected op {other:?}"),
    }
    assert!(matches!(
        req.failure[0].request,
        Some(request_op::Request::RequestTxn(_))
    ));

    // A set oneof member is written even when it holds the default value.
    let cmp = Compare {
        target: compare::CompareTarget::Create as i32,
        key: b"foo".to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&cmp).unwrap(),
        r#"{"target":"CREATE","key":"Zm9v","create_revision":"0"}"#
    );

    let resp = TxnResponse {
        header: None,
        succeeded: true,
        responses: vec![ResponseOp {
            response: Some(response_op::Response::ResponsePut(PutResponse::default())),
        }],
    };
    assert_eq!(
        serde_json::to_string(&resp).unwrap(),
        r#"{"succeeded":true,"responses":[{"response_put":{}}]}"#
    );

    let watch = WatchRequest {
        request_union: Some(
            etcd_proto::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"foo".to_vec(),
                    start_revision: 3,
                    ..Default::default()
                },
            ),
        ),
    };
    assert_eq!(
        serde_json::to_string(&watch).unwrap(),
        r#"{"create_request":{"key":"Zm9v","start_revision":"3"}}"#
    );
}

#[test]
fn wire_numbers_are_pinned() {
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: 5,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    assert_eq!(
        put.encode_to_vec(),
        vec![
            0x0a, 1, b'k', // 1: key (length-delimited)
            0x12, 1, b'v', // 2: value
            0x18, 5, // 3: lease (varint)
            0x20, 1, // 4: prev_kv
            0x28, 1, // 5: ignore_value
            0x30, 1, // 6: ignore_lease
        ]
    );
    assert_eq!(PutRequest::decode(&put.encode_to_vec()[..]).unwrap(), put);

    // Compare.range_end is field 64: tag (64 << 3) | 2 = 514 = varint 0x82 0x04.
    let cmp = Compare {
        range_end: b"z".to_vec(),
        ..Default::default()
    };
    assert_eq!(cmp.encode_to_vec(), vec![0x82, 0x04, 1, b'z']);

    // WatchResponse.events is field 11.
    let watch = WatchResponse {
        events: vec![Event::default()],
        ..Default::default()
    };
    assert_eq!(watch.encode_to_vec(), vec![0x5a, 0]);

    // LeaseGrantRequest: TTL = 1, ID = 2.
    let grant = LeaseGrantRequest { ttl: 1, id: 2 };
    assert_eq!(grant.encode_to_vec(), vec![0x08, 1, 0x10, 2]);
}
