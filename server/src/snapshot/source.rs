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

/// A point-in-time view of the applied state: a fjall storage snapshot (O(1) to take), and
/// the applied index and revisions read from it. The applier writes the applied index in the
/// same batch as an entry's effects, so the view is always of whole entries, whichever thread
/// takes it. Raft snapshots and backups ([`super::backup`]) both stream from one.
pub struct StateView {
    backend: Backend,
    view: fjall::Snapshot,
    pub descriptor: Descriptor,
}

/// One captured state: a storage snapshot and the raft metadata that matches it.
pub struct Captured {
    state: StateView,
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

    /// Captures the applied state now: must run where no conf change is applied meanwhile (the
    /// raft loop, which applies them), so that `metadata` (term, conf state) describes the
    /// applied index read from the view.
    /// `metadata` gets the index and returns the rest.
    pub fn capture(
        &self,
        backend: &Backend,
        metadata: impl FnOnce(u64) -> Result<SnapshotMetadata>,
    ) -> Result<Arc<Captured>> {
        let state = StateView::take(backend)?;
        let captured = Arc::new(Captured {
            metadata: metadata(state.descriptor.index)?,
            descriptor: state.descriptor.clone(),
            state,
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

    /// Streams the captured state: see [`StateView::stream`].
    pub fn stream(&self, chunk: usize, emit: impl FnMut(Vec<u8>) -> bool) -> Result<Streamed> {
        self.state.stream(chunk, emit)
    }
}

impl StateView {
    /// Takes a view of the applied state now.
    pub fn take(backend: &Backend) -> Result<Self> {
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
        Ok(StateView {
            backend: backend.clone(),
            view,
            descriptor,
        })
    }

    /// Every record of the view, in stream order (by tag, then key): (tag, key, value).
    /// Blocking (fjall reads).
    pub fn records(&self) -> impl Iterator<Item = Result<(u8, fjall::Slice, fjall::Slice)>> + '_ {
        TAGS.into_iter().flat_map(move |tag| {
            let ks = super::keyspace(&self.backend, tag).expect("known tag");
            self.view.iter(ks).map(move |item| {
                let (k, v) = item.into_inner()?;
                Ok((tag, k, v))
            })
        })
    }

    /// Reads the captured state as records and hands them to `emit` in pieces of exactly
    /// `chunk` bytes (the last one shorter), stopping early when `emit` returns false. Blocking
    /// (fjall reads): run it off the raft thread and off async workers. Holds one chunk.
    pub fn stream(&self, chunk: usize, emit: impl FnMut(Vec<u8>) -> bool) -> Result<Streamed> {
        let mut sha1 = Sha1::new();
        let mut out = Chunker::new(chunk, emit, |b: &[u8]| sha1.update(b));
        self.write_records(&mut out)?;
        out.finish()?;
        let length = out.length;
        drop(out);
        Ok(Streamed {
            length,
            sha1: sha1.finalize().to_vec(),
        })
    }

    /// Pushes every record of the view into `out`.
    pub(crate) fn write_records<F, T>(&self, out: &mut Chunker<F, T>) -> Result<()>
    where
        F: FnMut(Vec<u8>) -> bool,
        T: FnMut(&[u8]),
    {
        for record in self.records() {
            let (tag, k, v) = record?;
            out.push(&record_header(tag, &k, &v));
            out.push(&k);
            out.push(&v);
            out.check_open()?;
        }
        Ok(())
    }
}

/// Cuts a byte stream into chunks of a fixed size, showing every byte to `tap` (a checksum)
/// on its way.
pub(crate) struct Chunker<F, T> {
    buf: Vec<u8>,
    chunk: usize,
    emit: F,
    tap: T,
    /// Bytes pushed so far.
    pub length: u64,
    /// False once `emit` refused a chunk.
    open: bool,
}

impl<F: FnMut(Vec<u8>) -> bool, T: FnMut(&[u8])> Chunker<F, T> {
    pub fn new(chunk: usize, emit: F, tap: T) -> Self {
        Chunker {
            buf: Vec::with_capacity(chunk),
            chunk,
            emit,
            tap,
            length: 0,
            open: true,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        self.length += bytes.len() as u64;
        (self.tap)(bytes);
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

    /// An error once the receiving end refused a chunk.
    pub fn check_open(&self) -> Result<()> {
        if self.open {
            Ok(())
        } else {
            Err(Error::Internal("snapshot stream closed".into()))
        }
    }

    /// Emits the last, partial, chunk.
    pub fn finish(&mut self) -> Result<()> {
        self.flush();
        self.check_open()
    }
}
