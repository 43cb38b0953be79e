//! Backups (etcd's `Maintenance.Snapshot`, `etcdctl snapshot save`): a consistent copy of the
//! whole replicated state in one file, written from a [`StateView`] (an O(1) fjall snapshot,
//! so writes go on while it streams) in chunks of bounded size, and read back by
//! `pgraftd snapshot status|restore` ([`super::restore`]).
//!
//! etcd's backup is its bbolt file; pgraft's cannot be byte-compatible, so the format is ours:
//!
//! | offset     | bytes | what                                                            |
//! |------------|-------|-----------------------------------------------------------------|
//! | 0          | 8     | magic `PGRAFTBK`                                                |
//! | 8          | 4     | format version, big-endian (this code writes and reads [`VERSION`]) |
//! | 12         | 4     | header length `h`, big-endian (at most [`MAX_HEADER`])          |
//! | 16         | h     | [`BackupHeader`], protobuf: revisions, applied index, IDs, and the count and bytes of the records |
//! | 16 + h     | ...   | records, as raft snapshots carry them (see [`super`]): tag 1 kv (every revision kept since the last compaction), 2 leases, 3 members, 4 alarms, 5 auth |
//! | ...        | < 512 | zeros, up to a multiple of 512 bytes                            |
//! | end - 32   | 32    | SHA-256 of every byte before it                                 |
//!
//! The trailing SHA-256 is what etcd's server appends to its snapshot stream (the last message
//! carries only the digest, `remaining_bytes` 0), so `etcdctl snapshot save` writes exactly
//! this file. etcdctl (and etcdutl) find the digest by the file's size: bbolt files are whole
//! pages, so a size of 32 more than a multiple of 512 means a digest follows; hence the
//! padding. The header's counts let a reader refuse a truncated file even without the digest
//! (`--skip-hash-check`).
//!
//! The server reads the view twice: once to count (so `remaining_bytes` counts down to 0 as
//! etcd's does, and the header can carry the counts), once to send.

use super::source::{Chunker, StateView};
use super::{parse_header, record_header, RECORD_HEADER};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"PGRAFTBK";
/// The format version this code writes and the only one it reads.
pub const VERSION: u32 = 1;
/// Largest header accepted.
pub const MAX_HEADER: u32 = 64 * 1024;
/// Bytes before the header: magic, version, header length.
const PREAMBLE: usize = 16;
/// Bytes of the trailing digest.
pub const DIGEST: usize = 32;
/// The content before the digest is a whole number of these.
const ALIGN: u64 = 512;

/// Bytes of the content (all but the digest) of a backup whose header is `header_len` bytes.
fn content_len(header_len: u64, records_bytes: u64) -> Option<u64> {
    (PREAMBLE as u64 + header_len)
        .checked_add(records_bytes)?
        .checked_next_multiple_of(ALIGN)
}

/// What a backup says about itself, before its records.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupHeader {
    /// The store's revision when the backup was taken.
    #[prost(int64, tag = "1")]
    pub current_rev: i64,
    /// The revision the store was compacted at (-1: never).
    #[prost(int64, tag = "2")]
    pub compact_rev: i64,
    /// The raft index applied on the source member.
    #[prost(uint64, tag = "3")]
    pub applied_index: u64,
    #[prost(uint64, tag = "4")]
    pub cluster_id: u64,
    /// The member that wrote it.
    #[prost(uint64, tag = "5")]
    pub member_id: u64,
    /// Records that follow, and their bytes.
    #[prost(uint64, tag = "6")]
    pub records: u64,
    #[prost(uint64, tag = "7")]
    pub records_bytes: u64,
    /// The pgraft version that wrote it.
    #[prost(string, tag = "8")]
    pub writer: String,
}

/// One message of a backup stream.
pub enum Piece {
    /// File bytes, and how many remain after them (the digest not counted).
    Data { blob: Vec<u8>, remaining: u64 },
    /// The SHA-256 of all the data, which ends the stream.
    Digest(Vec<u8>),
}

