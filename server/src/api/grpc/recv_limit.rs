//! gRPC's receive limit as etcd's grpc-go enforces it: a request message longer than
//! max-request-bytes + 512 KiB is refused with `ResourceExhausted` and
//! `grpc: received message larger than max (N vs. M)`. tonic's own limit answers `OutOfRange`
//! with other words, so this layer reads each message's length prefix as the body streams in
//! and fails the body first; tonic hands that status to the client unchanged.

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tonic::Status;

/// The gRPC message prefix: a compression flag byte and a big-endian u32 length.
const PREFIX: usize = 5;

/// Applies [`RecvLimitBody`] to every request.
#[derive(Debug, Clone, Copy)]
pub struct RecvLimitLayer(pub usize);

impl<S> tower::Layer<S> for RecvLimitLayer {
    type Service = RecvLimit<S>;

    fn layer(&self, inner: S) -> RecvLimit<S> {
        RecvLimit { inner, max: self.0 }
    }
}

#[derive(Debug, Clone)]
pub struct RecvLimit<S> {
    inner: S,
    max: usize,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RecvLimit<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if !super::metered::is_grpc(req.headers()) {
            // The JSON gateway shares the listener; its bodies are not length-prefixed.
            return self.inner.call(req);
        }
        let max = self.max;
        self.inner
            .call(req.map(|b| tonic::body::Body::new(RecvLimitBody::new(b, max))))
    }
}

/// A request body that fails as soon as a message prefix announces more than `max` bytes.
pub struct RecvLimitBody<B> {
    inner: B,
    max: usize,
    prefix: [u8; PREFIX],
    /// Bytes of the current prefix seen so far.
    have: usize,
    /// Message bytes still to pass before the next prefix.
    skip: usize,
}

impl<B> RecvLimitBody<B> {
    pub fn new(inner: B, max: usize) -> Self {
        RecvLimitBody {
            inner,
            max,
            prefix: [0; PREFIX],
            have: 0,
            skip: 0,
        }
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data.advance(n);
                continue;
            }
            let n = (PREFIX - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data.advance(n);
            if self.have == PREFIX {
                self.have = 0;
                let len =
                    u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes")) as usize;
                if len > self.max {
                    return Err(Status::resource_exhausted(format!(
                        "grpc: received message larger than max ({len} vs. {})",
                        self.max
                    )));
                }
                self.skip = len;
            }
        }
        Ok(())
    }
}

impl<B> Body for RecvLimitBody<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(f)) => f,
            other => return Poll::Ready(other),
        };
        if let Some(data) = frame.data_ref() {
            this.scan(data)?;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len as usize));
        m
    }

    #[test]
    fn prefixes_are_found_across_chunk_boundaries() {
        let mut b = RecvLimitBody::new((), 10);
        let mut data = msg(10);
        data.extend(msg(3));
        for chunk in data.chunks(2) {
            b.scan(chunk).unwrap();
        }
        let too_big = msg(11);
        b.scan(&too_big[..3]).unwrap();
        let e = b.scan(&too_big[3..]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.message(),
            "grpc: received message larger than max (11 vs. 10)"
        );
    }
}
