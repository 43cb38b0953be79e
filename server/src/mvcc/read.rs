//! Reads of the store (etcd's `executeRange` and read transactions), shared by the applier's
//! [`super::Writer`] (a Txn's ranges and compares at apply) and by [`ReadTxn`], the read-only
//! transaction every Range and read-only Txn of a client runs in.
//!
//! A [`ReadTxn`] reads one consistent state without holding up the applier: it takes a fjall
//! snapshot when it begins (values), and walks the key index a bounded step at a time under
//! its read lock, so a full-keyspace range at a million keys holds the lock for many short
//! moments instead of seconds. A walk that spans several steps registers its revision with the
//! compactor, which does not drop history a reader still walks (see [`super::compactor`]).
//! `count_only` reads no value, and `keys_only` reads none for keys whose newest value is the
//! one asked for (the index knows its metadata).

use super::compactor::ReaderGuard;
use super::index::Latest;
use super::store::{fetch, Inner, RangeResult};
use super::{KeyRange, Revision, Store};
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_proto::mvccpb::KeyValue;
use std::cell::RefCell;

/// Keys a reader looks at under one hold of the index's read lock.
const READ_STEP_KEYS: usize = 1024;

/// What a walk hands over for each live key (see [`super::KeyIndex::walk`]).
pub type Visit<'f> = &'f mut dyn FnMut(&[u8], Revision, Option<Latest>);

/// The index and the values behind it, as one reader sees them.
pub trait IndexRead {
    /// Calls `f` for the live keys of `range` as of `at`, from the first key after `resume`,
    /// in key order (see [`super::KeyIndex::walk`]); returns the key to resume after when it
    /// stopped early, `None` when the range is done.
    fn walk(
        &self,
        range: &KeyRange,
        at: i64,
        resume: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<Option<Vec<u8>>>;

    /// The live value stored at `rev`.
    fn fetch(&self, rev: Revision) -> Result<Option<KeyValue>>;
}

/// What a Txn's compares and ranges need from the store, at apply or in a read-only Txn.
pub trait KvRead: IndexRead {
    /// The store's revision (for `FutureRev` checks).
    fn current_rev(&self) -> i64;
    fn compact_rev(&self) -> i64;
    /// The revision reads see as the latest (inside a write txn, including its own changes).
    fn read_rev(&self) -> i64;

    /// A Range request at its revision (latest when `revision <= 0`).
    fn range(&self, req: &RangeRequest) -> Result<RangeResult> {
        eval_range(self, self.read_rev(), self.compact_rev(), req)
    }

    /// The latest live value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.get_range(&KeyRange::single(key))?.pop())
    }

    /// The latest live values of every key in `range`, in key order.
    fn get_range(&self, range: &KeyRange) -> Result<Vec<KeyValue>> {
        let mut revs = Vec::new();
        let mut kvs = Vec::new();
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let next = self.walk(range, self.read_rev(), resume.as_deref(), &mut |_, r, _| {
                revs.push(r)
            })?;
            for rev in revs.drain(..) {
                kvs.extend(self.fetch(rev)?);
            }
            match next {
                Some(k) => resume = Some(k),
                None => return Ok(kvs),
            }
        }
    }
}

/// A read-only transaction: every read in it sees the store as of the revision that was
/// current when it began.
pub struct ReadTxn<'a> {
    store: &'a Store,
    snap: fjall::Snapshot,
    current: i64,
    compact: i64,
    /// Held while a walk at that revision spans several steps (lowest revision first); the
    /// compactor waits for them.
    registered: RefCell<Vec<ReaderGuard<'a>>>,
}

impl<'a> ReadTxn<'a> {
    /// Opens a transaction under the index lock the caller holds (`inner` is its guard's
    /// view): the read lock is never taken twice by one thread, which parking_lot's fair lock
    /// turns into a deadlock as soon as the applier waits for it in between.
    pub(super) fn open(store: &'a Store, inner: &Inner) -> Self {
        // Under the lock: the applier commits a chunk's batch before it lets go of the lock,
        // so the snapshot holds every value the index points to up to `current_rev`.
        let snap = store.backend.db.snapshot();
        ReadTxn {
            store,
            snap,
            current: inner.current_rev,
            compact: inner.compact_rev,
            registered: RefCell::new(Vec::new()),
        }
    }

