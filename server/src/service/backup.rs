//! etcd's `Maintenance.Snapshot`: a backup of the whole state ([`crate::snapshot::backup`]),
//! taken from an O(1) storage snapshot and streamed by a blocking task through a small bounded
//! channel, so neither writes nor the raft thread wait on it and memory stays at a few chunks
//! whatever the state's size.

use super::EtcdServer;
use crate::error::Result;
use crate::snapshot::backup::{self, Piece};
use crate::snapshot::source::StateView;
use etcd_proto::etcdserverpb::SnapshotResponse;
use tokio_stream::wrappers::ReceiverStream;

/// Bytes per message (etcd sends 32 KiB).
const BACKUP_CHUNK: usize = 64 * 1024;
/// Messages queued ahead of a slow client.
const QUEUED: usize = 4;
/// A client that takes no message for this long is given up: the storage snapshot it holds
/// keeps fjall from dropping old data.
const STALLED: std::time::Duration = std::time::Duration::from_secs(60);

impl EtcdServer {
    /// Streams a backup of the applied state as of now: file bytes with the bytes remaining,
    /// then a last message holding the SHA-256 of them all.
    pub fn snapshot(&self) -> Result<ReceiverStream<Result<SnapshotResponse>>> {
        let view = StateView::take(&self.backend)?;
        let (cluster_id, member_id) = (self.cluster_id(), self.member_id());
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUED);
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            let mut total = 0u64;
            let written = backup::write(&view, cluster_id, member_id, BACKUP_CHUNK, |piece| {
                let (blob, remaining_bytes) = match piece {
                    Piece::Data { blob, remaining } => (blob, remaining),
                    Piece::Digest(sha) => (sha, 0),
                };
                total += blob.len() as u64;
                // No header, as etcd 3.4 and 3.5 send none on this stream.
                let resp = SnapshotResponse {
                    remaining_bytes,
                    blob,
                    ..Default::default()
                };
                runtime.block_on(tx.send_timeout(Ok(resp), STALLED)).is_ok()
            });
            match written {
                Ok(()) => tracing::info!(
                    bytes = total,
                    revision = view.descriptor.current_rev,
                    took_ms = start.elapsed().as_millis() as u64,
                    "sent a snapshot to a client"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot to a client not completed");
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}
