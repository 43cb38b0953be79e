//! Watched key ranges, found by a key they hold (etcd's `watcherGroup`: a map of single keys
//! beside an interval tree of ranges). Finding every range that holds a key takes one hash
//! lookup and one descent of the tree, whatever the number of ranges watched; comparing the key
//! with each range cost every event time in proportion to them, and on the applier's thread,
//! which routes every revision, 10,000 range watchers doubled a put's latency.
//!
//! Used twice: hub-wide by the router (which streams watch a key) and in each stream (which of
//! its watchers). Each distinct range has one entry, holding a `V` (the streams, or the
//! watchers, of that range).
//!
//! The ranges (prefixes, `--from-key`, intervals) are kept in a treap: a binary search tree
//! ordered by range, balanced by random priorities, each node knowing the furthest end in its
//! subtree, so that a search skips every subtree whose ranges all end at or before the key.

use crate::mvcc::range::RangeEnd;
use crate::mvcc::KeyRange;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

pub struct KeyIndex<V> {
    keys: HashMap<Vec<u8>, V>,
    ranges: Treap<V>,
}

impl<V> Default for KeyIndex<V> {
    fn default() -> Self {
        KeyIndex {
            keys: HashMap::new(),
            ranges: Treap::default(),
        }
    }
}

impl<V: Default> KeyIndex<V> {
    /// The entry of `range`, added (empty) if there was none.
    pub fn entry(&mut self, range: &KeyRange) -> &mut V {
        match &range.end {
            RangeEnd::Single => self.keys.entry(range.start.clone()).or_default(),
            end => self.ranges.entry(&range.start, end),
        }
    }
}

impl<V> KeyIndex<V> {
    pub fn get_mut(&mut self, range: &KeyRange) -> Option<&mut V> {
        match &range.end {
            RangeEnd::Single => self.keys.get_mut(&range.start),
            end => self.ranges.get_mut(&range.start, end),
        }
    }

    pub fn remove(&mut self, range: &KeyRange) -> Option<V> {
        match &range.end {
            RangeEnd::Single => self.keys.remove(&range.start),
            end => self.ranges.remove(&range.start, end),
        }
    }

    /// Lets `f` take something out of the entry of `range`, if any; the entry goes once `f`
    /// says it is left empty.
    pub fn release(&mut self, range: &KeyRange, f: impl FnOnce(&mut V) -> bool) {
        if self.get_mut(range).is_some_and(f) {
            self.remove(range);
        }
    }

    /// Calls `f` with the entry of every range that holds `key`.
    pub fn holding(&self, key: &[u8], mut f: impl FnMut(&V)) {
        if let Some(v) = self.keys.get(key) {
            f(v);
        }
        Treap::holding(&self.ranges.root, key, &mut f);
    }

    /// How many distinct keys and ranges have an entry.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        fn count<V>(link: &Link<V>) -> usize {
            link.as_ref()
                .map_or(0, |n| 1 + count(&n.left) + count(&n.right))
        }
        self.keys.len() + count(&self.ranges.root)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a range ends: before a key, or never (`--from-key`). `Before` sorts first, as every
/// bounded end comes before the end of the key space.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Before(Arc<[u8]>),
    Open,
}

impl End {
    fn of(end: &RangeEnd) -> End {
        match end {
            RangeEnd::Before(e) => End::Before(e.as_slice().into()),
            // `Single` never reaches the tree (single keys are hashed).
            RangeEnd::Open | RangeEnd::Single => End::Open,
        }
    }

    /// Whether the range ends after `key`.
    fn after(&self, key: &[u8]) -> bool {
        match self {
            End::Before(e) => key < &e[..],
            End::Open => true,
        }
    }

    /// Compared with a range's end as a request gives it (never `Single` here).
    fn cmp_to(&self, end: &RangeEnd) -> Ordering {
        match (self, end) {
            (End::Before(a), RangeEnd::Before(b)) => a[..].cmp(b.as_slice()),
            (End::Before(_), _) => Ordering::Less,
            (End::Open, RangeEnd::Before(_)) => Ordering::Greater,
            (End::Open, _) => Ordering::Equal,
        }
    }
}

type Link<V> = Option<Box<Node<V>>>;

struct Node<V> {
    start: Vec<u8>,
    end: End,
    /// The furthest end of this node's subtree.
    reach: End,
    priority: u64,
    value: V,
    left: Link<V>,
    right: Link<V>,
}

