//! Unary gRPC calls straight over one HTTP/2 connection (the `h2` crate), for the request loops
//! of `put`, `range` and `txn-put`.
//!
//! Why not tonic's `Channel`: the tool shares the machine with the servers it measures, and a
//! tonic call passes through a tower buffer task and hyper's dispatcher task before it reaches
//! the connection. Here a request loop opens its HTTP/2 stream itself, and the connection task
//! is the only other task a call wakes. Measured at 64 clients against a 3-member pgraftd: the
//! tool's CPU per put fell from 22 µs to about half (see `bench/README.md`). Watch streams and
//! Maintenance.Status still use tonic (`conn.rs`). A broken connection is dialled again, as a
//! tonic `Channel` does.
//!
//! The wire format is gRPC's: a POST with `content-type: application/grpc` and `te: trailers`,
//! one length-prefixed message each way, the status in the trailers (or in the headers of a
//! trailers-only answer), its message percent-encoded.

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request, Uri};
use parking_lot::Mutex;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::Status;

/// One HTTP/2 connection; cheap to clone (clones share the connection). When the connection
/// breaks (the server restarted, say), the call that finds it broken fails and the connection is
/// dialled again for the calls after it, as a tonic `Channel` reconnects.
#[derive(Clone)]
pub struct UnaryConn(Arc<Shared>);

struct Shared {
    /// `host:port`, dialled and named in every request URI (`http://host:port/...`).
    authority: String,
    timeout: Duration,
    /// The connection, and how many times it was dialled again.
    send: Mutex<(u64, SendRequest<Bytes>)>,
    /// Held while dialling again, so that one caller does it for all.
    redial: tokio::sync::Mutex<()>,
}

