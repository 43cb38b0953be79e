//! The MVCC store on fjall: revision-keyed values plus the in-memory [`KeyIndex`].
//!
//! Readers take a shared lock; the applier takes the exclusive lock through a [`Writer`] for one
//! applied chunk of raft entries, so readers never see half of a chunk. Every change goes into the
//! applier's fjall batch, which also carries the raft applied index: state and applied index move
//! together.

use super::index::Latest;
use super::{KeyIndex, KeyRange, Revision};
use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use fjall::{Keyspace, OwnedWriteBatch as WriteBatch};
use parking_lot::{RwLock, RwLockWriteGuard};
use prost::Message;
use std::collections::HashMap;

const TAG_PUT: u8 = 0;
const TAG_TOMBSTONE: u8 = 1;

/// All events of one revision, in sub-revision order. `prev_kv` is filled when the key had a
/// previous live value.
#[derive(Debug, Clone)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

/// What a put replaced (see [`Writer::put`]).
#[derive(Debug)]
pub struct Replaced {
    pub lease: i64,
    /// The replaced value, when asked for.
    pub kv: Option<KeyValue>,
}

/// What a Range read returns before the service adds the header.
#[derive(Debug, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
    /// The store revision the read saw as current (etcd puts it in the header).
    pub rev: i64,
}

struct Inner {
    index: KeyIndex,
    current_rev: i64,
    /// -1 until the first compaction (as etcd's `compactMainRev`), so revision 0 may be compacted.
    compact_rev: i64,
}

pub struct Store {
    backend: Backend,
    inner: RwLock<Inner>,
}

/// A live key and the lease it is attached to, found while loading the store.
pub type LeasedKey = (Vec<u8>, i64);

impl Store {
    /// Loads the store: rebuilds the key index from the stored revisions. Returns the live keys
    /// that carry a lease, so the lessor can re-attach them.
    pub fn open(backend: Backend) -> Result<(Self, Vec<LeasedKey>)> {
        let (inner, leased) = load(&backend)?;
        let store = Store {
            backend,
            inner: RwLock::new(inner),
        };
        Ok((store, leased))
    }

    /// Rebuilds the in-memory view after the stored state was replaced (snapshot install).
    pub fn reload(&self) -> Result<Vec<LeasedKey>> {
        let mut guard = self.inner.write();
        let (inner, leased) = load(&self.backend)?;
        *guard = inner;
        Ok(leased)
    }

    pub fn current_rev(&self) -> i64 {
        self.inner.read().current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.inner.read().compact_rev
    }

    /// A Range at the request's revision (latest when `revision <= 0`).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        let inner = self.inner.read();
        let kv = &self.backend.kv;
        eval_range(&inner, inner.current_rev, req, |rev| fetch(kv, rev))
    }

    /// Events of revisions `from..=to`, read from stored history.
    pub fn events(&self, from: i64, to: i64) -> Result<Vec<RevEvents>> {
        let inner = self.inner.read();
        if from < inner.compact_rev {
            return Err(Error::Compacted);
        }
        let mut out: Vec<RevEvents> = Vec::new();
        let lo = Revision::new(from, 0).to_bytes();
        let hi = Revision::new(to.saturating_add(1), 0).to_bytes();
        for item in self.backend.kv.range(lo..hi) {
            let (k, v) = item.into_inner()?;
            let rev = Revision::from_bytes(&k).ok_or_else(|| Error::internal("bad revision"))?;
            let (tombstone, kv) = decode_value(&v)?;
            let prev_kv = match inner.index.get(&kv.key, rev.main - 1) {
                Some(prev) => fetch(&self.backend.kv, prev)?,
                None => None,
            };
            let ev = Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv,
            };
            match out.last_mut() {
                Some(last) if last.rev == rev.main => last.events.push(ev),
                _ => out.push(RevEvents {
                    rev: rev.main,
                    events: vec![ev],
                }),
            }
        }
        Ok(out)
    }

    /// Starts the exclusive write side for one applied chunk.
    pub fn write(&self) -> Writer<'_> {
        Writer {
            backend: &self.backend,
            inner: self.inner.write(),
            batch: self.backend.db.batch(),
            pending: HashMap::new(),
            events: Some(Vec::new()),
            txn: None,
            dirty: false,
        }
    }
}

/// Reads revisions and rebuilds the key index from the stored values.
fn load(backend: &Backend) -> Result<(Inner, Vec<LeasedKey>)> {
    let current_rev = backend.get_meta_i64(meta_key::CURRENT_REV)?.unwrap_or(1);
    let compact_rev = backend.get_meta_i64(meta_key::COMPACT_REV)?.unwrap_or(-1);
    let mut index = KeyIndex::new();
    let mut leases: HashMap<Vec<u8>, i64> = HashMap::new();
    for item in backend.kv.iter() {
        let (k, v) = item.into_inner()?;
        let rev = Revision::from_bytes(&k)
            .ok_or_else(|| Error::internal("corrupt revision key in kv keyspace"))?;
        let (tombstone, kv) = decode_value(&v)?;
        if tombstone {
            index.tombstone(&kv.key, rev);
            leases.remove(&kv.key);
        } else {
            index.put(
                &kv.key,
                Latest {
                    rev,
                    create_revision: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                },
            );
            if kv.lease != 0 {
                leases.insert(kv.key, kv.lease);
            } else {
                leases.remove(&kv.key);
            }
        }
    }
    let inner = Inner {
        index,
        current_rev,
        compact_rev,
    };
    Ok((inner, leases.into_iter().collect()))
}

