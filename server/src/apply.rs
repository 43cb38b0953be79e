//! The applier (etcd's `applierV3backend`): turns committed log entries into state. It is the
//! only code that changes the MVCC store, the lessor's leases or the applied index, and it does
//! so deterministically, so every member computes the same state from the same log.
//!
//! One applied chunk is one fjall batch, carrying the applied index with its effects; then the
//! watch hub hears the new revisions and waiting proposers get their results.

use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::{KeyRange, KvRead, Store, Writer};
use crate::raft::StateMachine;
use crate::request::{ConfChangeContext, InternalRequest, Op};
use crate::txn;
use crate::wait::Wait;
use crate::watch::WatchHub;
use etcd_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, Member,
    PutRequest, PutResponse, ResponseHeader, TxnResponse,
};
use prost::Message;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Snapshot};
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
    /// A membership change: the member list after it.
    Members(Vec<Member>),
}

pub type ApplyResult = Result<Applied>;

pub struct Applier {
    pub backend: Backend,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
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
        if self.hub.stream_count() == 0 {
            w.skip_events();
        }
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

    fn apply_conf_change(&mut self, index: u64, cc: &ConfChangeV2, _cs: &ConfState) -> Result<()> {
        let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
        let mut batch = self.backend.db.batch();
        for change in cc.get_changes() {
            let id = change.node_id;
            let member = |is_learner: bool| {
                let mut m = ctx.member.clone().unwrap_or_default();
                m.id = id;
                m.is_learner = is_learner;
                m
            };
            match change.get_change_type() {
                ConfChangeType::AddNode => self.membership.add(&mut batch, member(false)),
                ConfChangeType::AddLearnerNode => self.membership.add(&mut batch, member(true)),
                ConfChangeType::RemoveNode => self.membership.remove(&mut batch, id),
            }
        }
        batch.insert(
            &self.backend.meta,
            meta_key::APPLIED_INDEX,
            index.to_be_bytes().to_vec(),
        );
        batch.commit()?;
        tracing::info!(index, members = ?self.membership.members().iter().map(|m| format!("{:x}", m.id)).collect::<Vec<_>>(), "membership changed");
        self.wait.trigger(
            ctx.request_id,
            Ok(Applied::Members(self.membership.members())),
        );
        Ok(())
    }

    fn restore(&mut self, snapshot: &Snapshot, batch: fjall::OwnedWriteBatch) -> Result<()> {
        let index = snapshot.get_metadata().index;
        crate::snapshot::install::install(&self.backend, snapshot, batch)?;
        let leased_keys = self.store.reload()?;
        load_leases(&self.backend, &self.lessor, leased_keys)?;
        self.membership.reload()?;
        self.hub.reset();
        tracing::info!(
            index,
            revision = self.store.current_rev(),
            "installed snapshot"
        );
        Ok(())
    }

    fn peers(&self) -> Vec<(u64, String)> {
        self.membership.peers()
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
            Op::MemberAttributes(m) => {
                self.membership.update(&mut w.batch, m.id, |x| {
                    x.name = m.name;
                    x.client_ur_ls = m.client_ur_ls;
                });
                Ok(Applied::Members(self.membership.members()))
            }
            Op::MemberUpdate(m) => {
                if !self
                    .membership
                    .update(&mut w.batch, m.id, |x| x.peer_ur_ls = m.peer_ur_ls)
                {
                    return Err(Error::MemberNotFound);
                }
                Ok(Applied::Members(self.membership.members()))
            }
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
            w.delete_range(&KeyRange::single(&key), false)?;
        }
        w.batch.remove(&self.backend.lease, r.id.to_be_bytes());
        Ok(LeaseRevokeResponse {
            header: rev_header(w.txn_read_rev()),
        })
    }
}

/// Fills the lessor from the stored leases and re-attaches their keys.
pub fn load_leases(
    backend: &Backend,
    lessor: &Lessor,
    leased_keys: Vec<(Vec<u8>, i64)>,
) -> Result<()> {
    let mut leases = Vec::new();
    for item in backend.lease.iter() {
        let (k, v) = item.into_inner()?;
        let id = i64::from_be_bytes(k.as_ref().try_into().map_err(Error::internal)?);
        let ttl = i64::from_be_bytes(v.as_ref().try_into().map_err(Error::internal)?);
        leases.push((id, ttl));
    }
    lessor.reset(leases);
    for (key, lease) in leased_keys {
        lessor.attach(lease, &key);
    }
    Ok(())
}

/// Checks a Put against the state before its transaction (etcd's `checkRequestPut`).
pub fn check_put(w: &impl KvRead, lessor: &Lessor, r: &PutRequest) -> Result<()> {
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
    let prev = w.put(&r.key, value, lease, r.prev_kv)?;
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
        prev_kv: prev.and_then(|p| p.kv),
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
    let deleted = w.delete_range(&KeyRange::new(&r.key, &r.range_end), r.prev_kv)?;
    for d in &deleted {
        if d.lease != 0 {
            lessor.detach(d.lease, &d.key);
        }
    }
    Ok(DeleteRangeResponse {
        header: rev_header(w.txn_read_rev()),
        deleted: deleted.len() as i64,
        prev_kvs: deleted.into_iter().filter_map(|d| d.prev).collect(),
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