impl UnaryConn {
    /// Dials `url` (`http://host:port`) and completes the HTTP/2 handshake within `timeout`
    /// (also the bound of each later dial).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("bad endpoint {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only http:// endpoints are supported"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url}: no host:port"))?
            .to_string();
        let send = dial(&authority, timeout)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        Ok(UnaryConn(Arc::new(Shared {
            authority,
            timeout,
            send: Mutex::new((0, send)),
            redial: tokio::sync::Mutex::new(()),
        })))
    }

    /// Calls `path` (`/etcdserverpb.KV/Put`) with `req`; the answer, or the call's gRPC status.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let (dialled, send) = self.0.send.lock().clone();
        match self.exchange(send, path, req).await {
            Err(Broken(e)) => {
                // A stream reset concerns this call only; anything else, the connection.
                if !e.is_reset() {
                    self.redial(dialled).await;
                }
                Err(Status::unavailable(e.to_string()))
            }
            Ok(answer) => answer,
        }
    }

    /// One request and its answer on `send`; `Err` when the connection itself failed.
    async fn exchange<Req: Message, Resp: Message + Default>(
        &self,
        send: SendRequest<Bytes>,
        path: &str,
        req: &Req,
    ) -> Result<Result<Resp, Status>, Broken> {
        let head = match Request::post(format!("http://{}{path}", self.0.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
        {
            Ok(head) => head,
            Err(e) => return Ok(Err(Status::internal(e.to_string()))),
        };
        let mut send = send.ready().await?;
        let (answer, mut body) = send.send_request(head, false)?;
        body.send_data(frame(req), true)?;

        let (parts, mut recv) = answer.await?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Ok(Err(Status::unknown(format!(
                "HTTP status {}",
                parts.status
            ))));
        }
        // A trailers-only answer carries the status in its headers.
        if parts.headers.contains_key("grpc-status") {
            return Ok(Err(status_of(&parts.headers)));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        Ok(match recv.trailers().await? {
            Some(t) if t.get("grpc-status").is_some_and(|v| v != "0") => Err(status_of(&t)),
            Some(t) if t.contains_key("grpc-status") => unframe(&buf),
            _ => Err(Status::internal("answer without grpc-status")),
        })
    }

    /// Dials again, unless another caller already replaced connection number `broken`. A failed
    /// dial leaves the broken connection in place: the next call fails fast and tries again.
    async fn redial(&self, broken: u64) {
        let _one = self.0.redial.lock().await;
        if self.0.send.lock().0 != broken {
            return;
        }
        if let Ok(send) = dial(&self.0.authority, self.0.timeout).await {
            *self.0.send.lock() = (broken + 1, send);
        }
    }
}

/// A failure of the HTTP/2 stream or connection (as opposed to a gRPC status in an answer).
struct Broken(h2::Error);

impl From<h2::Error> for Broken {
    fn from(e: h2::Error) -> Self {
        Broken(e)
    }
}

/// A TCP connection to `authority` with the HTTP/2 handshake done, within `timeout`; the
/// connection is driven by a task of its own until its last `SendRequest` is dropped.
async fn dial(authority: &str, timeout: Duration) -> Result<SendRequest<Bytes>, String> {
    let handshake = async {
        let tcp = TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = h2::client::handshake(Unvectored(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The connection's socket, without vectored writes. h2 writes a DATA frame of 256 bytes or
/// more to a socket with vectored writes as a separate slice, and holds at most one such slice:
/// a request loop's put (a 256-byte value) then ends the write buffer, and every request leaves
/// in a write of its own. Without vectored writes h2 copies frames of up to 1 KiB into its
/// buffer, so the requests that the loops sharing a connection send while its task is busy
/// leave together, as Go's gRPC client (etcd's `benchmark`) batches its writes.
struct Unvectored(TcpStream);

impl AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        #[cfg(test)]
        tests::WRITES.with(|w| w.set(w.get() + 1));
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
fn frame<M: Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf).expect("buffer sized to the message");
    buf.freeze()
}

/// The one message of a unary answer.
fn unframe<M: Message + Default>(buf: &[u8]) -> Result<M, Status> {
    let [0, l0, l1, l2, l3, rest @ ..] = buf else {
        return Err(Status::internal(
            "answer is not one uncompressed gRPC message",
        ));
    };
    let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]) as usize;
    if rest.len() != len {
        return Err(Status::internal(format!(
            "gRPC message of {len} bytes, {} received",
            rest.len()
        )));
    }
    M::decode(rest).map_err(|e| Status::internal(format!("decoding the answer: {e}")))
}

/// The status in `grpc-status` and `grpc-message` (tonic's own parsing, percent-decoding
/// included).
fn status_of(h: &HeaderMap) -> Status {
    Status::from_header_map(h).unwrap_or_else(|| Status::unknown("no grpc-status"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::{PutRequest, PutResponse};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::Code;

    thread_local! {
        /// Writes to connection sockets made on this thread (a test's current-thread runtime).
        pub(super) static WRITES: Cell<usize> = const { Cell::new(0) };
    }

    /// Answers one Put on an HTTP/2 stream, as a gRPC server does.
    fn answer_put(mut respond: h2::server::SendResponse<Bytes>) {
        let head = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut send = respond.send_response(head, false).unwrap();
        send.send_data(frame(&PutResponse::default()), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        send.send_trailers(trailers).unwrap();
    }

    /// A gRPC server that answers one Put per connection and then closes the connection
    /// (HTTP/2 GOAWAY); counts the connections it accepted.
    async fn one_call_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    let Some(Ok((req, respond))) = conn.accept().await else {
                        return;
                    };
                    let mut body = req.into_body();
                    while let Some(Ok(_)) = body.data().await {}
                    answer_put(respond);
                    conn.graceful_shutdown();
                    while let Some(Ok(_)) = conn.accept().await {}
                });
            }
        });
        (url, accepted)
    }

    /// Calls sent together on one connection leave in one write, also when each carries a
    /// DATA frame of 256 bytes or more (h2 ends its write buffer at each such frame on a socket
    /// with vectored writes: four writes here).
    #[tokio::test]
    async fn calls_sent_together_leave_in_one_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            // The request bodies arrive with their headers; answered without reading them.
            while let Some(Ok((_, respond))) = conn.accept().await {
                answer_put(respond);
            }
        });
        let conn = UnaryConn::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let put = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 256],
            ..Default::default()
        };
        let call = || conn.call::<_, PutResponse>("/etcdserverpb.KV/Put", &put);
        // The first call also carries the handshake's settings acknowledgement.
        call().await.unwrap();
        let before = WRITES.with(Cell::get);
        let (a, b, c, d) = tokio::join!(call(), call(), call(), call());
        for answer in [a, b, c, d] {
            answer.unwrap();
        }
        let writes = WRITES.with(Cell::get) - before;
        assert_eq!(writes, 1, "4 calls sent together took {writes} writes");
    }

    #[tokio::test]
    async fn dials_again_after_the_connection_closes() {
        let (url, accepted) = one_call_server().await;
        let conn = UnaryConn::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let put = PutRequest::default();
        conn.call::<_, PutResponse>("/etcdserverpb.KV/Put", &put)
            .await
            .unwrap();
        // The server closed that connection: a call may fail on it, after which the connection
        // is dialled again and a later call succeeds.
        let mut failed = 0;
        loop {
            match conn
                .call::<_, PutResponse>("/etcdserverpb.KV/Put", &put)
                .await
            {
                Ok(_) => break,
                Err(st) => {
                    assert_eq!(st.code(), Code::Unavailable, "{st:?}");
                    failed += 1;
                    assert!(failed < 5, "still failing: {st:?}");
                }
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn frames_round_trip() {
        let req = PutRequest {
            key: b"k".to_vec(),
            value: vec![7; 300],
            ..Default::default()
        };
        let f = frame(&req);
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            f.len() - 5
        );
        assert_eq!(unframe::<PutRequest>(&f).unwrap(), req);
        assert!(unframe::<PutRequest>(&f[..f.len() - 1]).is_err());
        assert!(unframe::<PutRequest>(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn statuses_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "9".parse().unwrap());
        h.insert(
            "grpc-message",
            "etcdserver: mvcc%3A required revision has been compacted"
                .parse()
                .unwrap(),
        );
        let st = status_of(&h);
        assert_eq!(st.code(), Code::FailedPrecondition);
        assert_eq!(
            st.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        h.insert("grpc-message", "100%".parse().unwrap());
        assert_eq!(status_of(&h).message(), "100%");
    }
}