struct TxnState {
    begin_rev: i64,
    sub: i64,
    events: Vec<Event>,
}

/// The applier's exclusive handle: groups changes into etcd write transactions (one revision
/// each) and commits them with whatever else the applier adds to [`Writer::batch`].
pub struct Writer<'a> {
    backend: &'a Backend,
    inner: RwLockWriteGuard<'a, Inner>,
    pub batch: WriteBatch,
    /// Values written in this chunk, not yet in fjall.
    pending: HashMap<Revision, KeyValue>,
    /// Events of the revisions written, for the watch hub; `None` when nobody watches.
    events: Option<Vec<RevEvents>>,
    txn: Option<TxnState>,
    dirty: bool,
}

impl Writer<'_> {
    /// Builds no events for this chunk: with no watch stream open, copying every key and
    /// value into events that are dropped unread was about a tenth of a follower's apply CPU.
    pub fn skip_events(&mut self) {
        self.events = None;
    }

    fn record(&mut self, event: impl FnOnce() -> Event) {
        if self.events.is_some() {
            let e = event();
            self.txn().events.push(e);
        }
    }

    pub fn current_rev(&self) -> i64 {
        self.inner.current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.inner.compact_rev
    }

    /// Opens an etcd write transaction: everything until [`Writer::end_txn`] shares one revision.
    pub fn begin_txn(&mut self) {
        assert!(self.txn.is_none(), "nested write txn");
        self.txn = Some(TxnState {
            begin_rev: self.inner.current_rev,
            sub: 0,
            events: Vec::new(),
        });
    }

    /// Closes the transaction; bumps the revision by one if it changed anything. Returns the
    /// store revision after it.
    pub fn end_txn(&mut self) -> i64 {
        let t = self.txn.take().expect("no open write txn");
        if t.sub > 0 {
            self.inner.current_rev = t.begin_rev + 1;
            if let Some(events) = &mut self.events {
                events.push(RevEvents {
                    rev: t.begin_rev + 1,
                    events: t.events,
                });
            }
            self.dirty = true;
        }
        self.inner.current_rev
    }

    fn txn(&mut self) -> &mut TxnState {
        self.txn.as_mut().expect("write outside a txn")
    }

    /// The revision a read inside the open transaction sees: including its own changes.
    pub fn txn_read_rev(&self) -> i64 {
        match &self.txn {
            Some(t) if t.sub > 0 => t.begin_rev + 1,
            Some(t) => t.begin_rev,
            None => self.inner.current_rev,
        }
    }

    /// The revision the open transaction will have if it changes something.
    pub fn txn_write_rev(&self) -> i64 {
        self.txn
            .as_ref()
            .map_or(self.inner.current_rev, |t| t.begin_rev)
            + 1
    }

    /// The latest live value of `key`, including this chunk's own writes.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.inner.index.get(key, i64::MAX) {
            Some(rev) => self.fetch(rev),
            None => Ok(None),
        }
    }

    /// Latest live values of every key in `range`.
    pub fn get_range(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let revs: Vec<Revision> = self
            .inner
            .index
            .range(range, i64::MAX)
            .map(|(_, r)| r)
            .collect();
        revs.into_iter()
            .filter_map(|r| self.fetch(r).transpose())
            .collect()
    }

    fn fetch(&self, rev: Revision) -> Result<Option<KeyValue>> {
        match self.pending.get(&rev) {
            Some(kv) => Ok(Some(kv.clone())),
            None => fetch(&self.backend.kv, rev),
        }
    }

    /// A Range inside the open transaction (sees its own earlier writes).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        let rev = self.txn_read_rev();
        eval_range(&self.inner, rev, req, |r| self.fetch(r))
    }

    /// Puts `value` under `key` with `lease`. Returns what it replaced when the key was live:
    /// its lease always, the value itself only with `want_prev`. The key index knows the
    /// replaced value's create revision, version and lease, so the stored value is read only
    /// when someone needs it (`want_prev`, or a watch stream for its `prev_kv`).
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        want_prev: bool,
    ) -> Result<Option<Replaced>> {
        let latest = self.inner.index.latest(key);
        let prev = match latest {
            Some(l) if want_prev || self.events.is_some() => self.fetch(l.rev)?,
            _ => None,
        };
        let main = self.txn_write_rev();
        let t = self.txn();
        let rev = Revision::new(main, t.sub);
        t.sub += 1;
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: latest.map_or(main, |l| l.create_revision),
            mod_revision: main,
            version: latest.map_or(0, |l| l.version) + 1,
            value,
            lease,
        };
        self.record(|| Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: prev.clone(),
        });
        self.batch
            .insert(&self.backend.kv, rev.to_bytes(), encode_value(TAG_PUT, &kv));
        self.inner.index.put(
            key,
            Latest {
                rev,
                create_revision: kv.create_revision,
                version: kv.version,
                lease,
            },
        );
        self.pending.insert(rev, kv);
        Ok(latest.map(|l| Replaced {
            lease: l.lease,
            kv: if want_prev { prev } else { None },
        }))
    }

    /// Deletes every live key in `range`; returns the deleted values in key order.
    pub fn delete_range(&mut self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let prevs = self.get_range(range)?;
        let main = self.txn_write_rev();
        for prev in &prevs {
            let t = self.txn();
            let rev = Revision::new(main, t.sub);
            t.sub += 1;
            let kv = KeyValue {
                key: prev.key.clone(),
                mod_revision: main,
                ..Default::default()
            };
            self.batch.insert(
                &self.backend.kv,
                rev.to_bytes(),
                encode_value(TAG_TOMBSTONE, &kv),
            );
            self.inner.index.tombstone(&prev.key, rev);
            self.record(|| Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(prevs)
    }

    /// Removes history older than `rev` (validated by the caller), for real.
    pub fn compact(&mut self, rev: i64) {
        for dropped in self.inner.index.compact(rev) {
            self.pending.remove(&dropped);
            self.batch.remove(&self.backend.kv, dropped.to_bytes());
        }
        self.inner.compact_rev = rev;
        self.batch.insert(
            &self.backend.meta,
            meta_key::COMPACT_REV,
            rev.to_be_bytes().to_vec(),
        );
    }

    /// Commits the chunk (one fjall batch, no fsync: the raft log is the durable record) and
    /// returns the events of every revision it created (`None` after [`Writer::skip_events`]).
    pub fn commit(mut self) -> Result<Option<Vec<RevEvents>>> {
        assert!(self.txn.is_none(), "commit with an open txn");
        if self.dirty {
            self.batch.insert(
                &self.backend.meta,
                meta_key::CURRENT_REV,
                self.inner.current_rev.to_be_bytes().to_vec(),
            );
        }
        let events = self.events.take();
        self.batch.commit()?;
        Ok(events)
    }
}

fn fetch(kv: &Keyspace, rev: Revision) -> Result<Option<KeyValue>> {
    match kv.get(rev.to_bytes())? {
        Some(v) => {
            let (tombstone, kv) = decode_value(&v)?;
            Ok((!tombstone).then_some(kv))
        }
        // Dropped by a compaction that raced with this read.
        None => Err(Error::Compacted),
    }
}

fn encode_value(tag: u8, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(tag);
    kv.encode(&mut buf).expect("vec has room");
    buf
}

fn decode_value(v: &[u8]) -> Result<(bool, KeyValue)> {
    let (tag, body) = v
        .split_first()
        .ok_or_else(|| Error::internal("empty kv value"))?;
    let kv = KeyValue::decode(body).map_err(Error::internal)?;
    Ok((*tag == TAG_TOMBSTONE, kv))
}

/// etcd's `executeRange`: select, filter, sort, limit. `current` is the revision the reader sees
/// as latest.
fn eval_range(
    inner: &Inner,
    current: i64,
    req: &RangeRequest,
    fetch: impl Fn(Revision) -> Result<Option<KeyValue>>,
) -> Result<RangeResult> {
    let order = SortOrder::try_from(req.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let target = SortTarget::try_from(req.sort_target).map_err(|_| Error::InvalidSortOption)?;
    let at = if req.revision <= 0 {
        current
    } else {
        req.revision
    };
    if at > current {
        return Err(Error::FutureRev);
    }
    if at < inner.compact_rev {
        return Err(Error::Compacted);
    }
    let range = KeyRange::new(&req.key, &req.range_end);
    let revs: Vec<Revision> = inner.index.range(&range, at).map(|(_, r)| r).collect();
    let mut res = RangeResult {
        count: revs.len() as i64,
        rev: current,
        ..Default::default()
    };
    if req.count_only {
        return Ok(res);
    }
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd reads everything only when an order or a filter is given; a sort target with no
    // order sorts (ascending) just what the limit let through, as etcd does.
    let fetch_all = order != SortOrder::None || filtered;
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let fetch_n = if limit > 0 && !fetch_all {
        limit + 1
    } else {
        usize::MAX
    };
    let mut kvs = Vec::with_capacity(revs.len().min(fetch_n).min(4096));
    for rev in revs.into_iter().take(fetch_n) {
        if let Some(kv) = fetch(rev)? {
            kvs.push(kv);
        }
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None && !(order == SortOrder::Ascend && target == SortTarget::Key) {
        let cmp = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable, so ties stay in key order either way.
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        res.more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    res.kvs = kvs;
    Ok(res)
}