    /// The storage snapshot the values are read from.
    pub(super) fn snapshot(&self) -> &fjall::Snapshot {
        &self.snap
    }

    pub(super) fn store(&self) -> &'a Store {
        self.store
    }

    fn registered_at_or_below(&self, at: i64) -> bool {
        self.registered.borrow().iter().any(|g| g.at() <= at)
    }
}

impl IndexRead for ReadTxn<'_> {
    fn walk(
        &self,
        range: &KeyRange,
        at: i64,
        resume: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<Option<Vec<u8>>> {
        let inner = self.store.inner.read();
        // A compaction past `at` applied since this read began may already have reached the
        // index, unless this reader holds it off.
        if at < inner.compact_rev && !self.registered_at_or_below(at) {
            return Err(Error::Compacted);
        }
        let next = inner.index.walk(range, at, resume, READ_STEP_KEYS, f);
        if next.is_some() && !self.registered_at_or_below(at) {
            // Still under the lock, so the compactor cannot slip in between the steps.
            self.registered
                .borrow_mut()
                .push(self.store.readers.register(at));
        }
        Ok(next)
    }

    fn fetch(&self, rev: Revision) -> Result<Option<KeyValue>> {
        fetch(&self.snap, &self.store.backend.kv, rev)
    }
}

impl KvRead for ReadTxn<'_> {
    fn current_rev(&self) -> i64 {
        self.current
    }

    fn compact_rev(&self) -> i64 {
        self.compact
    }

    fn read_rev(&self) -> i64 {
        self.current
    }
}

/// One live key found by a walk: its metadata when the index knows it (the key's newest
/// value), or only where the value is stored.
enum Hit {
    Known(Vec<u8>, Revision, Latest),
    Stored(Revision),
}

/// etcd's `executeRange`: select, filter, sort, limit. `current` is the revision the reader
/// sees as latest; values are read a walk step at a time, and only those the answer needs.
pub(super) fn eval_range(
    src: &(impl IndexRead + ?Sized),
    current: i64,
    compact: i64,
    req: &RangeRequest,
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
    if at < compact {
        return Err(Error::Compacted);
    }
    let range = KeyRange::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // etcd reads everything only when an order or a filter is given; a sort target with no
    // order sorts (ascending) just what the limit let through, as etcd does.
    let fetch_all = order != SortOrder::None || filtered;
    let sort_order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let fetch_n = if req.count_only {
        0
    } else if limit > 0 && !fetch_all {
        limit + 1
    } else {
        usize::MAX
    };
    // Values are read when the answer carries them or the order depends on them.
    let need_value =
        !req.keys_only || (sort_order != SortOrder::None && target == SortTarget::Value);
    let mut count = 0usize;
    let mut taken = 0usize;
    let mut hits: Vec<Hit> = Vec::new();
    let mut kvs: Vec<KeyValue> = Vec::new();
    let mut resume: Option<Vec<u8>> = None;
    loop {
        let next = src.walk(&range, at, resume.as_deref(), &mut |k, rev, latest| {
            count += 1;
            if taken < fetch_n {
                taken += 1;
                hits.push(match latest {
                    Some(l) if !need_value => Hit::Known(k.to_vec(), rev, l),
                    _ => Hit::Stored(rev),
                });
            }
        })?;
        for hit in hits.drain(..) {
            match hit {
                Hit::Known(key, rev, l) => kvs.push(KeyValue {
                    key,
                    create_revision: l.create_revision,
                    mod_revision: rev.main,
                    version: l.version,
                    value: Vec::new(),
                    lease: l.lease,
                }),
                Hit::Stored(rev) => kvs.extend(src.fetch(rev)?),
            }
        }
        match next {
            Some(k) => resume = Some(k),
            None => break,
        }
    }
    let mut res = RangeResult {
        count: count as i64,
        rev: current,
        ..Default::default()
    };
    if req.count_only {
        return Ok(res);
    }
    if filtered {
        kvs.retain(|kv| {
            (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
        });
    }
    if sort_order != SortOrder::None
        && !(sort_order == SortOrder::Ascend && target == SortTarget::Key)
    {
        let cmp = |a: &KeyValue, b: &KeyValue| match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable, so ties stay in key order either way.
        if sort_order == SortOrder::Descend {
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
