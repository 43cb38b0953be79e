//! The in-memory key index (etcd's `treeIndex`): for each user key, the revisions at which it was
//! put or deleted, in order. It answers "which revision holds key K as of revision R" without
//! touching disk, and decides what compaction may drop.

use super::{KeyRange, Revision};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Change {
    rev: Revision,
    tombstone: bool,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Vec<u8>, Vec<Change>>,
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

    pub fn put(&mut self, key: &[u8], rev: Revision) {
        self.push(key, rev, false);
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        self.push(key, rev, true);
    }

    fn push(&mut self, key: &[u8], rev: Revision, tombstone: bool) {
        let changes = match self.keys.get_mut(key) {
            Some(c) => c,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        debug_assert!(changes.last().is_none_or(|c| c.rev < rev));
        changes.push(Change { rev, tombstone });
    }

    /// The revision holding the live value of `key` as of main revision `at`.
    pub fn get(&self, key: &[u8], at: i64) -> Option<Revision> {
        self.keys.get(key).and_then(|c| live_at(c, at))
    }

    /// Live keys in `range` as of revision `at`, in key order, with the revision holding each.
    pub fn range<'a>(
        &'a self,
        range: &'a KeyRange,
        at: i64,
    ) -> impl Iterator<Item = (&'a [u8], Revision)> + 'a {
        let it: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<Change>)>> = if range.is_empty() {
            Box::new(std::iter::empty())
        } else {
            Box::new(self.keys.range::<[u8], _>(range.bounds()))
        };
        it.filter_map(move |(k, c)| live_at(c, at).map(|r| (k.as_slice(), r)))
    }

    /// Drops history older than `at` (keeping, per key, the newest revision at or below it), and
    /// returns the revisions whose stored values may be deleted.
    pub fn compact(&mut self, at: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        self.keys.retain(|_, changes| {
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

    #[test]
    fn history_and_compaction() {
        let mut ix = KeyIndex::new();
        ix.put(b"a", Revision::new(2, 0));
        ix.put(b"a", Revision::new(3, 0));
        ix.tombstone(b"a", Revision::new(4, 0));
        ix.put(b"a", Revision::new(5, 0));
        ix.put(b"b", Revision::new(5, 1));
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
