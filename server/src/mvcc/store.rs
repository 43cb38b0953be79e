//! The MVCC store on fjall: revision-keyed values plus the in-memory [`KeyIndex`].
//!
//! The applier runs on the raft thread, so nothing else may hold it up for long. Who holds the
//! index's lock, and for how long:
//! - the applier ([`Writer`]) holds the write lock for one applied chunk of raft entries, so
//!   readers never see half of a chunk, and commits the chunk's fjall batch under it;
//! - readers ([`ReadTxn`]) take the read lock for a bounded step of an index walk at a time,
//!   and read values from a fjall snapshot taken when they began, with no lock at all;
//! - the background compactor ([`super::compactor`]) takes the write lock for a bounded step.

use super::compactor::{Compaction, Readers};
use super::index::Latest;
use super::read::ReadTxn;
use super::writer::Writer;
use super::{KeyIndex, Revision};
use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use etcd_proto::mvccpb::{event::EventType, Event, KeyValue};
use fjall::{Keyspace, Readable};
use parking_lot::RwLock;
use prost::Message;
use std::sync::Arc;

pub(super) const TAG_PUT: u8 = 0;
pub(super) const TAG_TOMBSTONE: u8 = 1;

/// Events whose `prev_kv` are looked up in the index under one hold of its read lock.
const PREV_LOOKUP_STEP: usize = 1024;

/// All events of one revision, in sub-revision order. `prev_kv` is filled when the key had a
/// previous live value.
#[derive(Debug, Clone)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
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

pub(super) struct Inner {
    pub(super) index: KeyIndex,
    pub(super) current_rev: i64,
    /// The compaction revision clients see: reads below it fail with `Compacted` from the
    /// moment the compaction is applied, while the compactor drops the history behind it.
    /// -1 until the first compaction (as etcd's `compactMainRev`), so revision 0 may be
    /// compacted.
    pub(super) compact_rev: i64,
    /// Changes when the whole state is replaced (snapshot install), so that a compaction pass
    /// over the old index stops.
    pub(super) generation: u64,
    /// The index of a snapshot being installed in place of the stored state (0: none). Until
    /// the install is done and the store reloaded, the stored values are half replaced: new
    /// reads wait (see [`Store::try_read`]).
    pub(super) installing: u64,
}

pub struct Store {
    pub(super) backend: Backend,
    pub(super) inner: RwLock<Inner>,
    /// Readers whose index walk spans several lock holds (see [`Readers`]).
    pub(super) readers: Readers,
    pub(super) compaction: Compaction,
}

/// A live key and the lease it is attached to, found while loading the store.
pub type LeasedKey = (Vec<u8>, i64);

impl Store {
    /// Loads the store: rebuilds the key index from the stored revisions. Returns the live keys
    /// that carry a lease, so the lessor can re-attach them. Start the compactor with
    /// [`Store::start_compactor`] once the store is shared.
    pub fn open(backend: Backend) -> Result<(Self, Vec<LeasedKey>)> {
        let (inner, leased) = load(&backend, 0, None)?;
        let compaction = Compaction::new(inner.compact_rev);
        let store = Store {
            backend,
            inner: RwLock::new(inner),
            readers: Readers::default(),
            compaction,
        };
        Ok((store, leased))
    }

    /// Starts the background compactor thread (it ends when the store is dropped).
    pub fn start_compactor(self: &Arc<Self>) -> Result<()> {
        super::compactor::start(self)
    }

    /// Rebuilds the in-memory view after the stored state was replaced (snapshot install),
    /// from `loader` when it saw every stored revision as the install wrote them (else from
    /// a walk of the stored state). The new index is built before the lock is taken: readers
    /// go on meanwhile.
    pub fn reload(&self, loader: Option<IndexLoader>) -> Result<Vec<LeasedKey>> {
        let generation = self.inner.read().generation + 1;
        let (inner, leased) = load(&self.backend, generation, loader)?;
        let compact_rev = inner.compact_rev;
        *self.inner.write() = inner;
        // The stored history may hold revisions the compaction behind the new state had not
        // dropped yet when it was copied.
        self.compaction.restart(compact_rev);
        Ok(leased)
    }

    pub fn current_rev(&self) -> i64 {
        self.inner.read().current_rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.inner.read().compact_rev
    }

    /// Number of live keys at the current revision, kept by the index (no walk).
    pub fn live_keys(&self) -> usize {
        self.inner.read().index.live()
    }

