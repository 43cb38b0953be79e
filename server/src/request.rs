//! What a raft log entry carries (etcd's `InternalRaftRequest`): a member-unique request ID, so
//! the proposing member can hand the applied result back to its waiting caller, and one write.
//! Conf change entries carry a [`ConfChangeContext`] instead.

use etcd_proto::etcdserverpb::{
    AlarmRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    Member, PutRequest, TxnRequest,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8, 9, 11, 15")]
    pub op: Option<Op>,
    /// Set on a write the leader proposes on its own (the revoke of a lease its clock saw
    /// expire): the term it led in when it decided. The entry takes effect only if it entered
    /// the log in that same term, i.e. appended by that leader while it still led; a deposed
    /// leader's revoke, forwarded to its successor or queued past its term, is rejected at
    /// apply, so it cannot remove a lease the new leader keeps alive. 0 (absent; every client
    /// request, and entries written before the field existed): applied as before.
    #[prost(uint64, tag = "10")]
    pub proposer_term: u64,
    /// The user the serving member resolved the request's token to (empty: none), and the auth
    /// revision it resolved it at (etcd's `RequestHeader.username` / `auth_revision`): the
    /// applier checks the request's permissions again with them.
    #[prost(string, tag = "12")]
    pub username: String,
    #[prost(uint64, tag = "13")]
    pub auth_revision: u64,
    /// Proposed by the member itself on a client's behalf (Lock, Election, auto-compaction:
    /// root's only while auth is on), so the applier checks no user.
    #[prost(bool, tag = "14")]
    pub internal: bool,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "2")]
    Put(PutRequest),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
    #[prost(message, tag = "5")]
    Compaction(CompactionRequest),
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    /// A member's name and client URLs, published by the member itself after it starts.
    #[prost(message, tag = "8")]
    MemberAttributes(Member),
    /// MemberUpdate: new peer URLs for an existing member (`id` and `peerURLs` used).
    #[prost(message, tag = "9")]
    MemberUpdate(Member),
    /// Raises or clears an alarm (etcd's `AlarmRequest`, ACTIVATE or DEACTIVATE).
    #[prost(message, tag = "11")]
    Alarm(AlarmRequest),
    /// A change of the auth store (users, roles, permissions, enabling, tokens). (Tags 12 to
    /// 14 are fields of the request: a oneof shares its message's numbers.)
    #[prost(message, tag = "15")]
    Auth(crate::auth::AuthOp),
}

/// The context of a conf change entry: who waits for it, and the member it adds or promotes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfChangeContext {
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
}

/// Whether applying the request in a log entry's `data` may take long: its cost grows with the
/// stored keys it reaches rather than with its own size. A range delete, a lease revoke (the
/// lease's keys go with it), and a txn holding a range delete, a range read or a compare over
/// a range (a txn's reads and compares run at apply). Malformed data counts as long too: the applier rejects it anyway. Read through
/// [`RequestShape`]: the keys and values are skipped, not copied.
pub fn may_take_long(data: &[u8]) -> bool {
    use prost::Message;
    let Ok(req) = RequestShape::decode(data) else {
        return true;
    };
    req.lease_revoke.is_some()
        || req.delete_range.is_some_and(|d| d.is_range())
        || req.txn.is_some_and(|t| t.may_take_long())
}

/// The fields of an [`InternalRequest`] that [`may_take_long`] looks at (prost skips the rest).
#[derive(Clone, PartialEq, prost::Message)]
struct RequestShape {
    #[prost(message, optional, tag = "3")]
    delete_range: Option<RangeShape>,
    #[prost(message, optional, tag = "4")]
    txn: Option<TxnShape>,
    #[prost(message, optional, tag = "7")]
    lease_revoke: Option<LeaseRevokeRequest>,
}

/// A `DeleteRangeRequest` or `RangeRequest`: both hold `range_end` at tag 2.
#[derive(Clone, PartialEq, prost::Message)]
struct RangeShape {
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
}

