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
