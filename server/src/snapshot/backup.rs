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

use super::ingest::Record;
use super::source::{Chunker, StateView};
use super::{parse_header, record_header, RECORD_HEADER};
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

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
    let mut reader = Reader::open(path)?;
    while let Some((tag, key, value)) = reader.next_record()? {
        each(tag, key, value)?;
    }
    reader.finish(check_hash)
}

/// A backup file read in order: its header at [`Reader::open`], its records one at a time,
/// then its padding and digest at [`Reader::finish`]. Each part's structure is checked as it
/// is read; the digest covers the whole file, so a caller acts on the records only once
/// `finish` said the file is whole, or writes them where it can throw them away.
pub struct Reader {
    path: PathBuf,
    input: std::io::Take<BufReader<std::fs::File>>,
    sha: Sha256,
    header: BackupHeader,
    header_len: u64,
    /// Bytes of the file before its digest.
    content: u64,
    /// Records read, and their bytes.
    records: u64,
    bytes: u64,
    /// CRC-32 (IEEE 802.3, as Go's `crc32.ChecksumIEEE` and etcdutl's status hash) of the
    /// records.
    crc: crc32fast::Hasher,
}

impl Reader {
    /// Opens the file and reads its preamble and header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let total_size = file.metadata().map_err(|e| bad(path, e))?.len();
        let content = total_size
            .checked_sub(DIGEST as u64)
            .filter(|c| *c >= PREAMBLE as u64)
            .ok_or_else(|| bad(path, "truncated: too short to be a pgraft snapshot"))?;
        let mut r = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(64 * 1024, file).take(content),
            sha: Sha256::new(),
            header: BackupHeader::default(),
            header_len: 0,
            content,
            records: 0,
            bytes: 0,
            crc: crc32fast::Hasher::new(),
        };
        let mut pre = [0u8; PREAMBLE];
        r.read_exact(&mut pre, "its header")?;
        if &pre[..8] != MAGIC {
            return Err(r.bad(
                "not a pgraft snapshot (bad magic; etcd's bbolt snapshots cannot be restored into pgraft)",
            ));
        }
        let version = u32::from_be_bytes([pre[8], pre[9], pre[10], pre[11]]);
        if version != VERSION {
            return Err(r.bad(format!(
                "format version {version}, this pgraftd reads version {VERSION}"
            )));
        }
        let hlen = u32::from_be_bytes([pre[12], pre[13], pre[14], pre[15]]);
        if hlen > MAX_HEADER {
            return Err(r.bad(format!("header of {hlen} bytes is over the limit")));
        }
        let mut hbuf = vec![0u8; hlen as usize];
        r.read_exact(&mut hbuf, "its header")?;
        r.header =
            prost::Message::decode(hbuf.as_slice()).map_err(|e| r.bad(format!("header: {e}")))?;
        r.header_len = u64::from(hlen);
        let expected = content_len(r.header_len, r.header.records_bytes)
            .ok_or_else(|| r.bad("header gives an impossible length"))?;
        if expected != content {
            return Err(r.bad(format!(
                "truncated or padded: {total_size} bytes, {} expected",
                expected + DIGEST as u64
            )));
        }
        Ok(r)
    }

    /// The next record (tag, key, value), or None after the last one the header counts.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.records == self.header.records {
            return Ok(None);
        }
        let mut rh = [0u8; RECORD_HEADER];
        self.read_exact(&mut rh, "a record")?;
        let (tag, klen, vlen) = parse_header(&rh).map_err(|e| self.bad(e))?;
        self.bytes += (RECORD_HEADER as u64) + u64::from(klen) + u64::from(vlen);
        if self.bytes > self.header.records_bytes {
            return Err(self.bad("records overrun the length the header gives"));
        }
        let mut key = vec![0u8; klen as usize];
        let mut value = vec![0u8; vlen as usize];
        self.read_exact(&mut key, "a record")?;
        self.read_exact(&mut value, "a record")?;
        self.crc.update(&[tag]);
        self.crc.update(&key);
        self.crc.update(&value);
        self.records += 1;
        Ok(Some((tag, key, value)))
    }

    /// After the last record: checks the padding and (unless `check_hash` is false) the
    /// trailing SHA-256, and sums the file up.
    pub fn finish(mut self, check_hash: bool) -> Result<Summary> {
        while self.next_record()?.is_some() {}
        if self.bytes != self.header.records_bytes {
            return Err(self.bad("records end before the length the header gives"));
        }
        let padding = self.content - PREAMBLE as u64 - self.header_len - self.bytes;
        let mut padding = vec![0u8; padding as usize];
        self.read_exact(&mut padding, "its padding")?;
        if padding.iter().any(|b| *b != 0) {
            return Err(self.bad("padding after the records is not zeros"));
        }
        let digest = self.read_digest()?;
        if check_hash {
            self.check_digest(&digest)?;
        }
        Ok(Summary {
            revision: self.header.current_rev,
            total_key: self.header.records,
            hash: self.crc.finalize(),
            header: self.header,
            total_size: self.content,
            hash_checked: check_hash,
        })
    }

    /// After a record the caller could not take (out of order, say): reads the rest of the
    /// file raw and checks the digest, so that a damaged file is reported as damaged (its
    /// first symptom may be a key out of order) rather than as badly made. Ok when the digest
    /// matches: the caller's own error stands then.
    pub fn check_rest(mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .input
                .read(&mut buf)
                .map_err(|e| self.bad(format!("reading: {e}")))?;
            if n == 0 {
                break;
            }
            self.sha.update(&buf[..n]);
        }
        let digest = self.read_digest()?;
        self.check_digest(&digest)
    }

    /// The trailing SHA-256, after the content.
    fn read_digest(&mut self) -> Result<[u8; DIGEST]> {
        let mut digest = [0u8; DIGEST];
        self.input
            .get_mut()
            .read_exact(&mut digest)
            .map_err(|_| self.bad("truncated: no SHA-256 at its end"))?;
        Ok(digest)
    }

    /// Compares the digest with the SHA-256 of everything read before it.
    fn check_digest(&mut self, digest: &[u8; DIGEST]) -> Result<()> {
        let computed = self.sha.finalize_reset();
        if computed.as_slice() != digest {
            return Err(self.bad(format!(
                "SHA-256 mismatch: the file says {}, its content hashes to {} (corrupted; \
                 --skip-hash-check restores it anyway)",
                hex(digest),
                hex(&computed)
            )));
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.input
            .read_exact(buf)
            .map_err(|_| bad(&self.path, format!("truncated in {what}")))?;
        self.sha.update(&*buf);
        Ok(())
    }

    fn bad(&self, what: impl std::fmt::Display) -> Error {
        bad(&self.path, what)
    }
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

#[cfg(test)]
mod tests {
    /// The status hash is CRC-32 (IEEE 802.3), as Go's `crc32.ChecksumIEEE` and etcdutl's.
    #[test]
    fn crc32_of_known_input() {
        let mut c = crc32fast::Hasher::new();
        c.update(b"123456789");
        assert_eq!(c.finalize(), 0xCBF4_3926);
    }
}