    /// Starts a read-only transaction at the current revision.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn::open(self, &self.inner.read())
    }

    /// Starts a read-only transaction, unless a snapshot install is replacing the stored
    /// state: then the snapshot's index, which the member's applied index reaches once the
    /// install is done (wait for that, then try again). Checked under the index lock that
    /// [`Store::begin_install`] takes, so no read starts on a half-replaced state.
    pub fn try_read(&self) -> std::result::Result<ReadTxn<'_>, u64> {
        let inner = self.inner.read();
        match inner.installing {
            0 => Ok(ReadTxn::open(self, &inner)),
            index => Err(index),
        }
    }

    /// A snapshot install (of the snapshot at raft index `index`) is about to replace the
    /// stored state: new reads wait until [`Store::reload`], and the compactor stops its pass
    /// over the old index. Reads that began before go on from their own storage snapshot.
    pub fn begin_install(&self, index: u64) {
        let mut inner = self.inner.write();
        inner.installing = index;
        inner.generation += 1;
    }

    /// Starts the exclusive write side for one applied chunk.
    pub fn write(&self) -> Writer<'_> {
        Writer::new(self)
    }

    /// Waits until this member's compactor has physically dropped the history before `rev`
    /// (etcd's `physical` compaction).
    pub async fn wait_compacted(&self, rev: i64) {
        self.compaction.wait_done(rev).await
    }

    /// Events of revisions `from..=to`, read from stored history. Values come from a fjall
    /// snapshot; the index (for each event's `prev_kv`) is read in steps.
    pub fn events(&self, from: i64, to: i64) -> Result<Vec<RevEvents>> {
        let (snap, _reader) = {
            let inner = self.inner.read();
            if inner.installing != 0 {
                return Err(Error::SnapshotInstalling);
            }
            if from < inner.compact_rev {
                return Err(Error::Compacted);
            }
            // The prev_kv lookups read the index as of `from - 1` and later: compaction must
            // not pass that point until they are done.
            (self.backend.db.snapshot(), self.readers.register(from - 1))
        };
        let ks = &self.backend.kv;
        let lo = Revision::new(from, 0).to_bytes();
        let hi = Revision::new(to.saturating_add(1), 0).to_bytes();
        let mut changes = Vec::new();
        for item in snap.range(ks, lo..hi) {
            let (k, v) = item.into_inner()?;
            let rev = Revision::from_bytes(&k).ok_or_else(|| Error::internal("bad revision"))?;
            let (tombstone, kv) = decode_value(&v)?;
            changes.push((rev, tombstone, kv));
        }
        let mut out: Vec<RevEvents> = Vec::new();
        let mut prevs = Vec::with_capacity(PREV_LOOKUP_STEP);
        for step in changes.chunks_mut(PREV_LOOKUP_STEP) {
            prevs.clear();
            {
                let inner = self.inner.read();
                prevs.extend(
                    step.iter()
                        .map(|(rev, _, kv)| inner.index.get(&kv.key, rev.main - 1)),
                );
            }
            for ((rev, tombstone, kv), prev) in step.iter_mut().zip(&prevs) {
                let prev_kv = match prev {
                    Some(p) => fetch(&snap, ks, *p)?,
                    None => None,
                };
                let ev = Event {
                    r#type: if *tombstone {
                        EventType::Delete
                    } else {
                        EventType::Put
                    } as i32,
                    kv: Some(std::mem::take(kv)),
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
        }
        Ok(out)
    }
}

/// Reads the stored revisions into a new index (a whole walk of the kv keyspace), unless
/// `loader` already saw them all (a snapshot install feeds it as it writes them).
fn load(
    backend: &Backend,
    generation: u64,
    loader: Option<IndexLoader>,
) -> Result<(Inner, Vec<LeasedKey>)> {
    let current_rev = backend.get_meta_i64(meta_key::CURRENT_REV)?.unwrap_or(1);
    let compact_rev = backend.get_meta_i64(meta_key::COMPACT_REV)?.unwrap_or(-1);
    let loader = match loader {
        Some(loader) => loader,
        None => {
            let mut loader = IndexLoader::default();
            for item in backend.kv.iter() {
                let (k, v) = item.into_inner()?;
                loader.add(&k, &v)?;
            }
            loader
        }
    };
    let index = KeyIndex::from_changes(loader.changes);
    let leased = index.leased();
    let inner = Inner {
        index,
        current_rev,
        compact_rev,
        generation,
        installing: 0,
    };
    Ok((inner, leased))
}

/// Collects what the key index needs of each stored revision (a kv keyspace pair), given in
/// revision order, and builds the index from them at once ([`KeyIndex::from_changes`]).
#[derive(Default)]
pub struct IndexLoader {
    changes: Vec<(Vec<u8>, Revision, Option<Latest>)>,
}

impl IndexLoader {
    /// One stored revision: its kv keyspace key and value.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let rev = Revision::from_bytes(key)
            .ok_or_else(|| Error::internal("corrupt revision key in kv keyspace"))?;
        let (tag, body) = value
            .split_first()
            .ok_or_else(|| Error::internal("empty kv value"))?;
        let f = IndexedFields::decode(body).map_err(Error::internal)?;
        let latest = (*tag != TAG_TOMBSTONE).then_some(Latest {
            rev,
            create_revision: f.create_revision,
            version: f.version,
            lease: f.lease,
        });
        self.changes.push((f.key, rev, latest));
        Ok(())
    }
}

/// What the index keeps of a stored `KeyValue` (mvccpb field numbers): decoding only these
/// skips the value, a put's largest part, instead of copying it for every stored revision.
#[derive(Clone, PartialEq, prost::Message)]
struct IndexedFields {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// The live value stored at `rev`, as of `snap`.
pub(super) fn fetch(
    snap: &fjall::Snapshot,
    kv: &Keyspace,
    rev: Revision,
) -> Result<Option<KeyValue>> {
    live_value(snap.get(kv, rev.to_bytes())?)
}

/// Decodes what a point read of a revision found: the live value, `None` for a tombstone.
pub(super) fn live_value(stored: Option<impl AsRef<[u8]>>) -> Result<Option<KeyValue>> {
    match stored {
        Some(v) => {
            let (tombstone, kv) = decode_value(v.as_ref())?;
            Ok((!tombstone).then_some(kv))
        }
        // Dropped by a compaction that raced with this read.
        None => Err(Error::Compacted),
    }
}

pub(super) fn encode_value(tag: u8, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(tag);
    kv.encode(&mut buf).expect("vec has room");
    buf
}

pub(super) fn decode_value(v: &[u8]) -> Result<(bool, KeyValue)> {
    let (tag, body) = v
        .split_first()
        .ok_or_else(|| Error::internal("empty kv value"))?;
    let kv = KeyValue::decode(body).map_err(Error::internal)?;
    Ok((*tag == TAG_TOMBSTONE, kv))
}
