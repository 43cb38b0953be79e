//! What a raft log entry carries (etcd's `InternalRaftRequest`): a member-unique request ID, so
//! the proposing member can hand the applied result back to its waiting caller, and one write.

use etcd_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
    TxnRequest,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7")]
    pub op: Option<Op>,
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
}
