//! The receiving side: a snapshot stream from the leader goes to a staging file, never to
//! memory. Each chunk is checked (cluster, size cap, record structure) and written out at once;
//! the stream must end with a `done` chunk whose length and SHA-1 match what arrived. Only then
//! is the file fsync'ed and given its final name, and the raft message, its data now a
//! [`Descriptor`] naming that file, handed back to be stepped into raft.

use super::ingest::KeyOrder;
use super::{parse_header, Descriptor, MAX_CHUNK, RECORD_HEADER};
use etcd_proto::pgraftpb::SnapshotChunk;
use futures::{Stream, StreamExt};
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tonic::Status;

/// Largest header (the raft message without state) accepted.
const MAX_HEADER: usize = 1024 * 1024;
/// A stream that brings no chunk for this long is given up (its sender is gone or stuck), so
/// that it does not hold the member's one receiving slot forever.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// The next chunk; `None` at the end of the stream.
async fn next<S>(stream: &mut S) -> Result<Option<SnapshotChunk>, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    match tokio::time::timeout(CHUNK_TIMEOUT, stream.next()).await {
        Ok(c) => c.transpose(),
        Err(_) => Err(Status::deadline_exceeded("snapshot stream stalled")),
    }
}

/// Receives one snapshot stream into `dir` and returns the MsgSnapshot to step, its data the
/// staged file's descriptor. Any failure leaves no file behind.
pub async fn receive<S>(dir: &Path, cluster_id: u64, mut stream: S) -> Result<Message, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let first = next(&mut stream)
        .await?
        .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
    check_chunk(&first, cluster_id)?;
    if first.message.is_empty() || first.message.len() > MAX_HEADER {
        return Err(Status::invalid_argument(
            "snapshot stream without a valid header",
        ));
    }
    let mut m = Message::parse_from_bytes(&first.message)
        .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
    let meta = m.get_snapshot().get_metadata();
    if m.get_msg_type() != MessageType::MsgSnapshot || meta.index == 0 {
        return Err(Status::invalid_argument("not a snapshot message"));
    }
    let mut desc = Descriptor::decode_from(&m.get_snapshot().data)
        .map_err(|e| Status::invalid_argument(format!("bad snapshot descriptor: {e}")))?;
    if desc.index != meta.index {
        return Err(Status::invalid_argument(
            "snapshot descriptor does not match its metadata",
        ));
    }
    let (index, term) = (meta.index, meta.term);

    let _claim = Claim::take(dir)?;
    // Older staged files are not removed here: one may still be on its way into raft. The
    // raft loop removes a file raft refuses, an install removes its own and older ones, and a
    // start removes whatever is left.
    tokio::fs::create_dir_all(dir).await.map_err(io_err)?;
    let path = dir.join(format!("{index:020}-{term:020}.snap"));
    let mut part = Partial::create(path.with_extension("part")).await?;
    let mut check = RecordCheck::default();
    let mut sha1 = Sha1::new();
    let mut length = 0u64;
    let mut chunk = first;
    loop {
        if !chunk.data.is_empty() {
            check.feed(&chunk.data).map_err(Status::invalid_argument)?;
            sha1.update(&chunk.data);
            length += chunk.data.len() as u64;
            part.file.write_all(&chunk.data).await.map_err(io_err)?;
        }
        if chunk.done {
            if chunk.length != length || chunk.sha1 != sha1.clone().finalize().as_slice() {
                return Err(Status::data_loss(
                    "snapshot stream length or checksum mismatch",
                ));
            }
            if !check.at_boundary() {
                return Err(Status::invalid_argument(
                    "snapshot stream ends inside a record",
                ));
            }
            break;
        }
        chunk = next(&mut stream)
            .await?
            .ok_or_else(|| Status::data_loss("truncated snapshot stream"))?;
        check_chunk(&chunk, cluster_id)?;
        if !chunk.message.is_empty() {
            return Err(Status::invalid_argument("snapshot header repeated"));
        }
    }
    part.finish(&path).await?;
    tracing::info!(from = %format!("{:x}", m.from), index, bytes = length, file = %path.display(), "received snapshot");
    desc.file = path.to_string_lossy().into_owned();
    desc.length = length;
    desc.sha1 = sha1.finalize().to_vec();
    m.mut_snapshot().data = prost::Message::encode_to_vec(&desc).into();
    Ok(m)
}

