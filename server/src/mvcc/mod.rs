//! Multi-version key-value state, as etcd's `mvcc` package: one global revision, every effective
//! write adding exactly one; per-key create/mod revision and version; tombstones; reads at any
//! revision not yet compacted.
//!
//! Values live in fjall, keyed by revision (so history and watch replay are range scans); an
//! in-memory [`index::KeyIndex`] maps each user key to its revisions, rebuilt at startup.

mod compactor;
mod hash;
pub mod index;
pub mod range;
mod read;
pub mod store;
mod writer;

pub use hash::KvHash;
pub use index::KeyIndex;
pub use range::KeyRange;
pub use read::{IndexRead, KvRead, ReadTxn};
pub use store::{IndexLoader, RangeResult, RevEvents, Store};
pub use writer::{Deleted, Replaced, Writer};

/// A revision: `main` is the store revision of a write transaction, `sub` orders the changes
/// inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Big-endian bytes, so fjall's lexicographic order is revision order.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        b[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 16 {
            return None;
        }
        let main = u64::from_be_bytes(b[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(b[8..].try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }
}

#[cfg(test)]
mod tests;
