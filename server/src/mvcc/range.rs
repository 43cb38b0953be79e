//! Key ranges with etcd's conventions (`key`, `range_end`): an empty end means the single key,
//! `"\0"` means every key from `key` on, anything else is the half-open interval `[key, end)`.

use std::ops::Bound;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RangeEnd {
    /// Only `start` itself.
    Single,
    /// Every key `>= start`.
    Open,
    /// Keys in `[start, end)`; may be empty when `end <= start`.
    Before(Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Open,
            e => RangeEnd::Before(e.to_vec()),
        };
        KeyRange {
            start: key.to_vec(),
            end,
        }
    }

    pub fn single(key: &[u8]) -> Self {
        Self::new(key, &[])
    }

    /// True when no key can fall in the range (`range_end <= key`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, RangeEnd::Before(e) if e.as_slice() <= self.start.as_slice())
    }

    pub fn is_single(&self) -> bool {
        self.end == RangeEnd::Single
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Open => key >= self.start.as_slice(),
            RangeEnd::Before(e) => key >= self.start.as_slice() && key < e.as_slice(),
        }
    }

    /// The range as `BTreeMap` range bounds.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        let start = Bound::Included(self.start.as_slice());
        match &self.end {
            RangeEnd::Single => (start, Bound::Included(self.start.as_slice())),
            RangeEnd::Open => (start, Bound::Unbounded),
            RangeEnd::Before(e) => (start, Bound::Excluded(e.as_slice())),
        }
    }

    /// True when the two ranges share at least one key.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        // [a1, a2) and [b1, b2) overlap iff a1 < b2 and b1 < a2 (with open/single ends adjusted).
        let lt_end = |k: &[u8], r: &KeyRange| match &r.end {
            RangeEnd::Single => k <= r.start.as_slice(),
            RangeEnd::Open => true,
            RangeEnd::Before(e) => k < e.as_slice(),
        };
        lt_end(&self.start, other) && lt_end(&other.start, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rules() {
        let r = KeyRange::new(b"a", b"");
        assert!(r.contains(b"a") && !r.contains(b"ab"));
        let r = KeyRange::new(b"a", b"\0");
        assert!(r.contains(b"zzz") && !r.contains(b"A"));
        let r = KeyRange::new(b"a", b"c");
        assert!(r.contains(b"b") && !r.contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(KeyRange::new(b"a", b"c").overlaps(&KeyRange::single(b"b")));
        assert!(!KeyRange::new(b"a", b"c").overlaps(&KeyRange::single(b"c")));
        assert!(KeyRange::single(b"x").overlaps(&KeyRange::new(b"a", b"\0")));
        assert!(KeyRange::new(b"a", b"\0").overlaps(&KeyRange::new(b"b", b"\0")));
    }
}