/// Removes the staged file a received message names, when raft will not get it.
pub fn discard(m: &Message) {
    if let Ok(d) = Descriptor::decode_from(&m.get_snapshot().data) {
        if !d.file.is_empty() {
            let _ = std::fs::remove_file(d.file);
        }
    }
}

/// Staging directories a stream is being received into: one stream per member at a time (the
/// leader sends a member one snapshot at once), so a member stages at most one file at once.
static RECEIVING: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());

struct Claim(PathBuf);

impl Claim {
    fn take(dir: &Path) -> Result<Claim, Status> {
        let mut busy = RECEIVING.lock();
        if busy.iter().any(|d| d == dir) {
            return Err(Status::resource_exhausted(
                "a snapshot is already being received",
            ));
        }
        busy.push(dir.to_path_buf());
        Ok(Claim(dir.to_path_buf()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RECEIVING.lock().retain(|d| *d != self.0);
    }
}

fn check_chunk(c: &SnapshotChunk, cluster_id: u64) -> Result<(), Status> {
    if c.cluster_id != cluster_id {
        return Err(crate::error::Error::ClusterIdMismatch.into());
    }
    if c.data.len() > MAX_CHUNK {
        return Err(Status::resource_exhausted(format!(
            "snapshot chunk of {} bytes is over the limit of {MAX_CHUNK}",
            c.data.len()
        )));
    }
    super::CHUNKS_RECEIVED.fetch_add(1, Ordering::Relaxed);
    super::LARGEST_CHUNK.fetch_max(c.data.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn io_err(e: std::io::Error) -> Status {
    Status::internal(format!("staging snapshot: {e}"))
}

/// A staging file being written: removed when dropped before [`Partial::finish`].
struct Partial {
    path: PathBuf,
    file: tokio::fs::File,
    kept: bool,
}

impl Partial {
    async fn create(path: PathBuf) -> Result<Self, Status> {
        let file = tokio::fs::File::create(&path).await.map_err(io_err)?;
        Ok(Partial {
            path,
            file,
            kept: false,
        })
    }

    /// Makes the file durable under its final name.
    async fn finish(mut self, to: &Path) -> Result<(), Status> {
        self.file.flush().await.map_err(io_err)?;
        self.file.sync_all().await.map_err(io_err)?;
        tokio::fs::rename(&self.path, to).await.map_err(io_err)?;
        self.kept = true;
        let dir = to.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(io_err)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Follows the record structure of a byte stream without keeping it: a record header is
/// checked as soon as it is whole, and the records' order, which the install relies on (each
/// keyspace's keys in one ascending run, keyspaces by ascending tag, as the leader streams
/// them), as soon as a key is whole; values are skipped. Holds two keys at most (64 KiB each).
#[derive(Default)]
struct RecordCheck {
    header: [u8; RECORD_HEADER],
    have: usize,
    /// The current record's tag, the part of its key read so far, and how much of the key
    /// and then of the value is still to come.
    tag: u8,
    key: Vec<u8>,
    key_left: usize,
    value_left: u64,
    order: KeyOrder,
}

impl RecordCheck {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            if self.key_left > 0 {
                let n = self.key_left.min(data.len());
                self.key.extend_from_slice(&data[..n]);
                self.key_left -= n;
                data = &data[n..];
                if self.key_left == 0 {
                    // The whole key is in: it must come after the previous record's.
                    self.order.check(self.tag, &self.key)?;
                }
                continue;
            }
            if self.value_left > 0 {
                let n = self.value_left.min(data.len() as u64);
                self.value_left -= n;
                data = &data[n as usize..];
                continue;
            }
            let n = (RECORD_HEADER - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == RECORD_HEADER {
                let (tag, k, v) = parse_header(&self.header)?;
                self.tag = tag;
                self.key.clear();
                self.key_left = k as usize;
                self.value_left = u64::from(v);
                self.have = 0;
            }
        }
        Ok(())
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.key_left == 0 && self.value_left == 0
    }
}
