//! The applier (etcd's `applierV3backend`): turns committed log entries into state. It is the
//! only code that changes the MVCC store, the lessor's leases or the applied index, and it does
//! so deterministically, so every member computes the same state from the same log.
//!
//! One applied chunk is one fjall batch, carrying the applied index with its effects; then the
//! watch hub records the new revisions, waiting proposers get their results, and the watch
//! streams are woken.

use crate::alarm::{AlarmStore, WriteKind};
use crate::auth::store::AuthApplied;
use crate::auth::{AuthStore, Caller};
use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::membership::Membership;
use crate::mvcc::{KeyRange, KvRead, Store, Writer};
use crate::raft::{Installer, StateMachine};
use crate::request::{ConfChangeContext, InternalRequest, Op};
use crate::txn;
use crate::wait::Wait;
use crate::watch::WatchHub;
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, Member, PutRequest, PutResponse, ResponseHeader,
    TxnResponse,
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
    Alarm(AlarmResponse),
    /// An auth change (with the token of an Authenticate).
    Auth(AuthApplied),
}

pub type ApplyResult = Result<Applied>;

pub struct Applier {
    pub backend: Backend,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub auth: Arc<AuthStore>,
    pub wait: Arc<Wait<ApplyResult>>,
    pub alarms: Arc<AlarmStore>,
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
    fn apply(&self, entries: Vec<Entry>) -> Result<()> {
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
            let mut req = match InternalRequest::decode(e.data.as_ref()) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(index = e.index, error = %err, "undecodable log entry skipped");
                    continue;
                }
            };
            let Some(op) = req.op.take() else { continue };
            let res = if req.proposer_term != 0 && req.proposer_term != e.term {
                // A deposed leader's own proposal (see `InternalRequest::proposer_term`).
                tracing::info!(
                    index = e.index,
                    entry_term = e.term,
                    proposer_term = req.proposer_term,
                    "stale leader's proposal ignored"
                );
                Err(Error::LeaderChanged)
            } else {
                let caller = caller_of(&req);
                w.begin_txn();
                let res = check_op(&op)
                    .and_then(|()| self.alarms.gate(write_kind(&op)))
                    .and_then(|()| crate::auth::check::op(&self.auth, &self.lessor, &caller, &op))
                    .and_then(|()| self.apply_op(&mut w, op, &caller, e.index));
                w.end_txn();
                res
            };
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
        crate::metrics::warn_if_slow("apply commit", start);
        // The proposers hear first, then the watch streams (see `WatchHub::record`).
        self.hub.record(events, current);
        for (id, res) in results {
            self.wait.trigger(id, res);
        }
        self.hub.announce();
        Ok(())
    }

    fn apply_conf_change(&self, index: u64, cc: &ConfChangeV2, _cs: &ConfState) -> Result<()> {
        let ctx = ConfChangeContext::decode(cc.context.as_ref()).unwrap_or_default();
        let mut batch = self.backend.db.batch();
        for change in cc.get_changes() {
            let id = change.node_id;
            if id == 0 {
                // Raft ignores a change of node 0 (no member has that id): so does the
                // membership, which would otherwise list a member raft never heard of.
                continue;
            }
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

    fn installer(&self) -> Installer {
        let backend = self.backend.clone();
        let store = self.store.clone();
        let lessor = self.lessor.clone();
        let membership = self.membership.clone();
        let alarms = self.alarms.clone();
        let hub = self.hub.clone();
        let auth = self.auth.clone();
        Box::new(move |snapshot: &Snapshot| {
            let index = snapshot.get_metadata().index;
            let started = std::time::Instant::now();
            store.begin_install(index);
            if let Some(delay) = test_install_delay() {
                std::thread::sleep(delay);
            }
            let mut loader = crate::mvcc::IndexLoader::default();
            crate::snapshot::install::install_staged(&backend, snapshot, &mut |k, v| {
                loader.add(k, v)
            })?;
            let written = started.elapsed();
            let leased_keys = store.reload(Some(loader))?;
            load_leases(&backend, &lessor, leased_keys)?;
            membership.reload()?;
            alarms.reload()?;
            auth.reload()?;
            hub.reset();
            tracing::info!(
                index,
                revision = store.current_rev(),
                took = ?started.elapsed(),
                written = ?written,
                "installed snapshot"
            );
            Ok(())
        })
    }

    fn peers(&self) -> Vec<(u64, String)> {
        self.membership.peers()
    }

    fn may_take_long(e: &Entry) -> bool {
        e.get_entry_type() == EntryType::EntryNormal && crate::request::may_take_long(&e.data)
    }

    fn proposal_dropped(&self, id: u64, err: Error) {
        self.wait.trigger(id, Err(err));
    }

    fn leadership_changed(&self, is_leader: bool) {
        if is_leader {
            self.lessor.promote(self.lease_extend);
        } else {
            self.lessor.demote();
        }
    }
}

/// A test hook: `PGRAFT_TEST_INSTALL_DELAY_MS` makes every snapshot install wait that long
/// before it writes, so that tests can watch a member while it installs one.
fn test_install_delay() -> Option<Duration> {
    std::env::var("PGRAFT_TEST_INSTALL_DELAY_MS")
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

/// Checks an entry's request again, as the service layer did before proposing it: a log entry
/// is data from the network (any member, or anything that reached a peer port, may have
/// written it), and a shape the service layer refuses must be refused here too, with the
/// same error on every member, rather than reach code that assumes it cannot happen. Only
/// checks that depend on nothing but the request itself, so every member agrees; the
/// member-local `--max-txn-ops` is not one of them.
fn check_op(op: &Op) -> Result<()> {
    match op {
        Op::Put(r) => txn::check_put_request(r),
        Op::DeleteRange(r) => txn::check_delete(r),
        Op::Txn(r) => txn::check_txn_request(r, usize::MAX),
        Op::LeaseGrant(r) => check_lease_grant(r),
        Op::Compaction(_)
        | Op::LeaseRevoke(_)
        | Op::MemberAttributes(_)
        | Op::MemberUpdate(_)
        | Op::Alarm(_)
        | Op::Auth(_) => Ok(()),
    }
}

/// What an op does to the store, for the alarms' gate (etcd's capped applier refuses what
/// costs quota: puts, txns holding a put, lease grants).
fn write_kind(op: &Op) -> WriteKind {
    match op {
        Op::Put(_) | Op::LeaseGrant(_) => WriteKind::TakesSpace,
        Op::Txn(t) if txn::has_put(t) => WriteKind::TakesSpace,
        Op::Txn(_) | Op::DeleteRange(_) | Op::Compaction(_) | Op::LeaseRevoke(_) => {
            WriteKind::Frees
        }
        Op::MemberAttributes(_) | Op::MemberUpdate(_) | Op::Alarm(_) | Op::Auth(_) => {
            WriteKind::None
        }
    }
}

/// etcd's lessor `Grant` checks: lease ID 0 means "no lease" and cannot be granted, and a TTL
/// above [`MAX_LEASE_TTL`] is refused.
fn check_lease_grant(r: &LeaseGrantRequest) -> Result<()> {
    if r.id == 0 {
        return Err(Error::LeaseNotFound);
    }
    if r.ttl > MAX_LEASE_TTL {
        return Err(Error::LeaseTtlTooLarge);
    }
    Ok(())
}

/// Who proposed a logged request: the member itself for its own proposals (a proposer term,
/// or marked internal), else the user the serving member stamped on it, if any.
fn caller_of(req: &InternalRequest) -> Caller {
    if req.proposer_term != 0 || req.internal {
        Caller::Internal
    } else if req.username.is_empty() {
        Caller::Anonymous
    } else {
        Caller::User {
            name: req.username.clone(),
            revision: req.auth_revision,
        }
    }
}

impl Applier {
    fn apply_op(&self, w: &mut Writer<'_>, op: Op, caller: &Caller, index: u64) -> ApplyResult {
        match op {
            Op::Auth(a) => {
                let req = a.request.ok_or(Error::InvalidAuthMgmt)?;
                let done = self.auth.apply(&mut w.batch, caller, req, index)?;
                Ok(Applied::Auth(done))
            }
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
            Op::Alarm(r) => Ok(Applied::Alarm(self.alarm(w, &r))),
        }
    }

    /// etcd's `applierV3backend.Alarm`: ACTIVATE raises the alarm for the member named (a
    /// known type only), DEACTIVATE clears it; the answer lists what changed. GET is served
    /// from the store without the log.
    fn alarm(&self, w: &mut Writer<'_>, r: &AlarmRequest) -> AlarmResponse {
        let known = matches!(
            AlarmType::try_from(r.alarm),
            Ok(AlarmType::Nospace | AlarmType::Corrupt)
        );
        let changed = match r.action() {
            AlarmAction::Activate if known => {
                self.alarms.activate(&mut w.batch, r.member_id, r.alarm)
            }
            AlarmAction::Deactivate => self.alarms.deactivate(&mut w.batch, r.member_id, r.alarm),
            _ => None,
        };
        if let Some(m) = &changed {
            tracing::warn!(
                alarm = %crate::alarm::describe(m),
                action = ?r.action(),
                "alarm changed"
            );
        }
        AlarmResponse {
            header: rev_header(w.current_rev()),
            alarms: changed.into_iter().collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InitialMember;
    use etcd_proto::etcdserverpb::request_op::Request;
    use etcd_proto::etcdserverpb::{RangeRequest, RequestOp, TxnRequest};

    /// An applier on a fresh store, leading (so lease deadlines are armed, as on a leader).
    fn applier(dir: &std::path::Path) -> Applier {
        let backend = Backend::open(dir).unwrap();
        let initial = [InitialMember {
            name: "a".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
        }];
        let membership = Membership::bootstrap(backend.clone(), "a", &initial, "t").unwrap();
        let (store, _) = Store::open(backend.clone()).unwrap();
        let store = Arc::new(store);
        let backend_for_auth = backend.clone();
        let a = Applier {
            backend: backend.clone(),
            hub: Arc::new(WatchHub::new(store.clone())),
            store,
            lessor: Arc::new(Lessor::new(1)),
            membership: Arc::new(membership),
            auth: Arc::new(
                AuthStore::open(
                    &backend_for_auth,
                    crate::auth::Tokens::Simple(crate::auth::SimpleTokens::new(
                        Duration::from_secs(300),
                    )),
                )
                .unwrap(),
            ),
            wait: Arc::new(Wait::default()),
            alarms: Arc::new(AlarmStore::open(backend.clone()).unwrap()),
            lease_extend: Duration::from_secs(1),
        };
        a.leadership_changed(true);
        a
    }

    struct Log {
        a: Applier,
        index: u64,
        next_id: u64,
    }

    impl Log {
        /// Applies one entry written in `term` and returns its result.
        fn apply(&mut self, term: u64, op: Op, proposer_term: u64) -> ApplyResult {
            self.next_id += 1;
            let req = InternalRequest {
                id: self.next_id,
                op: Some(op),
                proposer_term,
                ..Default::default()
            };
            let mut rx = self.a.wait.register(req.id);
            self.apply_raw(term, req.encode_to_vec());
            rx.try_recv()
                .expect("the applier answers every decoded entry")
        }

        /// Applies one client entry (term 1) stamped with `user` at auth revision `rev`.
        fn apply_as(&mut self, op: Op, user: &str, rev: u64) -> ApplyResult {
            self.next_id += 1;
            let req = InternalRequest {
                id: self.next_id,
                op: Some(op),
                username: user.to_string(),
                auth_revision: rev,
                ..Default::default()
            };
            let mut rx = self.a.wait.register(req.id);
            self.apply_raw(1, req.encode_to_vec());
            rx.try_recv()
                .expect("the applier answers every decoded entry")
        }

        fn apply_raw(&mut self, term: u64, data: Vec<u8>) {
            self.index += 1;
            let e = Entry {
                index: self.index,
                term,
                data: data.into(),
                ..Default::default()
            };
            self.a.apply(vec![e]).expect("apply");
        }

        fn get(&self, key: &[u8]) -> usize {
            let r = RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            };
            self.a.store.read().range(&r).unwrap().kvs.len()
        }
    }

    fn put(key: &[u8]) -> PutRequest {
        PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    fn grant(id: i64, ttl: i64) -> Op {
        Op::LeaseGrant(LeaseGrantRequest { id, ttl })
    }

    /// Entries the service layer would never propose, as a forged or corrupt log holds them:
    /// each gets etcd's error as its result, changes nothing, and the member goes on applying.
    /// Before the checks at apply, the TTL of `i64::MAX` panicked the raft thread (deadline
    /// arithmetic), on every member replaying the log, and the txn ending in an empty op had
    /// already written its first put when it failed.
    #[test]
    fn forged_entries_are_refused_at_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log {
            a: applier(dir.path()),
            index: 1,
            next_id: 0,
        };
        let rev = log.a.store.current_rev();
        for ttl in [i64::MAX, MAX_LEASE_TTL + 1, i64::MAX / 1000] {
            let res = log.apply(1, grant(7, ttl), 0);
            assert_eq!(res.unwrap_err(), Error::LeaseTtlTooLarge, "ttl {ttl}");
        }
        assert!(!log.a.lessor.exists(7));
        assert_eq!(
            log.apply(1, grant(0, 10), 0).unwrap_err(),
            Error::LeaseNotFound
        );
        assert!(!log.a.lessor.exists(0));

        let cases: Vec<(Op, Error)> = vec![
            (Op::Put(put(b"")), Error::EmptyKey),
            (
                Op::Put(PutRequest {
                    ignore_value: true,
                    ..put(b"k")
                }),
                Error::ValueProvided,
            ),
            (
                Op::DeleteRange(DeleteRangeRequest::default()),
                Error::EmptyKey,
            ),
            (
                Op::Txn(TxnRequest {
                    success: vec![
                        RequestOp {
                            request: Some(Request::RequestPut(put(b"k"))),
                        },
                        RequestOp { request: None },
                    ],
                    ..Default::default()
                }),
                Error::KeyNotFound,
            ),
            (
                Op::Txn(TxnRequest {
                    success: vec![
                        RequestOp {
                            request: Some(Request::RequestPut(put(b"k"))),
                        },
                        RequestOp {
                            request: Some(Request::RequestPut(put(b"k"))),
                        },
                    ],
                    ..Default::default()
                }),
                Error::DuplicateKey,
            ),
        ];
        for (op, want) in cases {
            let what = format!("{op:?}");
            assert_eq!(log.apply(1, op, 0).unwrap_err(), want, "{what}");
        }
        assert_eq!(log.get(b"k"), 0, "a refused entry wrote nothing");
        assert_eq!(log.a.store.current_rev(), rev);

        // Bytes that are no request at all are skipped.
        log.apply_raw(1, vec![0xff; 7]);

        // The member is unharmed: the largest TTL etcd accepts and a put still apply.
        let granted = log.apply(1, grant(8, MAX_LEASE_TTL), 0).unwrap();
        assert!(matches!(granted, Applied::LeaseGrant(r) if r.ttl == MAX_LEASE_TTL));
        assert!(log.apply(1, Op::Put(put(b"k")), 0).is_ok());
        assert_eq!(log.get(b"k"), 1);
        assert_eq!(log.a.store.current_rev(), rev + 1);
    }

    /// A revoke the leader of term 1 proposed on its own (lease expiry) that entered the log in
    /// term 2 (forwarded to, or re-proposed under, the next leader) is ignored: the lease and
    /// its key stay. The same revoke appended in its own term, and a client's revoke (no
    /// proposer term), apply.
    #[test]
    fn a_stale_leaders_revoke_is_ignored_at_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log {
            a: applier(dir.path()),
            index: 1,
            next_id: 0,
        };
        log.apply(1, grant(9, 100), 0).unwrap();
        log.apply(
            1,
            Op::Put(PutRequest {
                lease: 9,
                ..put(b"leased")
            }),
            0,
        )
        .unwrap();
        let revoke = || Op::LeaseRevoke(LeaseRevokeRequest { id: 9 });

        let res = log.apply(2, revoke(), 1);
        assert_eq!(res.unwrap_err(), Error::LeaderChanged);
        assert!(log.a.lessor.exists(9));
        assert_eq!(log.get(b"leased"), 1);

        assert!(log.apply(2, revoke(), 2).is_ok());
        assert!(!log.a.lessor.exists(9));
        assert_eq!(log.get(b"leased"), 0);

        log.apply(2, grant(10, 100), 0).unwrap();
        let client_revoke = Op::LeaseRevoke(LeaseRevokeRequest { id: 10 });
        assert!(log.apply(3, client_revoke, 0).is_ok());
        assert!(!log.a.lessor.exists(10));
    }
    use crate::auth::{AuthOp, AuthRequest};
    use etcd_proto::authpb::{permission::Type, Permission};
    use etcd_proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest,
    };

    fn auth(r: AuthRequest) -> Op {
        Op::Auth(AuthOp { request: Some(r) })
    }

    /// A logged write is checked again where it applies, with the user and revision stamped on
    /// it: whatever reached the log (a forged entry, or one checked before an auth change)
    /// cannot write what its user may not, and a refused entry writes nothing.
    #[test]
    fn writes_are_checked_again_at_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log {
            a: applier(dir.path()),
            index: 1,
            next_id: 0,
        };
        let admin = |log: &mut Log, r| log.apply_as(auth(r), "", 0).unwrap();
        for name in ["root", "alice"] {
            admin(
                &mut log,
                AuthRequest::UserAdd(AuthUserAddRequest {
                    name: name.into(),
                    hashed_password: "x".into(),
                    ..Default::default()
                }),
            );
        }
        admin(
            &mut log,
            AuthRequest::RoleAdd(AuthRoleAddRequest { name: "w".into() }),
        );
        admin(
            &mut log,
            AuthRequest::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: "w".into(),
                perm: Some(Permission {
                    perm_type: Type::Write as i32,
                    key: b"w".to_vec(),
                    range_end: vec![],
                }),
            }),
        );
        for (user, role) in [("root", "root"), ("alice", "w")] {
            admin(
                &mut log,
                AuthRequest::UserGrantRole(AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: role.into(),
                }),
            );
        }
        admin(&mut log, AuthRequest::Enable(AuthEnableRequest {}));
        let rev = log.a.auth.revision();
        let kv_rev = log.a.store.current_rev();

        let put = |k: &[u8]| {
            Op::Put(PutRequest {
                key: k.to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        };
        let cases = [
            (put(b"w"), "", 0, Error::UserEmpty),
            (put(b"w"), "alice", rev - 1, Error::AuthOldRevision),
            (put(b"other"), "alice", rev, Error::PermissionDenied),
            (put(b"w"), "mallory", rev, Error::PermissionDenied),
            (
                auth(AuthRequest::RoleAdd(AuthRoleAddRequest {
                    name: "x".into(),
                })),
                "alice",
                rev,
                Error::PermissionDenied,
            ),
            (
                auth(AuthRequest::RoleAdd(AuthRoleAddRequest {
                    name: "x".into(),
                })),
                "",
                0,
                Error::UserEmpty,
            ),
            (
                Op::Auth(AuthOp { request: None }),
                "root",
                rev,
                Error::InvalidAuthMgmt,
            ),
        ];
        for (op, user, r, want) in cases {
            let what = format!("{op:?} as {user:?}@{r}");
            assert_eq!(log.apply_as(op, user, r).unwrap_err(), want, "{what}");
        }
        assert_eq!(log.a.store.current_rev(), kv_rev, "nothing was written");
        assert_eq!(log.a.auth.revision(), rev, "the auth store did not change");
        // The same write with the right user and revision applies; root may do anything.
        log.apply_as(put(b"w"), "alice", rev).unwrap();
        log.apply_as(put(b"other"), "root", rev).unwrap();
        assert_eq!(log.a.store.current_rev(), kv_rev + 2);
    }
}
