//! The applier (etcd's `applierV3backend`): turns committed log entries into state. It is the
//! only code that changes the MVCC store, the lessor's leases or the applied index, and it does
//! so deterministically, so every member computes the same state from the same log.
//!
//! One applied chunk is one fjall batch, carrying the applied index with its effects; then the
//! watch hub hears the new revisions and waiting proposers get their results.

use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::mvcc::{KeyRange, Store, Writer};
use crate::raft::StateMachine;
use crate::request::{InternalRequest, Op};
use crate::txn;
use crate::wait::Wait;
use crate::watch::WatchHub;
use etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, ResponseHeader, TxnResponse,
};
use prost::Message;
use raft::eraftpb::{Entry, EntryType};
use std::sync::Arc;
use std::time::Duration;

/// The result of one applied write, as the proposer's response (header revision filled).
#[derive(Debug, Clone)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
}

pub type ApplyResult = Result<Applied>;

pub struct Applier {
    pub backend: Backend,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub wait: Arc<Wait<ApplyResult>>,
    /// Added to every lease's TTL when this member becomes leader.
    pub lease_extend: Duration,
}

pub fn rev_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl StateMachine for Applier {
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut w = self.store.write();
        let mut results = Vec::new();
        for e in entries {
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            let req = match InternalRequest::decode(e.data.as_ref()) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(index = e.index, error = %err, "undecodable log entry skipped");
                    continue;
                }
            };
            let Some(op) = req.op else { continue };
            w.begin_txn();
            let res = self.apply_op(&mut w, op);
            w.end_txn();
            results.push((req.id, res));
        }
        w.batch.insert(
            &self.backend.meta,
            meta_key::APPLIED_INDEX,
            last.to_be_bytes().to_vec(),
        );
        let current = w.current_rev();
        let start = std::time::Instant::now();
        let events = w.commit()?;
        crate::metrics::BACKEND_COMMIT.since(start);
        self.hub.publish(events, current);
        for (id, res) in results {
            self.wait.trigger(id, res);
        }
        Ok(())
    }

    fn proposal_dropped(&mut self, id: u64, err: Error) {
        self.wait.trigger(id, Err(err));
    }

    fn leadership_changed(&mut self, is_leader: bool) {
        if is_leader {
            self.lessor.promote(self.lease_extend);
        } else {
            self.lessor.demote();
        }
    }
}

impl Applier {
    fn apply_op(&self, w: &mut Writer<'_>, op: Op) -> ApplyResult {
        match op {
            Op::Put(r) => put(w, &self.lessor, &r).map(Applied::Put),
            Op::DeleteRange(r) => Ok(Applied::DeleteRange(delete_range(w, &self.lessor, &r)?)),
            Op::Txn(r) => txn::apply(w, &self.lessor, &r).map(Applied::Txn),
            Op::Compaction(r) => compact(w, &r).map(Applied::Compaction),
            Op::LeaseGrant(r) => self.lease_grant(w, &r).map(Applied::LeaseGrant),
            Op::LeaseRevoke(r) => self.lease_revoke(w, &r).map(Applied::LeaseRevoke),
        }
    }

    fn lease_grant(&self, w: &mut Writer<'_>, r: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if self.lessor.exists(r.id) {
            return Err(Error::LeaseExist);
        }
        let ttl = self.lessor.effective_ttl(r.ttl);
        self.lessor.grant(r.id, ttl);
        w.batch.insert(
            &self.backend.lease,
            r.id.to_be_bytes(),
            ttl.to_be_bytes().to_vec(),
        );
        Ok(LeaseGrantResponse {
            header: rev_header(w.current_rev()),
            id: r.id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(
        &self,
        w: &mut Writer<'_>,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse> {
        let keys = self.lessor.revoke(r.id).ok_or(Error::LeaseNotFound)?;
        for key in keys {
            w.delete_range(&KeyRange::single(&key))?;
        }
        w.batch.remove(&self.backend.lease, r.id.to_be_bytes());
        Ok(LeaseRevokeResponse {
            header: rev_header(w.txn_read_rev()),
        })
    }
}

/// Checks a Put against the state before its transaction (etcd's `checkRequestPut`).
pub fn check_put(w: &Writer<'_>, lessor: &Lessor, r: &PutRequest) -> Result<()> {
    let lease = if r.ignore_value || r.ignore_lease {
        let prev = w.get(&r.key)?.ok_or(Error::KeyNotFound)?;
        if r.ignore_lease {
            prev.lease
        } else {
            r.lease
        }
    } else {
        r.lease
    };
    lease_exists(lessor, lease)
}

fn lease_exists(lessor: &Lessor, id: i64) -> Result<()> {
    if id != 0 && !lessor.exists(id) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

/// Applies a checked Put.
pub fn put_checked(w: &mut Writer<'_>, lessor: &Lessor, r: &PutRequest) -> Result<PutResponse> {
    let cur = if r.ignore_value || r.ignore_lease {
        w.get(&r.key)?
    } else {
        None
    };
    let value = match (&cur, r.ignore_value) {
        (Some(c), true) => c.value.clone(),
        _ => r.value.clone(),
    };
    let lease = match (&cur, r.ignore_lease) {
        (Some(c), true) => c.lease,
        _ => r.lease,
    };
    let prev = w.put(&r.key, value, lease)?;
    if let Some(p) = &prev {
        if p.lease != 0 && p.lease != lease {
            lessor.detach(p.lease, &r.key);
        }
    }
    if lease != 0 {
        lessor.attach(lease, &r.key);
    }
    Ok(PutResponse {
        header: rev_header(w.txn_write_rev()),
        prev_kv: if r.prev_kv { prev } else { None },
    })
}

fn put(w: &mut Writer<'_>, lessor: &Lessor, r: &PutRequest) -> Result<PutResponse> {
    check_put(w, lessor, r)?;
    put_checked(w, lessor, r)
}

pub fn delete_range(
    w: &mut Writer<'_>,
    lessor: &Lessor,
    r: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse> {
    let prevs = w.delete_range(&KeyRange::new(&r.key, &r.range_end))?;
    for p in &prevs {
        if p.lease != 0 {
            lessor.detach(p.lease, &p.key);
        }
    }
    Ok(DeleteRangeResponse {
        header: rev_header(w.txn_read_rev()),
        deleted: prevs.len() as i64,
        prev_kvs: if r.prev_kv { prevs } else { Vec::new() },
    })
}

fn compact(w: &mut Writer<'_>, r: &CompactionRequest) -> Result<CompactionResponse> {
    if r.revision <= w.compact_rev() {
        return Err(Error::Compacted);
    }
    if r.revision > w.current_rev() {
        return Err(Error::FutureRev);
    }
    w.compact(r.revision);
    Ok(CompactionResponse {
        header: rev_header(w.current_rev()),
    })
}
