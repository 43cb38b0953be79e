//! The leader's side: raft asks for a snapshot on its own thread, where only O(1) work may run.
//! [`SnapshotSource::capture`] takes a fjall storage snapshot (a sequence number) and reads the
//! applied index and revisions from it; the state itself is read later, by the sender, from
//! that storage snapshot ([`Captured::stream`]), in chunks of bounded size.
//!
//! The newest capture stays in a slot so that raft can reuse it for other members while it is
//! recent enough (as etcd reuses its last snapshot); it is dropped when a newer one replaces it
//! or once the log compaction passed it (raft can no longer use it; held, it would keep fjall
//! from dropping old data). A sender holds its own reference until it is done.

use super::{record_header, Descriptor, TAGS};
use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use fjall::Readable;
use parking_lot::Mutex;
use raft::eraftpb::{Snapshot, SnapshotMetadata};
use sha1::{Digest, Sha1};
use std::sync::Arc;

/// One captured state: a storage snapshot and the raft metadata that matches it.
pub struct Captured {
    backend: Backend,
    view: fjall::Snapshot,
    pub descriptor: Descriptor,
    pub metadata: SnapshotMetadata,
}

/// The slot of the newest capture, shared by raft's storage and the transport.
#[derive(Default)]
pub struct SnapshotSource {
    slot: Mutex<Option<Arc<Captured>>>,
}

impl SnapshotSource {
    /// The capture in the slot, if it reflects at least `min_index`.
    pub fn reusable(&self, min_index: u64) -> Option<Arc<Captured>> {
        self.slot
            .lock()
            .as_ref()
            .filter(|c| c.descriptor.index >= min_index)
            .cloned()
    }

    /// The capture a snapshot message with this descriptor was made from, while in the slot.
    pub fn get(&self, descriptor: &Descriptor) -> Option<Arc<Captured>> {
        self.slot
            .lock()
            .as_ref()
            .filter(|c| c.descriptor == *descriptor)
            .cloned()
    }

    /// Captures the applied state now: must run where no apply interleaves (the raft loop),
    /// so that `metadata` (term, conf state) describes the applied index read from the view.
    /// `metadata` gets the index and returns the rest.
    pub fn capture(
        &self,
        backend: &Backend,
        metadata: impl FnOnce(u64) -> Result<SnapshotMetadata>,
    ) -> Result<Arc<Captured>> {
        let view = backend.db.snapshot();
        let meta_i64 = |key: &str| -> Result<Option<i64>> {
            match view.get(&backend.meta, key)? {
                Some(v) => Ok(Some(i64::from_be_bytes(
                    v.as_ref().try_into().map_err(Error::internal)?,
                ))),
                None => Ok(None),
            }
        };
        let descriptor = Descriptor {
            index: meta_i64(meta_key::APPLIED_INDEX)?.unwrap_or(0) as u64,
            current_rev: meta_i64(meta_key::CURRENT_REV)?.unwrap_or(1),
            compact_rev: meta_i64(meta_key::COMPACT_REV)?.unwrap_or(-1),
            ..Default::default()
        };
        let captured = Arc::new(Captured {
            metadata: metadata(descriptor.index)?,
            backend: backend.clone(),
            view,
            descriptor,
        });
        *self.slot.lock() = Some(captured.clone());
        Ok(captured)
    }

    /// The log was compacted through `index`: a capture older than that is of no more use.
    pub fn compacted(&self, index: u64) {
        let mut slot = self.slot.lock();
        if slot.as_ref().is_some_and(|c| c.descriptor.index < index) {
            *slot = None;
        }
    }
}

/// Totals of a streamed state: bytes and their SHA-1.
pub struct Streamed {
    pub length: u64,
    pub sha1: Vec<u8>,
}

impl Captured {
    /// The raft snapshot to hand to raft: the metadata and the descriptor.
    pub fn raft_snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            data: prost::Message::encode_to_vec(&self.descriptor).into(),
            ..Default::default()
        };
        snap.set_metadata(self.metadata.clone());
        snap
    }

    /// Reads the captured state as records and hands them to `emit` in pieces of exactly
    /// `chunk` bytes (the last one shorter), stopping early when `emit` returns false. Blocking
    /// (fjall reads): run it off the raft thread and off async workers. Holds one chunk.
    pub fn stream(&self, chunk: usize, emit: impl FnMut(Vec<u8>) -> bool) -> Result<Streamed> {
        let mut out = Chunker {
            buf: Vec::with_capacity(chunk),
            chunk,
            emit,
            length: 0,
            sha1: Sha1::new(),
            open: true,
        };
        for tag in TAGS {
            let ks = super::keyspace(&self.backend, tag).expect("known tag");
            for item in self.view.iter(ks) {
                let (k, v) = item.into_inner()?;
                out.push(&record_header(tag, &k, &v));
                out.push(&k);
                out.push(&v);
                if !out.open {
                    return Err(Error::Internal("snapshot stream closed".into()));
                }
            }
        }
        out.flush();
        if !out.open {
            return Err(Error::Internal("snapshot stream closed".into()));
        }
        Ok(Streamed {
            length: out.length,
            sha1: out.sha1.finalize().to_vec(),
        })
    }
}

/// Cuts a byte stream into chunks of a fixed size.
struct Chunker<F> {
    buf: Vec<u8>,
    chunk: usize,
    emit: F,
    length: u64,
    sha1: Sha1,
    /// False once `emit` refused a chunk.
    open: bool,
}

impl<F: FnMut(Vec<u8>) -> bool> Chunker<F> {
    fn push(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        self.sha1.update(bytes);
        while !bytes.is_empty() && self.open {
            let n = (self.chunk - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == self.chunk {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() && self.open {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
            self.open = (self.emit)(full);
        }
    }
}