/// Writes the backup of `view` as pieces of at most `chunk` bytes, stopping early when `emit`
/// returns false. Blocking (fjall reads): run it off the raft thread and async workers.
pub fn write(
    view: &StateView,
    cluster_id: u64,
    member_id: u64,
    chunk: usize,
    mut emit: impl FnMut(Piece) -> bool,
) -> Result<()> {
    let (mut records, mut records_bytes) = (0u64, 0u64);
    for record in view.records() {
        let (_, k, v) = record?;
        records += 1;
        records_bytes += (RECORD_HEADER + k.len() + v.len()) as u64;
    }
    let d = &view.descriptor;
    let header = prost::Message::encode_to_vec(&BackupHeader {
        current_rev: d.current_rev,
        compact_rev: d.compact_rev,
        applied_index: d.index,
        cluster_id,
        member_id,
        records,
        records_bytes,
        writer: crate::config::PGRAFT_VERSION.to_string(),
    });
    let total = content_len(header.len() as u64, records_bytes)
        .ok_or_else(|| Error::internal("backup too large"))?;
    let mut sha = Sha256::new();
    let mut sent = 0u64;
    let mut out = Chunker::new(
        chunk.max(1),
        |blob: Vec<u8>| {
            sent += blob.len() as u64;
            emit(Piece::Data {
                blob,
                remaining: total.saturating_sub(sent),
            })
        },
        |b: &[u8]| sha.update(b),
    );
    out.push(MAGIC);
    out.push(&VERSION.to_be_bytes());
    out.push(&(header.len() as u32).to_be_bytes());
    out.push(&header);
    view.write_records(&mut out)?;
    let padding = total.saturating_sub(out.length);
    out.push(&vec![0u8; padding.min(ALIGN) as usize]);
    out.finish()?;
    if out.length != total {
        // The same view read twice cannot differ; refuse rather than send a wrong count.
        return Err(Error::Internal(format!(
            "pgraft: backup of {} bytes, {total} counted",
            out.length
        )));
    }
    drop(out);
    if emit(Piece::Digest(sha.finalize().to_vec())) {
        Ok(())
    } else {
        Err(Error::Internal("snapshot stream closed".into()))
    }
}

/// What reading a whole backup file found (`pgraftd snapshot status`).
#[derive(Debug, Clone)]
pub struct Summary {
    pub header: BackupHeader,
    /// CRC-32 (IEEE) of the records: equal for backups of the same state.
    pub hash: u32,
    /// The store's revision.
    pub revision: i64,
    /// Records: kv revisions, leases, members and auth entries.
    pub total_key: u64,
    /// Bytes of the file before its digest (etcdutl reports the size of the bbolt database,
    /// which `etcdctl snapshot save` writes with the digest after it).
    pub total_size: u64,
    /// Whether the trailing SHA-256 was checked (and matched).
    pub hash_checked: bool,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("snapshot file {}: {what}", path.display()))
}

