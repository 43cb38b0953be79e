//! Unary gRPC calls straight over one HTTP/2 connection (the `h2` crate), for the request loops
//! of `put`, `range` and `txn-put`.
//!
//! Why not tonic's `Channel`: the tool shares the machine with the servers it measures, and a
//! tonic call passes through a tower buffer task and hyper's dispatcher task before it reaches
//! the connection. Here a request loop opens its HTTP/2 stream itself, and the connection task
//! is the only other task a call wakes. Measured at 64 clients against a 3-member pgraftd: the
//! tool's CPU per put fell from 22 µs to about half (see `bench/README.md`). Watch streams and
//! Maintenance.Status still use tonic (`conn.rs`).
//!
//! The wire format is gRPC's: a POST with `content-type: application/grpc` and `te: trailers`,
//! one length-prefixed message each way, the status in the trailers (or in the headers of a
//! trailers-only answer), its message percent-encoded.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Uri};
use prost::Message;
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::{Code, Status};

/// One HTTP/2 connection; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct UnaryConn {
    send: h2::client::SendRequest<Bytes>,
    /// `http://host:port`, the scheme and authority every request URI starts with.
    base: String,
}

impl UnaryConn {
    /// Dials `url` (`http://host:port`) and completes the HTTP/2 handshake within `timeout`;
    /// the connection is driven by a task of its own until every clone is dropped.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, String> {
        tokio::time::timeout(timeout, Self::dial(url))
            .await
            .map_err(|_| format!("cannot connect to {url}: timed out"))?
    }

    async fn dial(url: &str) -> Result<Self, String> {
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
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {url}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(UnaryConn {
            send,
            base: format!("http://{authority}"),
        })
    }

    /// Calls `path` (`/etcdserverpb.KV/Put`) with `req`; the answer, or the call's gRPC status.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, Status> {
        let head = Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (answer, mut body) = send.send_request(head, false).map_err(transport)?;
        body.send_data(frame(req), true).map_err(transport)?;

        let (parts, mut recv) = answer.await.map_err(transport)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only answer carries the status in its headers.
        if parts.headers.contains_key("grpc-status") {
            return Err(status_of(&parts.headers));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(transport)?;
        match trailers {
            Some(t) if t.get("grpc-status").is_some_and(|v| v != "0") => Err(status_of(&t)),
            Some(t) if t.contains_key("grpc-status") => unframe(&buf),
            _ => Err(Status::internal("answer without grpc-status")),
        }
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

/// The status in `grpc-status` and `grpc-message` (percent-decoded).
fn status_of(h: &HeaderMap) -> Status {
    let code = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    let msg = h
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    Status::new(code, msg)
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            s[i],
            s.get(i + 1).copied().and_then(hex),
            s.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A broken stream or connection, as tonic reports one.
fn transport(e: h2::Error) -> Status {
    Status::unavailable(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::PutRequest;

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
        assert_eq!(percent_decode(b"100%"), "100%");
    }
}
