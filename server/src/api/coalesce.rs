//! Coalesced writes on a client connection: the answers that complete in one burst leave in
//! one write, as etcd's gRPC server (grpc-go's writer) sends what is queued at once.
//!
//! Why: the raft loop completes proposals in batches, and every answer's task wakes its
//! connection's task, which tokio runs at once (the worker's LIFO slot): each answer was a
//! write of its own, and on loopback a write also pays for the peer's receive. Here the first
//! flush of a burst is held until the worker has run its other ready tasks (tokio's
//! `yield_now`, whose wakeup the scheduler defers until it runs out of ready work, or to its
//! driver poll every 61 tasks under load); the answers written meanwhile join the held bytes,
//! and all leave in one write. A hold also ends once [`MAX_HELD`] bytes wait, or when the task
//! is polled again [`MAX_HOLD`] after it began. A connection that never has two answers in one
//! burst (one request at a time) soon stops holding ([`MAX_SKIP`]). Reads pass through.

use futures::task::AtomicWaker;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before they are written without waiting for the hold to end; a write this large
/// with nothing held goes straight through (a large Range answer, a snapshot).
const MAX_HELD: usize = 64 * 1024;
/// Longest a flush is held while the worker has other tasks to run.
const MAX_HOLD: Duration = Duration::from_micros(200);
/// A hold that nothing joined (a connection with one request at a time, as a single client's)
/// only delays its answer: after one, the next flushes are written at once, 1, 2, 4, ... up to
/// this many after consecutive misses, and holding starts again with the first hold that gains.
const MAX_SKIP: u32 = 64;

pub struct CoalescedWrites<T> {
    inner: T,
    /// Bytes accepted and not yet written to `inner`; the first `written` are written.
    held: Vec<u8>,
    written: usize,
    /// The hold of the current burst, once its first flush came: since when, and how many
    /// bytes were waiting then.
    hold: Option<(Arc<Hold>, Instant, usize)>,
    /// Flushes still to write at once, and how many the last miss set (see [`MAX_SKIP`]).
    skipping: u32,
    skip: u32,
}

/// Ends a hold: woken by the scheduler once the worker ran out of other ready tasks.
#[derive(Default)]
struct Hold {
    over: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Hold {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.over.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T) -> Self {
        CoalescedWrites {
            inner,
            held: Vec::new(),
            written: 0,
            hold: None,
            skipping: 0,
            skip: 0,
        }
    }

    fn waiting(&self) -> usize {
        self.held.len() - self.written
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes every held byte to `inner`.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let rest = &self.held[self.written..];
            match ready!(Pin::new(&mut self.inner).poll_write(cx, rest))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.written += n,
            }
        }
        self.held.clear();
        if self.held.capacity() > MAX_HELD {
            self.held = Vec::new();
        }
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Whether this burst's flush must still wait; the first ask starts the hold.
    fn holding(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.hold {
            None => {
                let hold = Arc::new(Hold::default());
                hold.task.register(cx.waker());
                // Hands the hold's waker to the scheduler's deferred list (`yield_now` polled
                // once); outside a runtime it is woken at once.
                let waker = Waker::from(hold.clone());
                let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
                let over = hold.over.load(Ordering::Acquire);
                self.hold = Some((hold, Instant::now(), self.waiting()));
                !over
            }
            Some((hold, since, _)) => {
                hold.task.register(cx.waker());
                !hold.over.load(Ordering::Acquire)
                    && since.elapsed() < MAX_HOLD
                    && self.waiting() < MAX_HELD
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Takes the bytes into the held ones, first writing those out if too many wait; a write
    /// of [`MAX_HELD`] bytes or more with nothing held goes straight through.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.waiting() == 0 && len >= MAX_HELD {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.waiting() >= MAX_HELD {
            ready!(self.write_out(cx))?;
        }
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.waiting() > 0 {
            if self.hold.is_none() && self.skipping > 0 {
                self.skipping -= 1;
            } else if self.holding(cx) {
                return Poll::Pending;
            } else if let Some((_, _, at_start)) = self.hold.take() {
                if self.waiting() > at_start {
                    self.skip = 0;
                } else {
                    self.skip = (self.skip * 2).clamp(1, MAX_SKIP);
                    self.skipping = self.skip;
                }
            }
            ready!(self.write_out(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.write_out(cx))?;
        self.hold = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for CoalescedWrites<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records every write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Three answers completing one after another on one worker, each waking the connection's
    /// writer (which tokio then runs at once, as it runs an HTTP/2 connection task), leave in
    /// one write. Without the wrapper: three writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn answers_completed_together_leave_in_one_write() {
        // Spawned from the worker, so that every task below is queued on it before any runs.
        let writes = tokio::spawn(async {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            // The connection task: writes what arrives, then flushes, as h2 does.
            let writer = tokio::spawn(async move {
                let mut w = CoalescedWrites::new(Recorder::default());
                let mut open = true;
                poll_fn(|cx| {
                    while open {
                        match rx.poll_recv(cx) {
                            Poll::Ready(Some(b)) => {
                                let n = ready!(Pin::new(&mut w).poll_write(cx, &b)).unwrap();
                                assert_eq!(n, b.len());
                            }
                            Poll::Ready(None) => open = false,
                            Poll::Pending => break,
                        }
                    }
                    ready!(Pin::new(&mut w).poll_flush(cx)).unwrap();
                    if open {
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await;
                w.inner.writes
            });
            for i in 0..3u8 {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(vec![i; 10]).unwrap() });
            }
            drop(tx);
            writer.await.unwrap()
        })
        .await
        .unwrap();
        let mut pieces: Vec<Vec<u8>> = writes.concat().chunks(10).map(<[u8]>::to_vec).collect();
        pieces.sort();
        assert_eq!(pieces, vec![vec![0; 10], vec![1; 10], vec![2; 10]]);
        assert_eq!(writes.len(), 1, "{} writes", writes.len());
    }

    /// A hold that nothing joined (one answer at a time) is not repeated on the next flush,
    /// which writes at once.
    #[tokio::test]
    async fn a_hold_that_gained_nothing_is_skipped_next() {
        let mut w = CoalescedWrites::new(Recorder::default());
        w.write_all(b"one").await.unwrap();
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut w).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(polls, 2, "the first flush is held once");
        w.write_all(b"two").await.unwrap();
        let flushed = poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_flush(cx))).await;
        assert!(matches!(flushed, Poll::Ready(Ok(()))));
        assert_eq!(w.inner.writes, vec![b"one".to_vec(), b"two".to_vec()]);
    }

    /// Every byte arrives, in order, whatever the sizes of the writes and the flushes between
    /// them; writes of [`MAX_HELD`] bytes or more with nothing held go straight through.
    #[tokio::test]
    async fn bytes_arrive_in_order() {
        let (client, mut server) = tokio::io::duplex(16 * 1024);
        let sizes = [1, 300, MAX_HELD, 5, MAX_HELD + 7, 4096, 2 * MAX_HELD, 17];
        let sent: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| i as u8).collect();
        let data = sent.clone();
        let writer = tokio::spawn(async move {
            let mut w = CoalescedWrites::new(client);
            let mut at = 0;
            for (i, n) in sizes.into_iter().enumerate() {
                w.write_all(&data[at..at + n]).await.unwrap();
                at += n;
                if i % 2 == 1 {
                    w.flush().await.unwrap();
                }
            }
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, sent);
    }
}
