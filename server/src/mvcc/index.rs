//! The in-memory key index (etcd's `treeIndex`): for each user key, the revisions at which it was
//! put or deleted, in order. It answers "which revision holds key K as of revision R" without
//! touching disk, and decides what compaction may drop. For the newest value of a key it also
//! keeps what a put needs to know about the value it replaces (create revision, version,
//! lease; etcd's keyIndex generations), so a put reads no stored value.

use super::{KeyRange, Revision};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    rev: Revision,
    tombstone: bool,
}

#[derive(Debug, Default)]
struct History {
    changes: Vec<Change>,
    /// The newest change's value, when it is a put.
    latest: Option<Latest>,
}

/// The live value of a key: where it is stored and what a put over it carries on or drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub rev: Revision,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, History>,
}

impl KeyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with any history (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records a put of `key`: `latest` describes the new value (its `rev` included).
    pub fn put(&mut self, key: &[u8], latest: Latest) {
        self.push(key, latest.rev, Some(latest));
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        self.push(key, rev, None);
    }

    fn push(&mut self, key: &[u8], rev: Revision, latest: Option<Latest>) {
        let change = Change {
            rev,
            tombstone: latest.is_none(),
        };
        match self.keys.get_mut(key) {
            Some(h) => {
                debug_assert!(h.changes.last().is_none_or(|c| c.rev < rev));
                h.changes.push(change);
                h.latest = latest;
            }
            None => {
                self.keys.insert(
                    key.to_vec(),
                    History {
                        changes: vec![change],
                        latest,
                    },
                );
            }
        }
    }

    /// The newest value of `key`, if it is live.
    pub fn latest(&self, key: &[u8]) -> Option<Latest> {
        self.keys.get(key).and_then(|h| h.latest)
    }

    /// The revision holding the live value of `key` as of main revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        self.keys.get(key).and_then(|h| live_at(&h.changes, at))
    }

    /// Live keys in `range` as of revision `at`, in key order, with the revision holding each.
    pub fn range<'a>(
        &'a self,
        range: &'a KeyRange,
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], Revision)> + 'a {
        let it: Box<dyn Iterator<Item = (&Vec<u8>, &History)>> = if range.is_empty() {
            Box::new(std::iter::empty())
        } else {
            Box::new(self.keys.range::<[u8], _>(range.bounds()))
        };
        it.filter_map(move |(k, h)| live_at(&h.changes, at).map(|r| (k.as_slice(), r)))
    }

    /// Drops history older than `at` (keeping, per key, the newest revision at or below it), and
    /// returns the revisions whose stored values may be deleted.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, h| {
            let changes = &mut h.changes;
            let n = changes.partition_point(|c| c.rev.main <= at);
            if n == 0 {
                return true;
            }
            let keep_from = {
                let last = changes[n - 1];
                // A delete exactly at `at` stays so that a watch from `at` still sees it.
                if last.tombstone && last.rev.main < at {
                    n
                } else {
                    n - 1
                }
            };
            dropped.extend(changes.drain(..keep_from).map(|c| c.rev));
            !changes.is_empty()
        });
        dropped
    }
}

fn live_at(changes: &[Change], at: i64) -> Option<Revision> {
    let n = changes.partition_point(|c| c.rev.main <= at);
    let last = changes.get(n.checked_sub(1)?)?;
    (!last.tombstone).then_some(last.rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ix: &mut KeyIndex, key: &[u8], rev: Revision) {
        ix.put(
            key,
            Latest {
                rev,
                create_revision: rev.main,
                version: 1,
                lease: 0,
            },
        );
    }

    #[test]
    fn history_and_compaction() {
        let mut ix = KeyIndex::new();
        put(&mut ix, b"a", Revision::new(2, 0));
        put(&mut ix, b"a", Revision::new(3, 0));
        ix.tombstone(b"a", Revision::new(4, 0));
        assert_eq!(ix.latest(b"a"), None);
        put(&mut ix, b"a", Revision::new(5, 0));
        put(&mut ix, b"b", Revision::new(5, 1));
        assert_eq!(ix.latest(b"a").map(|l| l.rev), Some(Revision::new(5, 0)));
        assert_eq!(ix.get(b"a", 1), None);
        assert_eq!(ix.get(b"a", 3), Some(Revision::new(3, 0)));
        assert_eq!(ix.get(b"a", 4), None);
        assert_eq!(ix.get(b"a", 9), Some(Revision::new(5, 0)));
        let all = KeyRange::new(b"\0", b"\0");
        assert_eq!(ix.range(&all, 5).count(), 2);
        assert_eq!(ix.range(&all, 4).count(), 0);
        let dropped = ix.compact(4);
        assert_eq!(dropped, vec![Revision::new(2, 0), Revision::new(3, 0)]);
        assert_eq!(ix.get(b"a", 4), None);
        assert_eq!(ix.get(b"a", 5), Some(Revision::new(5, 0)));
        let dropped = ix.compact(5);
        assert_eq!(dropped, vec![Revision::new(4, 0)]);
    }
}