impl RangeShape {
    fn is_range(&self) -> bool {
        !self.range_end.is_empty()
    }
}

/// A `Compare`: one over a range reads every key in it.
#[derive(Clone, PartialEq, prost::Message)]
struct CompareShape {
    #[prost(bytes = "vec", tag = "64")]
    range_end: Vec<u8>,
}

/// A `TxnRequest`'s compares and branches.
#[derive(Clone, PartialEq, prost::Message)]
struct TxnShape {
    #[prost(message, repeated, tag = "1")]
    compare: Vec<CompareShape>,
    #[prost(message, repeated, tag = "2")]
    success: Vec<OpShape>,
    #[prost(message, repeated, tag = "3")]
    failure: Vec<OpShape>,
}

impl TxnShape {
    fn may_take_long(&self) -> bool {
        self.compare.iter().any(|c| !c.range_end.is_empty())
            || self.success.iter().chain(&self.failure).any(|op| {
                op.range.as_ref().is_some_and(RangeShape::is_range)
                    || op.delete_range.as_ref().is_some_and(RangeShape::is_range)
                    || op.txn.as_ref().is_some_and(|t| t.may_take_long())
            })
    }
}

/// A `RequestOp`: a range, a range delete or a nested txn (a put is skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct OpShape {
    #[prost(message, optional, tag = "1")]
    range: Option<RangeShape>,
    #[prost(message, optional, tag = "3")]
    delete_range: Option<RangeShape>,
    #[prost(message, optional, boxed, tag = "4")]
    txn: Option<Box<TxnShape>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::request_op::Request;
    use etcd_proto::etcdserverpb::{RangeRequest, RequestOp};
    use prost::Message;

    fn entry(op: Op) -> Vec<u8> {
        InternalRequest {
            id: 7,
            op: Some(op),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn txn(success: Vec<Request>) -> Op {
        Op::Txn(TxnRequest {
            success: success
                .into_iter()
                .map(|r| RequestOp { request: Some(r) })
                .collect(),
            ..Default::default()
        })
    }

    fn delete(range_end: &[u8]) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        }
    }

    /// Range deletes, lease revokes and txns reading or deleting a range may take long; puts,
    /// single-key deletes and txns of those do not; nesting is looked through.
    #[test]
    fn requests_reaching_ranges_of_keys_may_take_long() {
        let put = || {
            Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: vec![1; 300],
                ..Default::default()
            })
        };
        let range = |end: &[u8]| {
            Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            })
        };
        let quick = [
            entry(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![1; 300],
                ..Default::default()
            })),
            entry(Op::DeleteRange(delete(b""))),
            entry(txn(vec![
                put(),
                range(b""),
                Request::RequestDeleteRange(delete(b"")),
            ])),
            entry(Op::Compaction(CompactionRequest {
                revision: 5,
                ..Default::default()
            })),
            entry(Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 3 })),
        ];
        for data in &quick {
            assert!(!may_take_long(data), "{data:?}");
        }
        let nested = |inner: Request| {
            txn(vec![
                put(),
                Request::RequestTxn(TxnRequest {
                    failure: vec![RequestOp {
                        request: Some(inner),
                    }],
                    ..Default::default()
                }),
            ])
        };
        let long = [
            entry(Op::DeleteRange(delete(b"\0"))),
            entry(Op::LeaseRevoke(LeaseRevokeRequest { id: 3 })),
            entry(txn(vec![put(), range(b"b")])),
            entry(txn(vec![Request::RequestDeleteRange(delete(b"b"))])),
            entry(nested(range(b"b"))),
            entry(nested(Request::RequestDeleteRange(delete(b"b")))),
            entry(Op::Txn(TxnRequest {
                compare: vec![etcd_proto::etcdserverpb::Compare {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            vec![0xff, 0xff, 0xff],
        ];
        for data in &long {
            assert!(may_take_long(data), "{data:?}");
        }
    }
}
