//! The applier's side of the store: one [`Writer`] per applied chunk of raft entries, holding
//! the index's write lock, grouping changes into etcd write transactions (one revision each)
//! and committing them in one fjall batch with whatever else the applier adds (the applied
//! index): state and applied index move together.

use super::index::Latest;
use super::read::{IndexRead, KvRead, Visit};
use super::store::{encode_value, live_value, Inner, RevEvents, TAG_PUT, TAG_TOMBSTONE};
use super::{KeyRange, Revision, Store};
use crate::backend::meta_key;
use crate::error::Result;
use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use fjall::OwnedWriteBatch as WriteBatch;
use parking_lot::RwLockWriteGuard;
use std::collections::HashMap;

/// What a put replaced (see [`Writer::put`]).
#[derive(Debug)]
pub struct Replaced {
    pub lease: i64,
    /// The replaced value, when asked for.
    pub kv: Option<KeyValue>,
}

/// A key removed by [`Writer::delete_range`].
#[derive(Debug)]
pub struct Deleted {
    pub key: Vec<u8>,
    /// The lease the deleted value was attached to (0: none).
    pub lease: i64,
    /// The deleted value, when asked for.
    pub prev: Option<KeyValue>,
}

struct TxnState {
    begin_rev: i64,
    sub: i64,
    events: Vec<Event>,
}

/// The applier's exclusive handle: groups changes into etcd write transactions (one revision
/// each) and commits them with whatever else the applier adds to [`Writer::batch`].
pub struct Writer<'a> {
    store: &'a Store,
    inner: RwLockWriteGuard<'a, Inner>,
    pub batch: WriteBatch,
    /// Values written in this chunk, not yet in fjall.
    pending: HashMap<Revision, KeyValue>,
    /// Events of the revisions written, for the watch hub; `None` when nobody watches.
    events: Option<Vec<RevEvents>>,
    txn: Option<TxnState>,
    dirty: bool,
    /// A compaction was applied in this chunk: the compactor hears of it once it is committed.
    compacted: bool,
}

impl<'a> Writer<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Writer {
            store,
            inner: store.inner.write(),
            batch: store.backend.db.batch(),
            pending: HashMap::new(),
            events: Some(Vec::new()),
            txn: None,
            dirty: false,
            compacted: false,
        }
    }

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

    fn fetch_rev(&self, rev: Revision) -> Result<Option<KeyValue>> {
        match self.pending.get(&rev) {
            Some(kv) => Ok(Some(kv.clone())),
            None => live_value(self.store.backend.kv.get(rev.to_bytes())?),
        }
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
            Some(l) if want_prev || self.events.is_some() => self.fetch_rev(l.rev)?,
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
        self.batch.insert(
            &self.store.backend.kv,
            rev.to_bytes(),
            encode_value(TAG_PUT, &kv),
        );
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

    /// Deletes every live key in `range`, in key order. A deleted value is read only when
    /// someone needs it (`want_prev`, or a watch stream for the event's `prev_kv`): the index
    /// knows each key's lease.
    pub fn delete_range(&mut self, range: &KeyRange, want_prev: bool) -> Result<Vec<Deleted>> {
        let mut live: Vec<(Vec<u8>, Latest)> = Vec::new();
        self.inner
            .index
            .walk(range, i64::MAX, None, usize::MAX, |k, _, latest| {
                if let Some(l) = latest {
                    live.push((k.to_vec(), l));
                }
            });
        let read_prev = want_prev || self.events.is_some();
        let main = self.txn_write_rev();
        let mut deleted = Vec::with_capacity(live.len());
        for (key, latest) in live {
            let prev = if read_prev {
                self.fetch_rev(latest.rev)?
            } else {
                None
            };
            let t = self.txn();
            let rev = Revision::new(main, t.sub);
            t.sub += 1;
            let kv = KeyValue {
                key: key.clone(),
                mod_revision: main,
                ..Default::default()
            };
            self.batch.insert(
                &self.store.backend.kv,
                rev.to_bytes(),
                encode_value(TAG_TOMBSTONE, &kv),
            );
            self.inner.index.tombstone(&key, rev);
            self.record(|| Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: prev.clone(),
            });
            deleted.push(Deleted {
                key,
                lease: latest.lease,
                prev: if want_prev { prev } else { None },
            });
        }
        Ok(deleted)
    }

    /// Compacts at `rev` (validated by the caller): reads below it fail from now on, and the
    /// background compactor drops the history behind it, in steps, once this chunk is
    /// committed (etcd's `scheduleCompaction`).
    pub fn compact(&mut self, rev: i64) {
        self.inner.compact_rev = rev;
        self.batch.insert(
            &self.store.backend.meta,
            meta_key::COMPACT_REV,
            rev.to_be_bytes().to_vec(),
        );
        self.compacted = true;
    }

    /// Commits the chunk (one fjall batch, no fsync: the raft log is the durable record) and
    /// returns the events of every revision it created (`None` after [`Writer::skip_events`]).
    pub fn commit(mut self) -> Result<Option<Vec<RevEvents>>> {
        assert!(self.txn.is_none(), "commit with an open txn");
        if self.dirty {
            self.batch.insert(
                &self.store.backend.meta,
                meta_key::CURRENT_REV,
                self.inner.current_rev.to_be_bytes().to_vec(),
            );
        }
        let events = self.events.take();
        self.batch.commit()?;
        if self.compacted {
            self.store.compaction.request(self.inner.compact_rev);
        }
        Ok(events)
    }
}

impl IndexRead for Writer<'_> {
    /// The writer holds the lock already: one walk covers the range.
    fn walk(
        &self,
        range: &KeyRange,
        at: i64,
        resume: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.index.walk(range, at, resume, usize::MAX, f))
    }

    fn fetch(&self, rev: Revision) -> Result<Option<KeyValue>> {
        self.fetch_rev(rev)
    }
}

impl KvRead for Writer<'_> {
    fn current_rev(&self) -> i64 {
        self.inner.current_rev
    }

    fn compact_rev(&self) -> i64 {
        self.inner.compact_rev
    }

    fn read_rev(&self) -> i64 {
        self.txn_read_rev()
    }
}