/// Reads a backup file through, checking its structure and (unless `check_hash` is false) its
/// trailing SHA-256, handing each record (tag, key, value) to `each`. The file is read in one
/// pass with bounded memory (one record at a time).
pub fn read(
    path: &Path,
    check_hash: bool,
    mut each: impl FnMut(u8, Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<Summary> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let total_size = file.metadata().map_err(|e| bad(path, e))?.len();
    let too_short = || bad(path, "truncated: too short to be a pgraft snapshot");
    let content = total_size
        .checked_sub(DIGEST as u64)
        .filter(|c| *c >= PREAMBLE as u64)
        .ok_or_else(too_short)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let mut sha = Sha256::new();
    let mut input = (&mut reader).take(content);
    let mut read_exact = |buf: &mut [u8], what: &str| -> Result<()> {
        input
            .read_exact(buf)
            .map_err(|_| bad(path, format!("truncated in {what}")))?;
        sha.update(&*buf);
        Ok(())
    };
    let mut pre = [0u8; PREAMBLE];
    read_exact(&mut pre, "its header")?;
    if &pre[..8] != MAGIC {
        return Err(bad(
            path,
            "not a pgraft snapshot (bad magic; etcd's bbolt snapshots cannot be restored into pgraft)",
        ));
    }
    let version = u32::from_be_bytes([pre[8], pre[9], pre[10], pre[11]]);
    if version != VERSION {
        return Err(bad(
            path,
            format!("format version {version}, this pgraftd reads version {VERSION}"),
        ));
    }
    let hlen = u32::from_be_bytes([pre[12], pre[13], pre[14], pre[15]]);
    if hlen > MAX_HEADER {
        return Err(bad(
            path,
            format!("header of {hlen} bytes is over the limit"),
        ));
    }
    let mut hbuf = vec![0u8; hlen as usize];
    read_exact(&mut hbuf, "its header")?;
    let header: BackupHeader =
        prost::Message::decode(hbuf.as_slice()).map_err(|e| bad(path, format!("header: {e}")))?;
    let expected = content_len(u64::from(hlen), header.records_bytes)
        .ok_or_else(|| bad(path, "header gives an impossible length"))?;
    if expected != content {
        return Err(bad(
            path,
            format!(
                "truncated or padded: {total_size} bytes, {} expected",
                expected + DIGEST as u64
            ),
        ));
    }
    let mut crc = Crc32::default();
    let mut bytes = 0u64;
    for _ in 0..header.records {
        let mut rh = [0u8; RECORD_HEADER];
        read_exact(&mut rh, "a record")?;
        let (tag, klen, vlen) = parse_header(&rh).map_err(|e| bad(path, e))?;
        bytes += (RECORD_HEADER as u64) + u64::from(klen) + u64::from(vlen);
        if bytes > header.records_bytes {
            return Err(bad(path, "records overrun the length the header gives"));
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        read_exact(&mut key, "a record")?;
        read_exact(&mut value, "a record")?;
        crc.update(&[tag]);
        crc.update(&key);
        crc.update(&value);
        each(tag, key, value)?;
    }
    if bytes != header.records_bytes {
        return Err(bad(path, "records end before the length the header gives"));
    }
    let mut padding = vec![0u8; (content - PREAMBLE as u64 - u64::from(hlen) - bytes) as usize];
    read_exact(&mut padding, "its padding")?;
    if padding.iter().any(|b| *b != 0) {
        return Err(bad(path, "padding after the records is not zeros"));
    }
    let mut digest = [0u8; DIGEST];
    reader
        .read_exact(&mut digest)
        .map_err(|_| bad(path, "truncated: no SHA-256 at its end"))?;
    let computed = sha.finalize();
    if check_hash && computed.as_slice() != digest {
        return Err(bad(
            path,
            format!(
                "SHA-256 mismatch: the file says {}, its content hashes to {} (corrupted; \
                 --skip-hash-check restores it anyway)",
                hex(&digest),
                hex(&computed)
            ),
        ));
    }
    Ok(Summary {
        revision: header.current_rev,
        total_key: header.records,
        hash: crc.finish(),
        header,
        total_size: content,
        hash_checked: check_hash,
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Encodes a record (tests write files by hand with it).
pub fn encode_record(tag: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut r = record_header(tag, key, value).to_vec();
    r.extend_from_slice(key);
    r.extend_from_slice(value);
    r
}

/// CRC-32 (IEEE 802.3, as Go's `crc32.ChecksumIEEE` and etcdutl's status hash).
#[derive(Default)]
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

impl Crc32 {
    fn update(&mut self, data: &[u8]) {
        let mut c = !self.0;
        for &b in data {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = !c;
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_input() {
        let mut c = Crc32::default();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
    }
}
