//! The responses of one watch stream waiting for its client, bounded in bytes as well as in
//! number. etcd buffers a fixed number of responses per stream (`chanBufLen`) and lets a
//! watcher that cannot send fall behind, to catch up from history later; here the stream task
//! waits when its queue is full, which has the same effect: a watcher that reads nothing holds
//! at most the queue and the batch being sent, and resumes from history when the client reads.
//!
//! Each queued response holds permits of a byte semaphore until the face takes it out; the
//! face's own buffering after that is bounded by HTTP/2 flow control (gRPC) or the HTTP/1.1
//! write buffer (gateway).

use super::response_bytes;
use etcd_proto::etcdserverpb::WatchResponse;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Responses queued per stream at most (etcd's `chanBufLen`).
pub const MAX_QUEUED: usize = 128;

/// Bytes of responses queued per stream at most. One larger response still goes out alone.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

struct Queued {
    resp: WatchResponse,
    _room: OwnedSemaphorePermit,
}

/// The stream task's side.
pub struct Outbox {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    max_bytes: usize,
}

/// The face's side: the responses, in order. Dropping it ends the stream.
pub struct Responses {
    rx: mpsc::Receiver<Queued>,
}

/// A queue of at most `max_count` responses and about `max_bytes` bytes.
pub fn channel(max_count: usize, max_bytes: usize) -> (Outbox, Responses) {
    let (tx, rx) = mpsc::channel(max_count);
    let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let outbox = Outbox {
        tx,
        room: Arc::new(Semaphore::new(max_bytes)),
        max_bytes,
    };
    (outbox, Responses { rx })
}

/// The client went away.
#[derive(Debug)]
pub struct Gone;

impl Outbox {
    /// Queues `resp`, waiting while the queue is full. A response larger than the whole
    /// budget waits until the queue is empty.
    pub async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        let cost = response_bytes(&resp).clamp(1, self.max_bytes) as u32;
        let room = tokio::select! {
            p = self.room.clone().acquire_many_owned(cost) => p.map_err(|_| Gone)?,
            _ = self.tx.closed() => return Err(Gone),
        };
        self.tx
            .send(Queued { resp, _room: room })
            .await
            .map_err(|_| Gone)
    }

    /// Resolves when the face dropped its [`Responses`].
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Bytes queued now (for tests and metrics).
    pub fn queued_bytes(&self) -> usize {
        self.max_bytes - self.room.available_permits()
    }
}

impl Stream for Responses {
    type Item = WatchResponse;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchResponse>> {
        // The permit is released here: the response leaves the queue.
        self.rx.poll_recv(cx).map(|q| q.map(|q| q.resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::mvccpb::{Event, KeyValue};
    use futures::StreamExt;

    fn resp(value_len: usize) -> WatchResponse {
        WatchResponse {
            events: vec![Event {
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    value: vec![b'v'; value_len],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A client that reads nothing holds the sender once the queued bytes reach the cap, long
    /// before the count cap; reading one response lets the next in.
    #[tokio::test]
    async fn a_full_queue_in_bytes_makes_the_sender_wait() {
        let (out, mut rx) = channel(MAX_QUEUED, 10_000);
        out.send(resp(4000)).await.unwrap();
        out.send(resp(4000)).await.unwrap();
        assert!(out.queued_bytes() > 8000 && out.queued_bytes() <= 10_000);
        let third =
            tokio::time::timeout(std::time::Duration::from_millis(50), out.send(resp(4000)));
        assert!(
            third.await.is_err(),
            "third response queued past the byte cap"
        );
        assert_eq!(
            rx.next().await.unwrap().events[0]
                .kv
                .as_ref()
                .unwrap()
                .value
                .len(),
            4000
        );
        out.send(resp(4000)).await.unwrap();
        // Larger than the whole cap: goes out alone once the queue is empty.
        let (out, mut rx) = channel(MAX_QUEUED, 1000);
        let big = tokio::spawn(async move {
            out.send(resp(10)).await.unwrap();
            out.send(resp(5000)).await.unwrap();
        });
        assert_eq!(
            rx.next().await.unwrap().events[0]
                .kv
                .as_ref()
                .unwrap()
                .value
                .len(),
            10
        );
        assert_eq!(
            rx.next().await.unwrap().events[0]
                .kv
                .as_ref()
                .unwrap()
                .value
                .len(),
            5000
        );
        big.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_receiver_ends_a_waiting_sender() {
        let (out, rx) = channel(MAX_QUEUED, 1000);
        out.send(resp(900)).await.unwrap();
        let waiting = tokio::spawn(async move { out.send(resp(900)).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiting.await.unwrap().is_err());
    }
}
