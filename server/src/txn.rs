//! etcd's Txn: request checks before raft (op counts, empty keys, the duplicate-key rule), and
//! evaluation at apply (compares, the branch path, per-op checks, then execution at one revision).

use crate::apply::{check_put, delete_range, put_checked, rev_header};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{KeyRange, KvRead, ReadTxn, Writer};
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use etcd_proto::mvccpb::KeyValue;
use std::cmp::Ordering;
use std::collections::HashSet;

/// `checkRangeRequest`.
pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// `checkPutRequest`.
pub fn check_put_request(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// `checkDeleteRequest`.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Every check etcd makes on a Txn before proposing it.
pub fn check_txn_request(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) => check_range(q)?,
            Some(Request::RequestPut(q)) => check_put_request(q)?,
            Some(Request::RequestDeleteRange(q)) => check_delete(q)?,
            Some(Request::RequestTxn(q)) => check_txn_ops(q, max_ops - opc)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A delete's interval as etcd's interval tree sees it: `range_end` taken literally.
struct DelInterval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl DelInterval {
    fn contains(&self, k: &[u8]) -> bool {
        match &self.end {
            None => k == self.start.as_slice(),
            Some(e) => self.start.as_slice() <= k && k < e.as_slice(),
        }
    }
}

/// `checkIntervals`: within one branch a key may be put once and never inside a deleted range;
/// the two branches of a nested txn may put the same key, since only one of them runs.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<DelInterval>)> {
    let mut dels: Vec<DelInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(DelInterval {
                start: d.key.clone(),
                end: (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[DelInterval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deleted(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when no op in either branch (nested included) writes.
pub fn is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}

/// True when an op in either branch (nested included) is a Put: the txn may take space.
pub fn has_put(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => has_put(t),
            _ => false,
        })
}

/// True when every Range in the txn is serializable.
pub fn is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(q)) => q.serializable,
            Some(Request::RequestTxn(t)) => is_serializable(t),
            _ => true,
        })
}

/// What a Txn runs against: the applier's [`Writer`] at apply, or the [`ReadTxn`] a read-only
/// Txn runs in on the member that serves it.
pub trait TxnStore: KvRead {
    fn txn_put(&mut self, lessor: &Lessor, p: &PutRequest) -> Result<PutResponse>;
    fn txn_delete(
        &mut self,
        lessor: &Lessor,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse>;
}

impl TxnStore for Writer<'_> {
    fn txn_put(&mut self, lessor: &Lessor, p: &PutRequest) -> Result<PutResponse> {
        put_checked(self, lessor, p)
    }

    fn txn_delete(
        &mut self,
        lessor: &Lessor,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        delete_range(self, lessor, d)
    }
}

/// Only a Txn that [`is_read_only`] runs in a [`ReadTxn`]: a write op there is a bug.
impl TxnStore for ReadTxn<'_> {
    fn txn_put(&mut self, _: &Lessor, _: &PutRequest) -> Result<PutResponse> {
        Err(Error::internal("pgraft: a put in a read-only txn"))
    }

    fn txn_delete(&mut self, _: &Lessor, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        Err(Error::internal("pgraft: a delete in a read-only txn"))
    }
}

/// Runs a Txn: inside the writer's open transaction at apply, or in a read-only transaction.
pub fn apply(w: &mut impl TxnStore, lessor: &Lessor, r: &TxnRequest) -> Result<TxnResponse> {
    // All compares, nested ones too, see the state before the txn (etcd's `compareToPath`).
    let mut path = Vec::new();
    compare_path(w, r, &mut path)?;
    check_ops(w, lessor, r, &path, &mut 0)?;
    let mut resp = execute(w, lessor, r, &path, &mut 0)?;
    resp.header = rev_header(w.read_rev());
    Ok(resp)
}

fn branch(r: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &r.success
    } else {
        &r.failure
    }
}

fn compare_path(w: &impl KvRead, r: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &r.compare {
        if !compare(w, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in branch(r, ok) {
        if let Some(Request::RequestTxn(t)) = &op.request {
            compare_path(w, t, path)?;
        }
    }
    Ok(())
}

/// etcd's `checkRequests` over the chosen branches: puts need their lease and (for `ignore_*`)
/// their key; ranges need a revision that is neither future nor compacted.
fn check_ops(
    w: &impl KvRead,
    lessor: &Lessor,
    r: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<()> {
    let ok = path[*pos];
    *pos += 1;
    for op in branch(r, ok) {
        match &op.request {
            Some(Request::RequestPut(p)) => check_put(w, lessor, p)?,
            Some(Request::RequestRange(q)) if q.revision != 0 => {
                if q.revision > w.current_rev() {
                    return Err(Error::FutureRev);
                }
                if q.revision < w.compact_rev() {
                    return Err(Error::Compacted);
                }
            }
            Some(Request::RequestTxn(t)) => check_ops(w, lessor, t, path, pos)?,
            _ => {}
        }
    }
    Ok(())
}

fn execute(
    w: &mut impl TxnStore,
    lessor: &Lessor,
    r: &TxnRequest,
    path: &[bool],
    pos: &mut usize,
) -> Result<TxnResponse> {
    let succeeded = path[*pos];
    *pos += 1;
    let mut responses = Vec::new();
    for op in branch(r, succeeded) {
        let resp = match &op.request {
            Some(Request::RequestRange(q)) => {
                let rr = w.range(q)?;
                Response::ResponseRange(RangeResponse {
                    header: rev_header(rr.rev),
                    kvs: rr.kvs,
                    more: rr.more,
                    count: rr.count,
                })
            }
            Some(Request::RequestPut(p)) => Response::ResponsePut(w.txn_put(lessor, p)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(w.txn_delete(lessor, d)?)
            }
            Some(Request::RequestTxn(t)) => {
                let mut nested = execute(w, lessor, t, path, pos)?;
                // etcd leaves a nested txn's header empty.
                nested.header = Some(ResponseHeader::default());
                Response::ResponseTxn(nested)
            }
            None => return Err(Error::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(resp),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// One compare: every key of its range must satisfy it; a missing key compares as an all-zero
/// KeyValue, except that a VALUE compare on nothing fails.
fn compare(w: &impl KvRead, c: &Compare) -> Result<bool> {
    let range = KeyRange::new(&c.key, &c.range_end);
    let kvs = if range.is_single() {
        w.get(&c.key)?.into_iter().collect()
    } else {
        w.get_range(&range)?
    };
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    if kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        return Ok(compare_kv(c, target, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let ord = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        _ => {
            let want = match (&c.target_union, target) {
                (Some(TargetUnion::Version(v)), CompareTarget::Version) => *v,
                (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => *v,
                (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => *v,
                (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
                _ => 0,
            };
            let have = match target {
                CompareTarget::Version => kv.version,
                CompareTarget::Create => kv.create_revision,
                CompareTarget::Mod => kv.mod_revision,
                _ => kv.lease,
            };
            have.cmp(&want)
        }
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
