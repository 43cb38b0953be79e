//! Hashes of the MVCC state, so members can be compared (etcd's `HashByRev` and `Hash`).
//!
//! [`Store::hash_kv`] covers what a revision's reads depend on, the same on every member
//! whatever its compactor has physically dropped yet: every stored revision after the
//! compaction revision up to the one asked for, plus the revision each live key had at the
//! compaction revision (what etcd's compaction keeps). It runs on a [`ReadTxn`] (a fjall
//! snapshot, the index walked a bounded step at a time), so it holds up neither the applier
//! nor the compactor for long; run it off the async runtime.
//!
//! The digest is SHA-1 (already pgraft's snapshot checksum) cut to 32 bits, as etcd answers a
//! `uint32`; the values differ from etcd's CRC-32C over bbolt pages, which no client compares
//! across implementations.

use super::read::ReadTxn;
use super::{IndexRead, KeyRange, KvRead, Revision, Store};
use crate::error::{Error, Result};
use fjall::Readable;
use sha1::{Digest, Sha1};

/// A HashKV answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed up to.
    pub revision: i64,
    /// The compaction revision when it was hashed.
    pub compact_revision: i64,
}

/// Attempts before giving up when compactions keep overtaking a hash of the latest revision.
const ATTEMPTS: usize = 3;

fn digest(h: Sha1) -> u32 {
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

impl Store {
    /// etcd's `HashByRev`: the hash of the key space at `rev` (the current revision when
    /// `rev <= 0`). `Compacted` for a revision at or below the compaction revision,
    /// `FutureRev` past the current one.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash> {
        let mut last = Error::Compacted;
        for _ in 0..ATTEMPTS {
            let txn = self.read();
            let at = if rev <= 0 { txn.current_rev() } else { rev };
            if at > txn.current_rev() {
                return Err(Error::FutureRev);
            }
            if rev > 0 && rev <= txn.compact_rev() {
                return Err(Error::Compacted);
            }
            match hash_at(&txn, at) {
                // A compaction applied meanwhile: hash again at the new compaction point.
                Err(Error::Compacted) => last = Error::Compacted,
                other => return other,
            }
        }
        Err(last)
    }

    /// etcd's `Hash`: a hash of the whole replicated state (every stored revision, leases,
    /// members, alarms) and the revision it was taken at. Members agree on it once their
    /// compactors have caught up; `hash_kv` is the comparison that never depends on that.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let txn = self.read();
        let b = &self.backend;
        let mut h = Sha1::new();
        for (name, ks) in [
            ("kv", &b.kv),
            ("lease", &b.lease),
            ("members", &b.members),
            ("alarm", &b.alarm),
        ] {
            h.update(name.as_bytes());
            for item in txn.snapshot().iter(ks) {
                let (k, v) = item.into_inner()?;
                hash_record(&mut h, &k, &v);
            }
        }
        Ok((digest(h), txn.current_rev()))
    }
}

fn hash_record(h: &mut Sha1, k: &[u8], v: &[u8]) {
    h.update((k.len() as u32).to_be_bytes());
    h.update(k);
    h.update((v.len() as u32).to_be_bytes());
    h.update(v);
}

fn hash_at(txn: &ReadTxn<'_>, at: i64) -> Result<KvHash> {
    let compact = txn.compact_rev();
    let kv = &txn.store().backend.kv;
    let snap = txn.snapshot();
    let mut h = Sha1::new();
    h.update(b"kv");
    // What the compaction kept: each live key's revision at the compaction point.
    if compact > 0 {
        let everything = KeyRange::new(&[0], &[0]);
        let mut revs: Vec<Revision> = Vec::new();
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let next = txn.walk(&everything, compact, resume.as_deref(), &mut |_, r, _| {
                revs.push(r)
            })?;
            for r in revs.drain(..) {
                let k = r.to_bytes();
                let v = snap.get(kv, k)?.ok_or(Error::Compacted)?;
                hash_record(&mut h, &k, &v);
            }
            match next {
                Some(k) => resume = Some(k),
                None => break,
            }
        }
    }
    // Every revision after it, up to `at`.
    let lo = Revision::new(compact.saturating_add(1).max(0), 0).to_bytes();
    let hi = Revision::new(at.saturating_add(1), 0).to_bytes();
    for item in snap.range(kv, lo..hi) {
        let (k, v) = item.into_inner()?;
        hash_record(&mut h, &k, &v);
    }
    Ok(KvHash {
        hash: digest(h),
        revision: at,
        compact_revision: compact,
    })
}