impl<V> Node<V> {
    /// This node's range against `[start, end)`, ranges ordered by start, then end.
    fn cmp_to(&self, start: &[u8], end: &RangeEnd) -> Ordering {
        self.start
            .as_slice()
            .cmp(start)
            .then_with(|| self.end.cmp_to(end))
    }

    /// Recomputes `reach` from the children.
    fn update(&mut self) {
        let mut reach = &self.end;
        for child in [&self.left, &self.right].into_iter().flatten() {
            reach = reach.max(&child.reach);
        }
        self.reach = reach.clone();
    }
}

struct Treap<V> {
    root: Link<V>,
    /// State of the priorities' generator (splitmix64).
    seed: u64,
}

impl<V> Default for Treap<V> {
    fn default() -> Self {
        Treap {
            root: None,
            // Random, so that no client can choose ranges that line the tree up into a chain
            // (a deep recursion, and a search in time linear in the ranges).
            seed: rand::random(),
        }
    }
}

impl<V> Treap<V> {
    fn next_priority(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn get_mut(&mut self, start: &[u8], end: &RangeEnd) -> Option<&mut V> {
        let mut link = &mut self.root;
        while let Some(node) = link {
            match node.cmp_to(start, end) {
                Ordering::Equal => return Some(&mut node.value),
                Ordering::Less => link = &mut node.right,
                Ordering::Greater => link = &mut node.left,
            }
        }
        None
    }

    fn entry(&mut self, start: &[u8], end: &RangeEnd) -> &mut V
    where
        V: Default,
    {
        if self.get_mut(start, end).is_none() {
            let node = Box::new(Node {
                start: start.to_vec(),
                end: End::of(end),
                reach: End::of(end),
                priority: self.next_priority(),
                value: V::default(),
                left: None,
                right: None,
            });
            let (less, rest) = split(self.root.take(), &|n| n.cmp_to(start, end).is_lt());
            self.root = merge(merge(less, Some(node)), rest);
        }
        self.get_mut(start, end).expect("just added")
    }

    fn remove(&mut self, start: &[u8], end: &RangeEnd) -> Option<V> {
        let (less, rest) = split(self.root.take(), &|n| n.cmp_to(start, end).is_lt());
        let (found, greater) = split(rest, &|n| n.cmp_to(start, end).is_le());
        self.root = merge(less, greater);
        found.map(|n| n.value)
    }

    /// Calls `f` with the value of every range under `link` that holds `key`.
    fn holding(link: &Link<V>, key: &[u8], f: &mut impl FnMut(&V)) {
        let Some(node) = link else { return };
        if !node.reach.after(key) {
            return; // every range here ends at or before the key
        }
        Self::holding(&node.left, key, f);
        if node.start.as_slice() <= key {
            if node.end.after(key) {
                f(&node.value);
            }
            // Ranges to the right start at or after this one: some may still hold the key.
            Self::holding(&node.right, key, f);
        }
    }
}

/// Splits the tree at `link` in two: the nodes for which `goes_left` holds (a prefix of the
/// order), and the rest.
fn split<V>(link: Link<V>, goes_left: &impl Fn(&Node<V>) -> bool) -> (Link<V>, Link<V>) {
    let Some(mut node) = link else {
        return (None, None);
    };
    if goes_left(&node) {
        let (l, r) = split(node.right.take(), goes_left);
        node.right = l;
        node.update();
        (Some(node), r)
    } else {
        let (l, r) = split(node.left.take(), goes_left);
        node.left = r;
        node.update();
        (l, Some(node))
    }
}

/// Joins two trees, every node of `a` before every node of `b`.
fn merge<V>(a: Link<V>, b: Link<V>) -> Link<V> {
    match (a, b) {
        (None, t) | (t, None) => t,
        (Some(mut a), Some(mut b)) => {
            if a.priority >= b.priority {
                a.right = merge(a.right.take(), Some(b));
                a.update();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.update();
                Some(b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::prefix_end;

    fn found(ix: &KeyIndex<Vec<u32>>, key: &[u8]) -> Vec<u32> {
        let mut ids = Vec::new();
        ix.holding(key, |v| ids.extend(v));
        ids.sort_unstable();
        ids
    }

    /// Checks the tree's order, heap and reach, and returns its depth.
    fn check<V>(link: &Link<V>) -> usize {
        let Some(n) = link else { return 0 };
        let mut reach = n.end.clone();
        for c in [&n.left, &n.right].into_iter().flatten() {
            assert!(c.priority <= n.priority, "heap order");
            reach = reach.max(c.reach.clone());
        }
        assert!(reach == n.reach, "reach");
        if let Some(l) = &n.left {
            assert!((&l.start, &l.end) < (&n.start, &n.end), "order");
        }
        if let Some(r) = &n.right {
            assert!((&r.start, &r.end) > (&n.start, &n.end), "order");
        }
        1 + check(&n.left).max(check(&n.right))
    }

    #[test]
    fn keys_prefixes_and_ranges_are_found() {
        let mut ix: KeyIndex<Vec<u32>> = KeyIndex::default();
        ix.entry(&KeyRange::single(b"a")).push(1);
        ix.entry(&KeyRange::new(b"a", &prefix_end(b"a"))).push(2);
        ix.entry(&KeyRange::new(b"a", b"\0")).push(3); // --from-key
        ix.entry(&KeyRange::new(b"b", b"c")).push(4);
        ix.entry(&KeyRange::new(b"b", b"c")).push(5); // the same range: the same entry
        ix.entry(&KeyRange::new(b"ab", b"b\0")).push(6);
        assert_eq!(ix.len(), 5);
        assert_eq!(found(&ix, b"a"), [1, 2, 3]);
        assert_eq!(found(&ix, b"abc"), [2, 3, 6]);
        assert_eq!(found(&ix, b"b"), [3, 4, 5, 6]);
        assert_eq!(found(&ix, b"c"), [3]);
        assert_eq!(found(&ix, b"0"), Vec::<u32>::new());
        ix.get_mut(&KeyRange::new(b"b", b"c"))
            .unwrap()
            .retain(|i| *i != 4);
        assert_eq!(ix.remove(&KeyRange::new(b"a", b"\0")), Some(vec![3]));
        assert_eq!(ix.remove(&KeyRange::new(b"a", b"\0")), None);
        assert_eq!(found(&ix, b"b"), [5, 6]);
        assert_eq!(ix.len(), 4);
    }

    /// Ranges added in order (a client's choice) still make a shallow tree: the priorities are
    /// random, not the same for every tree.
    #[test]
    fn ranges_added_in_order_make_a_shallow_tree() {
        let mut ix: KeyIndex<Vec<u32>> = KeyIndex::default();
        for i in 0..50_000u32 {
            let k = format!("{i:06}").into_bytes();
            ix.entry(&KeyRange::new(&k, &[k.as_slice(), &[0]].concat()))
                .push(i);
        }
        let depth = check(&ix.ranges.root);
        assert!(depth < 80, "depth {depth} for 50,000 ranges");
        assert_eq!(found(&ix, b"012345"), [12345]);
    }

    /// Thousands of ranges added and removed at random: every search finds what comparing the
    /// key with each range finds, and the tree stays ordered, a heap, and shallow.
    #[test]
    fn searches_agree_with_a_scan_through_adds_and_removes() {
        let mut rng = 12345u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let key = |i: u64| format!("{i:04}").into_bytes();
        let mut ix: KeyIndex<Vec<u32>> = KeyIndex::default();
        let mut all: Vec<(KeyRange, u32)> = Vec::new();
        for id in 0..6000u32 {
            if all.len() > 100 && next(3) == 0 {
                let (range, id) = all.swap_remove(next(all.len() as u64) as usize);
                let v = ix.get_mut(&range).unwrap();
                v.retain(|i| *i != id);
                if v.is_empty() {
                    ix.remove(&range);
                }
                continue;
            }
            let a = next(10_000);
            let range = match next(4) {
                0 => KeyRange::single(&key(a)),
                1 => KeyRange::new(&key(a), b"\0"),
                2 => KeyRange::new(&key(a)[..2], &prefix_end(&key(a)[..2])),
                _ => KeyRange::new(&key(a), &key(a + next(300) + 1)),
            };
            ix.entry(&range).push(id);
            all.push((range, id));
        }
        let depth = check(&ix.ranges.root);
        assert!(depth < 60, "depth {depth} for {} entries", ix.len());
        for _ in 0..2000 {
            let k = key(next(10_100));
            let mut want: Vec<u32> = all
                .iter()
                .filter(|(r, _)| r.contains(&k))
                .map(|(_, id)| *id)
                .collect();
            want.sort_unstable();
            assert_eq!(found(&ix, &k), want);
        }
        for (range, _) in std::mem::take(&mut all) {
            ix.remove(&range);
        }
        assert!(ix.is_empty() && ix.ranges.root.is_none());
    }
}
