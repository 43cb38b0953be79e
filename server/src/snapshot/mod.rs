//! Raft snapshots of the replicated state (MVCC revisions, leases, members, alarms, auth,
//! revisions), made when raft must bring a lagging or new member up to date, with memory
//! bounded by a constant on both sides whatever the state's size:
//!
//! - [`source`]: on the leader's raft thread, an O(1) capture: a fjall storage snapshot kept in
//!   a slot, and a raft `Snapshot` whose data is only a [`Descriptor`]; the transport streams
//!   the state from the storage snapshot in chunks, off the raft thread.
//! - [`receive`]: on the member catching up, the chunks go to a staging file (fsync'ed, checked
//!   by length and SHA-1) before raft hears of the snapshot.
//! - [`install`]: the staged file replaces the state, written straight into new tables
//!   ([`ingest`]), crash-safe through a durable marker that startup honours
//!   ([`install::recover`]).
//!
//! - [`backup`], [`restore`], [`cli`]: backups (etcd's `Maintenance.Snapshot`) stream from the
//!   same kind of storage snapshot into a file of their own format; `pgraftd snapshot restore`
//!   builds a new cluster's member from one, writing it through [`ingest`] as an install does.
//!
//! The state travels as a byte stream of records: keyspace tag (1 byte), key length and value
//! length (4 bytes each, big-endian), key, value.

pub mod backup;
pub mod cli;
mod ingest;
pub mod install;
pub mod receive;
pub mod restore;
pub mod source;

use crate::backend::Backend;
use crate::error::{Error, Result};
use fjall::Keyspace;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of a record's header: tag, key length, value length.
pub const RECORD_HEADER: usize = 9;
/// Largest key or value a record may carry (far above what a request can write): a record
/// claiming more is malformed.
pub const MAX_RECORD_PART: u32 = 256 * 1024 * 1024;
/// Largest key a record may carry: fjall stores keys of 1 to 65535 bytes (and panics on any
/// other), so a record outside that is malformed.
pub const MAX_RECORD_KEY: u32 = u16::MAX as u32;
/// Largest data a received chunk may carry; a chunk over it is refused.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Data per chunk the sender makes, unless lowered with [`set_chunk_bytes`].
const DEFAULT_CHUNK: usize = 1024 * 1024;
/// Staged snapshots live in this directory under the member's data directory.
const STAGING_DIR: &str = "snap";

static CHUNK_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_CHUNK);

/// Sets the data per sent chunk, for the whole process (tests lower it to send many chunks).
/// Clamped to 1 byte ..= [`MAX_CHUNK`].
pub fn set_chunk_bytes(n: usize) {
    CHUNK_BYTES.store(n.clamp(1, MAX_CHUNK), Ordering::Relaxed);
}

pub(crate) fn chunk_bytes() -> usize {
    CHUNK_BYTES.load(Ordering::Relaxed)
}

/// Counters of this process's snapshot traffic, for tests and logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub chunks_received: u64,
    /// The largest data of one received chunk, in bytes.
    pub largest_chunk_received: u64,
    pub installed: u64,
}

static CHUNKS_RECEIVED: AtomicU64 = AtomicU64::new(0);
static LARGEST_CHUNK: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicU64 = AtomicU64::new(0);

pub fn stats() -> Stats {
    Stats {
        chunks_received: CHUNKS_RECEIVED.load(Ordering::Relaxed),
        largest_chunk_received: LARGEST_CHUNK.load(Ordering::Relaxed),
        installed: INSTALLED.load(Ordering::Relaxed),
    }
}

/// What a raft snapshot's `data` holds: never the state, only where it is. The leader fills
/// the index and revisions (read from the storage snapshot); the receiver adds the staged file
/// it wrote and that file's length and SHA-1, which the installer checks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    #[prost(uint64, tag = "1")]
    pub index: u64,
    #[prost(int64, tag = "2")]
    pub current_rev: i64,
    #[prost(int64, tag = "3")]
    pub compact_rev: i64,
    #[prost(string, tag = "4")]
    pub file: String,
    #[prost(uint64, tag = "5")]
    pub length: u64,
    #[prost(bytes = "vec", tag = "6")]
    pub sha1: Vec<u8>,
}

/// Largest descriptor accepted (it holds a few numbers and a path).
const MAX_DESCRIPTOR: usize = 64 * 1024;

impl Descriptor {
    pub fn decode_from(data: &[u8]) -> Result<Self> {
        if data.len() > MAX_DESCRIPTOR {
            return Err(Error::internal("snapshot descriptor too large"));
        }
        <Self as prost::Message>::decode(data).map_err(Error::internal)
    }
}

/// The replicated keyspaces a snapshot carries, by record tag.
const TAGS: [u8; 5] = [KV_TAG, 2, 3, 4, 5];
/// The tag of the MVCC revisions' records (the kv keyspace).
const KV_TAG: u8 = 1;

fn keyspace(backend: &Backend, tag: u8) -> Option<&Keyspace> {
    match tag {
        KV_TAG => Some(&backend.kv),
        2 => Some(&backend.lease),
        3 => Some(&backend.members),
        4 => Some(&backend.alarm),
        5 => Some(&backend.auth),
        _ => None,
    }
}

/// Encodes a record's header.
fn record_header(tag: u8, key: &[u8], value: &[u8]) -> [u8; RECORD_HEADER] {
    let mut h = [0u8; RECORD_HEADER];
    h[0] = tag;
    h[1..5].copy_from_slice(&(key.len() as u32).to_be_bytes());
    h[5..9].copy_from_slice(&(value.len() as u32).to_be_bytes());
    h
}

/// Decodes and checks a record's header: (tag, key length, value length).
fn parse_header(h: &[u8; RECORD_HEADER]) -> std::result::Result<(u8, u32, u32), String> {
    let tag = h[0];
    let klen = u32::from_be_bytes(h[1..5].try_into().unwrap());
    let vlen = u32::from_be_bytes(h[5..9].try_into().unwrap());
    if !TAGS.contains(&tag) {
        return Err(format!("unknown snapshot record tag {tag}"));
    }
    if klen > MAX_RECORD_PART || vlen > MAX_RECORD_PART {
        return Err(format!(
            "snapshot record of {klen}+{vlen} bytes is over the limit"
        ));
    }
    if klen == 0 || klen > MAX_RECORD_KEY {
        return Err(format!(
            "snapshot record key of {klen} bytes (keys are 1 to {MAX_RECORD_KEY} bytes)"
        ));
    }
    Ok((tag, klen, vlen))
}

/// Deletes the staged files (whole or partial) of snapshots up to `index`: installed, or older
/// than one raft will install instead.
fn remove_staged_upto(dir: &Path, index: u64) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let staged_index = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|i| i.parse::<u64>().ok());
        if staged_index.is_some_and(|i| i <= index) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The directory staged snapshots are written to.
pub fn staging_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STAGING_DIR)
}

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod tests;
