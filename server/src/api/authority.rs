//! Accepts the HTTP/2 `:authority` etcdctl 3.4 sends for per-endpoint calls. Given an endpoint
//! written as a URL (`http://host:port`, which `endpoint status --cluster` always uses), that
//! etcdctl puts the whole URL in `:authority`; grpc-go servers ignore it, but our HTTP/2 server
//! refuses the request as malformed. This wrapper sits between the socket and the HTTP/2
//! server. A client uses one `:authority` for a whole connection, so only the first request
//! header block of each HTTP/2 connection is decoded (HPACK): if its `:authority` has no scheme,
//! the connection is passed through untouched from then on (as HTTP/1.1 connections are from the
//! start); if it has one, every header block of that connection is re-encoded with the scheme
//! removed.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames we emit stay within HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which is also the
/// largest frame the server accepts: a frame is buffered whole only up to this size.
const MAX_FRAME: usize = 16384;
/// A header block larger than this is refused (as the HTTP/2 server would).
const MAX_BLOCK: usize = 1024 * 1024;

enum Mode {
    /// Waiting for enough bytes to tell HTTP/2 from HTTP/1.1.
    Sniffing,
    /// Bytes go through untouched (HTTP/1.1, or HTTP/2 with a plain `:authority`).
    Passthrough,
    /// HTTP/2: following frames until the first header block decides.
    Http2,
}

/// A header block being collected (HEADERS + CONTINUATION frames).
struct PendingBlock {
    stream_id: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    raw_frames: Vec<u8>,
    fragment: Vec<u8>,
}

pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from the socket, not yet examined.
    input: BytesMut,
    /// Bytes ready for the HTTP/2 server.
    output: BytesMut,
    decoder: loona_hpack::Decoder<'static>,
    /// Set once blocks are re-encoded: from then on every block is.
    encoder: Option<loona_hpack::Encoder<'static>>,
    pending: Option<PendingBlock>,
    preface_seen: bool,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Sniffing,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: loona_hpack::Decoder::new(),
            encoder: None,
            pending: None,
            preface_seen: false,
        }
    }

    /// Moves whatever can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return Ok(());
                }
                Mode::Sniffing => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        self.mode = Mode::Http2;
                    } else {
                        return Ok(());
                    }
                }
                Mode::Http2 => {
                    if !self.preface_seen {
                        let p = self.input.split_to(PREFACE.len());
                        self.output.extend_from_slice(&p);
                        self.preface_seen = true;
                    }
                    if self.input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]])
                        as usize;
                    if len > MAX_FRAME {
                        // More than the server's SETTINGS_MAX_FRAME_SIZE (hyper's default, the
                        // same 16 KiB): it refuses the connection. Hand everything over now
                        // instead of buffering up to 16 MiB for a frame it will refuse.
                        if let Some(p) = self.pending.take() {
                            self.output.extend_from_slice(&p.raw_frames);
                        }
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame = self.input.split_to(FRAME_HEADER + len);
                    self.frame(&frame)?;
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 && !body.is_empty() {
                    pad = body[0] as usize;
                    body = &body[1..];
                }
                let mut priority = None;
                if flags & PRIORITY != 0 && body.len() >= 5 {
                    priority = Some(body[..5].try_into().unwrap());
                    body = &body[5..];
                }
                let fragment = &body[..body.len().saturating_sub(pad)];
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags,
                    priority,
                    raw_frames: frame.to_vec(),
                    fragment: fragment.to_vec(),
                });
                if flags & END_HEADERS != 0 {
                    return self.finish_block();
                }
                Ok(())
            }
            CONTINUATION if self.pending.is_some() => {
                let p = self.pending.as_mut().unwrap();
                p.raw_frames.extend_from_slice(frame);
                p.fragment.extend_from_slice(payload);
                if p.fragment.len() > MAX_BLOCK {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "header block too large",
                    ));
                }
                if flags & END_HEADERS != 0 {
                    return self.finish_block();
                }
                Ok(())
            }
            _ => {
                self.output.extend_from_slice(frame);
                Ok(())
            }
        }
    }

    fn finish_block(&mut self) -> io::Result<()> {
        let p = self.pending.take().unwrap();
        let headers = match self.decoder.decode(&p.fragment) {
            Ok(h) => h,
            // Let the HTTP/2 server see (and reject) what it was sent.
            Err(_) => {
                self.output.extend_from_slice(&p.raw_frames);
                return Ok(());
            }
        };
        let needs_fix = headers
            .iter()
            .any(|(n, v)| n == b":authority" && strip_scheme(v).is_some());
        if self.encoder.is_none() && !needs_fix {
            // The usual case: nothing to fix on this connection, ever.
            self.output.extend_from_slice(&p.raw_frames);
            self.mode = Mode::Passthrough;
            return Ok(());
        }
        let mut block = Vec::new();
        if self.encoder.is_none() {
            // The server's decoder holds the client's table: empty it, so it matches our
            // fresh encoder from here on.
            block.extend(size_update(0));
            block.extend(size_update(4096));
            self.encoder = Some(loona_hpack::Encoder::new());
        }
        let fixed: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(n, v)| {
                let v = if n == b":authority" {
                    strip_scheme(&v).map(<[u8]>::to_vec).unwrap_or(v)
                } else {
                    v
                };
                (n, v)
            })
            .collect();
        let enc = self.encoder.as_mut().unwrap();
        block.extend(enc.encode(fixed.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))));
        self.emit_block(p.stream_id, p.flags & END_STREAM, p.priority, &block);
        Ok(())
    }

    fn emit_block(
        &mut self,
        stream_id: u32,
        end_stream: u8,
        priority: Option<[u8; 5]>,
        block: &[u8],
    ) {
        let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = end_stream | if priority.is_some() { PRIORITY } else { 0 };
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut payload = Vec::with_capacity(first.len() + 5);
        if let Some(pr) = priority {
            payload.extend_from_slice(&pr);
        }
        payload.extend_from_slice(first);
        self.write_frame(HEADERS, flags, stream_id, &payload);
        while !rest.is_empty() {
            let (chunk, r) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = r;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.write_frame(CONTINUATION, flags, stream_id, chunk);
        }
    }

    fn write_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.output.extend_from_slice(&len.to_be_bytes()[1..]);
        self.output.extend_from_slice(&[kind, flags]);
        self.output.extend_from_slice(&stream_id.to_be_bytes());
        self.output.extend_from_slice(payload);
    }
}

