//! Which permissions a request needs (etcd's `authApplierV3` and `checkTxnAuth`): the same
//! checks run in the service layer before a request is served or proposed and, for writes,
//! again at apply, where the auth store may have changed since.

use super::{AuthStore, Caller, Need};
use crate::error::Result;
use crate::lease::Lessor;
use crate::request::Op;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// Range: READ on the key or range.
pub fn range(a: &AuthStore, c: &Caller, r: &RangeRequest) -> Result<()> {
    a.check(c, Need::Read, &r.key, &r.range_end)
}

/// Put: WRITE on the key, READ too with `prev_kv`, and WRITE on every key already attached
/// to the lease it attaches (whoever cannot revoke the lease may not extend it).
pub fn put(a: &AuthStore, lessor: &Lessor, c: &Caller, r: &PutRequest) -> Result<()> {
    a.check(c, Need::Write, &r.key, &[])?;
    if r.lease != 0 {
        lease_keys(a, lessor, c, r.lease)?;
    }
    if r.prev_kv {
        a.check(c, Need::Read, &r.key, &[])?;
    }
    Ok(())
}

/// DeleteRange: WRITE on the range, READ too with `prev_kv`.
pub fn delete(a: &AuthStore, c: &Caller, r: &DeleteRangeRequest) -> Result<()> {
    a.check(c, Need::Write, &r.key, &r.range_end)?;
    if r.prev_kv {
        a.check(c, Need::Read, &r.key, &r.range_end)?;
    }
    Ok(())
}

/// Txn: READ on every compare, and every op of both branches, nested txns included.
pub fn txn(a: &AuthStore, lessor: &Lessor, c: &Caller, r: &TxnRequest) -> Result<()> {
    for cmp in &r.compare {
        a.check(c, Need::Read, &cmp.key, &cmp.range_end)?;
    }
    ops(a, lessor, c, &r.success)?;
    ops(a, lessor, c, &r.failure)
}

fn ops(a: &AuthStore, lessor: &Lessor, c: &Caller, ops: &[RequestOp]) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(Request::RequestRange(r)) => range(a, c, r)?,
            Some(Request::RequestPut(r)) => put(a, lessor, c, r)?,
            Some(Request::RequestDeleteRange(r)) => delete(a, c, r)?,
            Some(Request::RequestTxn(r)) => txn(a, lessor, c, r)?,
            None => {}
        }
    }
    Ok(())
}

/// LeaseRevoke: WRITE on every key attached to the lease.
pub fn lease_keys(a: &AuthStore, lessor: &Lessor, c: &Caller, lease: i64) -> Result<()> {
    if !a.is_enabled() {
        return Ok(());
    }
    for key in lessor.keys(lease) {
        a.check(c, Need::Write, &key, &[])?;
    }
    Ok(())
}

/// The check of a logged write at apply. Auth changes check their own (root) permission in
/// [`AuthStore::apply`].
pub fn op(a: &AuthStore, lessor: &Lessor, c: &Caller, op: &Op) -> Result<()> {
    match op {
        Op::Put(r) => put(a, lessor, c, r),
        Op::DeleteRange(r) => delete(a, c, r),
        Op::Txn(r) => txn(a, lessor, c, r),
        Op::LeaseRevoke(r) => lease_keys(a, lessor, c, r.id),
        // Member changes are checked (root) where they are served; compaction checks nothing
        // in etcd (3.4.23 lets any user compact: see compat-tests/test_auth_diff.py).
        Op::Compaction(_)
        | Op::LeaseGrant(_)
        | Op::MemberAttributes(_)
        | Op::MemberUpdate(_)
        | Op::Alarm(_)
        | Op::Auth(_) => Ok(()),
    }
}