/// `host:port` from `scheme://host:port`, if the value has a scheme.
fn strip_scheme(v: &[u8]) -> Option<&[u8]> {
    let pos = v.windows(3).position(|w| w == b"://")?;
    Some(&v[pos + 3..])
}

/// An HPACK dynamic table size update instruction.
fn size_update(size: usize) -> Vec<u8> {
    let mut b = loona_hpack::encoder::encode_integer(size, 5);
    b[0] |= 0x20;
    b
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.output.is_empty()
                && this.input.is_empty()
                && matches!(this.mode, Mode::Passthrough)
            {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // EOF: hand over whatever is left as it is.
                        let rest = this.input.split();
                        if rest.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.output.extend_from_slice(&rest);
                        continue;
                    }
                    this.input.extend_from_slice(rb.filled());
                    this.process()?;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_stripped() {
        assert_eq!(
            strip_scheme(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(strip_scheme(b"127.0.0.1:2379"), None);
        assert_eq!(size_update(0), vec![0x20]);
    }

    /// A frame header announcing more than the server accepts (up to 16 MiB) is not waited
    /// for: the bytes go on to the server, which refuses them, and nothing stays buffered.
    #[tokio::test]
    async fn an_oversized_frame_is_handed_on_not_buffered() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (sock, _) = l.accept().await.unwrap();
        let mut fix = AuthorityFix::new(sock);
        fix.input.extend_from_slice(PREFACE);
        // A DATA frame of 0xffffff bytes on stream 1, and the start of its payload.
        fix.input
            .extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1]);
        fix.input.extend_from_slice(&[7; 100]);
        fix.process().unwrap();
        assert!(fix.input.is_empty(), "{} bytes held", fix.input.len());
        assert_eq!(fix.output.len(), PREFACE.len() + FRAME_HEADER + 100);
        // What follows passes through as it comes.
        fix.input.extend_from_slice(&[7; 50]);
        fix.process().unwrap();
        assert!(fix.input.is_empty());
    }
}
