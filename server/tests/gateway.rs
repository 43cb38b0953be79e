//! The HTTP side of the client port, driven over real HTTP/1.1 (reqwest, and a raw socket where
//! the chunk framing itself matters): every request shape Patroni sends (see
//! `shared/reference/patroni-dcs.md`) answered as etcd answers it, the error bodies and statuses,
//! the streams, and the plain endpoints `/version`, `/health`, `/livez`, `/readyz`, `/metrics`.
//!
//! Each test starts its own member in-process on 127.0.0.1 with an OS-picked port.

mod common;

use base64::Engine as _;
use etcd_proto::etcdserverpb::{auth_client::AuthClient, AuthStatusRequest};
use pgraft_server::Node;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest any single request or stream read may take before the test counts it as hung.
const TIMEOUT: Duration = Duration::from_secs(10);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &Value) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s.as_str().expect("base64 string"))
        .expect("valid base64");
    String::from_utf8(raw).unwrap()
}

struct Member {
    node: Node,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

impl Member {
    async fn start() -> Member {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Member {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let node = Node::start(common::config(dir.path(), &extra))
            .await
            .expect("node starts");
        let addr = node.client_addrs[0];
        let deadline = Instant::now() + Duration::from_secs(5);
        while node.server.raft.status.leader() == 0 {
            assert!(Instant::now() < deadline, "no leader after 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Member {
            node,
            _dir: dir,
            addr,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(TIMEOUT).build().unwrap(),
        }
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        Answer {
            status,
            headers,
            text,
        }
    }

    /// POSTs `body` as Patroni does (JSON content type).
    async fn post(&self, path: &str, body: &str) -> Answer {
        self.answer(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// POSTs and expects 200 with a JSON body.
    async fn call(&self, path: &str, body: Value) -> Value {
        let a = self.post(path, &body.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{path} {body}: {}", a.text);
        assert_eq!(a.header("content-type"), "application/json");
        a.json()
    }

    async fn get(&self, path: &str) -> Answer {
        self.answer(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn put(&self, key: &str, value: &str) -> i64 {
        let r = self
            .call("/v3/kv/put", json!({"key": b64(key), "value": b64(value)}))
            .await;
        rev(&r)
    }

    async fn metrics(&self) -> Metrics {
        let a = self.get("/metrics").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.header("content-type"),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        Metrics::parse(&a.text)
    }
}

/// `header.revision` of a response, checking the rest of the header is there as etcd sends it.
fn rev(v: &Value) -> i64 {
    let h = &v["header"];
    for k in ["cluster_id", "member_id", "raft_term"] {
        let s = h[k]
            .as_str()
            .unwrap_or_else(|| panic!("header.{k} missing: {v}"));
        assert!(s.parse::<u64>().unwrap() > 0, "{v}");
    }
    h["revision"]
        .as_str()
        .expect("revision string")
        .parse()
        .unwrap()
}

/// The response without its header's IDs and term (checked by [`rev`]), for exact comparisons.
fn strip(mut v: Value) -> Value {
    if v.get("header").is_some() {
        let r = rev(&v);
        v["header"] = json!({"revision": r.to_string()});
    }
    v
}

/// Asserts an etcd gateway error: status, `{"error":msg,"message":msg,"code":N}` exactly.
fn assert_error(a: &Answer, status: u16, code: i32, msg: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.text);
    assert_eq!(a.header("content-type"), "application/json");
    let expected = format!(
        "{{\"error\":{m},\"message\":{m},\"code\":{code}}}",
        m = Value::from(msg)
    );
    assert_eq!(a.text, expected);
}

// ------------------------------------------------------------------------------ Patroni shapes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_answers_a_get_with_a_body() {
    let m = Member::start().await;
    // Patroni sends GET /version with `{}` and a JSON content type.
    let a = m
        .answer(
            m.http
                .get(format!("{}/version", m.base))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(a.text, r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#);
    let a = m.post("/version", "{}").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("allow"), "GET");
    assert_eq!(a.text, "Method Not Allowed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_grant_put_with_lease_and_keepalive() {
    let m = Member::start().await;
    // Patroni sends TTL as a JSON number and keeps the ID string as it came.
    let g = m.call("/v3/lease/grant", json!({"TTL": 30})).await;
    let id = g["ID"].as_str().expect("ID as a string").to_string();
    assert!(id.parse::<i64>().unwrap() > 0);
    assert_eq!(
        strip(g.clone()),
        json!({"header": {"revision": "1"}, "ID": id, "TTL": "30"})
    );

    let key = "/service/batman/members/pg1";
    let p = m
        .call(
            "/v3/kv/put",
            json!({"key": b64(key), "value": b64("{\"role\":\"primary\"}"), "lease": id}),
        )
        .await;
    assert_eq!(strip(p), json!({"header": {"revision": "2"}}));
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64(key), "serializable": true}),
        )
        .await;
    assert_eq!(
        r["kvs"][0]["lease"], id,
        "the lease ID must read back in the form grant returned it: {r}"
    );

    // Keepalive on a live lease: a chunked stream of exactly one result line, then the end.
    let a = m
        .post("/v3/lease/keepalive", &json!({"ID": id}).to_string())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("transfer-encoding"), "chunked");
    assert_eq!(a.header("content-type"), "application/json");
    assert!(
        a.text.ends_with("}\n") && a.text.matches('\n').count() == 1,
        "{:?}",
        a.text
    );
    let line = a.json();
    assert_eq!(
        strip(line["result"].clone()),
        json!({"header": {"revision": "2"}, "ID": id, "TTL": "30"})
    );

    // Two requests in one body get two answers.
    let body = format!("{}\n{}", json!({"ID": id}), json!({"ID": id}));
    let a = m.post("/v3/lease/keepalive", &body).await;
    assert_eq!(a.text.lines().count(), 2, "{}", a.text);

    // Revoked (via the legacy alias): keepalive answers 200 without TTL, never "TTL":"0".
    m.call("/v3/kv/lease/revoke", json!({"ID": id})).await;
    let a = m
        .post("/v3/lease/keepalive", &json!({"ID": id}).to_string())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let line = a.json();
    assert_eq!(
        strip(line["result"].clone()),
        json!({"header": {"revision": "3"}, "ID": id}),
        "{}",
        a.text
    );
    // And the revoke deleted the key.
    let r = m.call("/v3/kv/range", json!({"key": b64(key)})).await;
    assert_eq!(strip(r), json!({"header": {"revision": "3"}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_an_unknown_lease_is_not_found() {
    let m = Member::start().await;
    let a = m
        .post(
            "/v3/kv/put",
            &json!({"key": b64("/service/batman/leader"), "value": b64("pg1"), "lease": "7587862329134716179"})
                .to_string(),
        )
        .await;
    assert_error(&a, 404, 5, "etcdserver: requested lease not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_serializable_and_linearizable() {
    let m = Member::start().await;
    m.put("/service/batman/config", "{\"ttl\":30}").await;
    m.put("/service/batman/initialize", "").await;
    m.put("/service/batman0", "outside").await;
    let prefix = json!({
        "key": b64("/service/batman/"),
        "range_end": b64("/service/batman0"),
    });
    for serializable in [true, false] {
        let mut req = prefix.clone();
        req["serializable"] = json!(serializable);
        let r = m.call("/v3/kv/range", req).await;
        assert_eq!(
            strip(r),
            json!({
                "header": {"revision": "4"},
                "kvs": [
                    {"key": b64("/service/batman/config"), "create_revision": "2",
                     "mod_revision": "2", "version": "1", "value": b64("{\"ttl\":30}")},
                    // An empty value is left out.
                    {"key": b64("/service/batman/initialize"), "create_revision": "3",
                     "mod_revision": "3", "version": "1"},
                ],
                "count": "2",
            })
        );
    }
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64("/service/batman/config"), "serializable": true}),
        )
        .await;
    assert_eq!(unb64(&r["kvs"][0]["value"]), "{\"ttl\":30}");
    // Nothing found: no kvs, no count.
    let r = m
        .call("/v3/kv/range", json!({"key": b64("/service/none")}))
        .await;
    assert_eq!(strip(r), json!({"header": {"revision": "4"}}));
    // camelCase names and numbers for int64 are accepted too.
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64("/service/"), "rangeEnd": b64("/service0"), "keysOnly": true, "limit": 1}),
        )
        .await;
    assert_eq!(r["more"], json!(true));
    assert_eq!(r["count"], json!("3"));
    assert!(r["kvs"][0].get("value").is_none(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_txn_shapes() {
    let m = Member::start().await;
    let leader = b64("/service/batman/leader");
    let g = m.call("/v3/lease/grant", json!({"TTL": 30})).await;
    let lease = g["ID"].as_str().unwrap().to_string();

    // (1) create-if-absent: succeeds once...
    let create = json!({
        "compare": [{"target": "CREATE", "create_revision": "0", "key": leader}],
        "success": [{"request_put": {"key": leader, "value": b64("pg1"), "lease": lease}}],
    });
    let r = m.call("/v3/kv/txn", create.clone()).await;
    assert_eq!(
        strip(r),
        json!({"header": {"revision": "2"}, "succeeded": true,
               "responses": [{"response_put": {"header": {"revision": "2"}}}]})
    );
    // ...then fails: no `succeeded`, no `responses`.
    let r = m.call("/v3/kv/txn", create).await;
    assert_eq!(strip(r), json!({"header": {"revision": "2"}}));

    // (2) compare-and-swap on mod_revision.
    let config = b64("/service/batman/config");
    m.put("/service/batman/config", "v1").await; // rev 3
    let cas = |rev: &str, v: &str| {
        json!({
            "compare": [{"target": "MOD", "mod_revision": rev, "key": config}],
            "success": [{"request_put": {"key": config, "value": b64(v)}}],
        })
    };
    let r = m.call("/v3/kv/txn", cas("2", "stale")).await;
    assert_eq!(strip(r), json!({"header": {"revision": "3"}}));
    let r = m.call("/v3/kv/txn", cas("3", "v2")).await;
    assert_eq!(r["succeeded"], json!(true));
    assert_eq!(rev(&r), 4);
    // (2b) delete on mod_revision.
    let del = json!({
        "compare": [{"target": "MOD", "mod_revision": "4", "key": config}],
        "success": [{"request_delete_range": {"key": config}}],
    });
    let r = m.call("/v3/kv/txn", del).await;
    assert_eq!(
        strip(r),
        json!({"header": {"revision": "5"}, "succeeded": true,
               "responses": [{"response_delete_range": {"header": {"revision": "5"}, "deleted": "1"}}]})
    );

    // (3) update_leader with a value compare and a nested txn on failure.
    let g = m.call("/v3/lease/grant", json!({"TTL": 30})).await;
    let lease2 = g["ID"].as_str().unwrap().to_string();
    let update = |name: &str| {
        json!({
            "compare": [{"key": leader, "target": "VALUE", "value": b64(name)}],
            "success": [{"request_put": {"key": leader, "value": b64(name), "lease": lease2}}],
            "failure": [{"request_txn": {
                "compare": [{"key": leader, "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": leader, "value": b64(name), "lease": lease2}}],
            }}],
        })
    };
    // Outer compare holds: the key moves to the new lease.
    let r = m.call("/v3/kv/txn", update("pg1")).await;
    assert_eq!(
        strip(r),
        json!({"header": {"revision": "6"}, "succeeded": true,
               "responses": [{"response_put": {"header": {"revision": "6"}}}]})
    );
    let r = m.call("/v3/kv/range", json!({"key": leader})).await;
    assert_eq!(r["kvs"][0]["lease"], json!(lease2));
    // Both compares fail: the failure branch's result sits at responses[0].
    let r = m.call("/v3/kv/txn", update("pg2")).await;
    assert_eq!(
        strip(r),
        json!({"header": {"revision": "6"}, "responses": [{"response_txn": {"header": {}}}]})
    );
    // (4) delete_leader: value compare, then delete.
    let delete_leader = json!({
        "compare": [{"key": leader, "target": "VALUE", "value": b64("pg1")}],
        "success": [{"request_delete_range": {"key": leader}}],
    });
    let r = m.call("/v3/kv/txn", delete_leader).await;
    assert_eq!(r["succeeded"], json!(true));
    assert_eq!(rev(&r), 7);
    // Outer fails (key gone), nested create succeeds.
    let r = m.call("/v3/kv/txn", update("pg2")).await;
    assert_eq!(
        strip(r),
        json!({"header": {"revision": "8"}, "responses": [{"response_txn": {
            "header": {}, "succeeded": true,
            "responses": [{"response_put": {"header": {"revision": "8"}}}]}}]})
    );
}

// ------------------------------------------------------------------------------------ watch

/// A raw HTTP/1.1 client for one streaming request, reading the chunked framing itself.
struct RawStream {
    sock: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    buf: Vec<u8>,
}

impl RawStream {
    /// Sends a POST and reads the status line and headers.
    async fn post(addr: SocketAddr, path: &str, body: &str) -> (RawStream, String) {
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut s = RawStream {
            sock: Box::new(sock),
            buf: Vec::new(),
        };
        let head = s.read_until(b"\r\n\r\n").await;
        (s, String::from_utf8(head).unwrap())
    }

    /// POSTs a chunked body: `start`, then `fill` bytes without end (64 MiB at most, or until
    /// the server stops reading), written while the answer is read. Returns the stream after
    /// the status line and headers, the head, and the writer (which returns the bytes sent).
    async fn post_endless(
        addr: SocketAddr,
        path: &str,
        start: &str,
        fill: u8,
    ) -> (RawStream, String, tokio::task::JoinHandle<usize>) {
        let parts = std::iter::once(start.as_bytes().to_vec())
            .chain(std::iter::repeat_n(vec![fill; 64 << 10], 1024));
        Self::post_chunked(addr, path, parts).await
    }

    /// POSTs `parts` as the chunks of a body, written while the answer is read.
    async fn post_chunked(
        addr: SocketAddr,
        path: &str,
        parts: impl Iterator<Item = Vec<u8>> + Send + 'static,
    ) -> (RawStream, String, tokio::task::JoinHandle<usize>) {
        let sock = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = sock.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            if write.write_all(head.as_bytes()).await.is_err() {
                return sent;
            }
            // An empty chunk would end the body.
            for part in parts.filter(|p| !p.is_empty()) {
                let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                chunk.extend_from_slice(&part);
                chunk.extend_from_slice(b"\r\n");
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += part.len();
            }
            sent
        });
        let mut s = RawStream {
            sock: Box::new(read),
            buf: Vec::new(),
        };
        let head = s.read_until(b"\r\n\r\n").await;
        (s, String::from_utf8(head).unwrap(), writer)
    }

    /// The body of a non-chunked answer, by its Content-Length.
    async fn sized_body(&mut self, head: &str) -> String {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no content-length: {head}"));
        while self.buf.len() < len {
            self.fill().await;
        }
        String::from_utf8(self.buf[..len].to_vec()).unwrap()
    }

    async fn fill(&mut self) {
        let mut tmp = [0u8; 8192];
        let n = tokio::time::timeout(TIMEOUT, self.sock.read(&mut tmp))
            .await
            .expect("stream read timed out")
            .unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&tmp[..n]);
    }

    async fn read_until(&mut self, delim: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                let out = self.buf[..i + delim.len()].to_vec();
                self.buf.drain(..i + delim.len());
                return out;
            }
            self.fill().await;
        }
    }

    /// The next HTTP chunk's payload (empty for the last chunk).
    async fn chunk(&mut self) -> String {
        let line = self.read_until(b"\r\n").await;
        let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16)
            .expect("chunk size");
        while self.buf.len() < size + 2 {
            self.fill().await;
        }
        let data = self.buf[..size].to_vec();
        assert_eq!(&self.buf[size..size + 2], b"\r\n");
        self.buf.drain(..size + 2);
        String::from_utf8(data).unwrap()
    }

    /// The next chunk, which must be exactly one `{"result":...}` line; returns the result.
    async fn result(&mut self) -> Value {
        let c = self.chunk().await;
        assert!(c.ends_with('\n') && c.matches('\n').count() == 1, "{c:?}");
        let v: Value = serde_json::from_str(&c).unwrap();
        v.get("result").cloned().unwrap_or_else(|| panic!("{c}"))
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_start_revision_streams_one_chunk_per_message() {
    let m = Member::start().await;
    let prefix = "/service/batman/";
    m.put("/service/batman/config", "c1").await; // 2
    m.put("/service/batman/status", "s1").await; // 3
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64(prefix), "range_end": b64("/service/batman0"), "serializable": true}),
        )
        .await;
    let start = rev(&r);
    assert_eq!(start, 3);
    let streams_before = m.node.server.hub.stream_count();

    // Exactly Patroni's request: start at the range's header revision, empty filters.
    let body = json!({"create_request": {
        "key": b64(prefix), "range_end": b64("/service/batman0"),
        "start_revision": start.to_string(), "filters": []}});
    let (mut w, head) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let head_lc = head.to_ascii_lowercase();
    assert!(head_lc.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(
        head_lc.contains("content-type: application/json\r\n"),
        "{head}"
    );

    let created = w.result().await;
    assert_eq!(
        strip(created),
        json!({"header": {"revision": "3"}, "created": true})
    );
    // start_revision is inclusive: the event at revision 3 comes first.
    let ev = w.result().await;
    assert_eq!(
        strip(ev),
        json!({"header": {"revision": "3"}, "events": [{"kv": {
            "key": b64("/service/batman/status"), "create_revision": "3",
            "mod_revision": "3", "version": "1", "value": b64("s1")}}]})
    );
    m.put("/service/batman/status", "s2").await; // 4
    m.put("/service/other", "x").await; // 5, outside the range
    m.call(
        "/v3/kv/deleterange",
        json!({"key": b64("/service/batman/config")}),
    )
    .await; // 6
    let ev = w.result().await;
    assert_eq!(ev["events"][0]["kv"]["mod_revision"], json!("4"));
    assert!(
        ev["events"][0].get("type").is_none(),
        "PUT has no type: {ev}"
    );
    let ev = w.result().await;
    assert_eq!(
        strip(ev),
        json!({"header": {"revision": "6"}, "events": [{"type": "DELETE", "kv": {
            "key": b64("/service/batman/config"), "mod_revision": "6"}}]})
    );
    assert_eq!(m.node.server.hub.stream_count(), streams_before + 1);

    // Patroni ends a watch by closing the socket: the server must let go of the stream.
    drop(w);
    let hub = m.node.server.hub.clone();
    wait_until("the closed watch stream is cleaned up", || {
        hub.stream_count() == streams_before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stream_requests_in_one_body() {
    let m = Member::start().await;
    m.put("foo", "bar").await; // 2
                               // One body can create a watch and cancel it again; a progress request gets watch_id -1.
    let body = format!(
        "{}{}\n{}",
        json!({"create_request": {"key": b64("foo"), "watch_id": "7", "prev_kv": true, "filters": ["NOPUT"]}}),
        json!({"progress_request": {}}),
        json!({"cancel_request": {"watch_id": "7"}}),
    );
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body).await;
    assert_eq!(
        strip(w.result().await),
        json!({"header": {"revision": "2"}, "watch_id": "7", "created": true})
    );
    assert_eq!(
        strip(w.result().await),
        json!({"header": {"revision": "2"}, "watch_id": "-1"})
    );
    assert_eq!(
        strip(w.result().await),
        json!({"header": {"revision": "2"}, "watch_id": "7", "canceled": true})
    );

    // An empty range is refused inside the stream, as etcd does.
    let body = json!({"create_request": {"key": b64("foo"), "range_end": b64("a")}});
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert_eq!(
        strip(w.result().await),
        json!({"header": {"revision": "2"}, "watch_id": "-1", "created": true,
               "canceled": true, "cancel_reason": "mvcc: watcher range is empty"})
    );

    // A compacted start revision: created, then canceled with the compact revision.
    m.put("foo", "baz").await; // 3
    m.call("/v3/kv/compaction", json!({"revision": "3"})).await;
    let body = json!({"create_request": {"key": b64("foo"), "start_revision": "2"}});
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert_eq!(
        strip(w.result().await),
        json!({"header": {"revision": "3"}, "created": true})
    );
    let c = w.result().await;
    assert_eq!(c["canceled"], json!(true), "{c}");
    assert_eq!(c["compact_revision"], json!("3"), "{c}");

    // A malformed first request fails the call as etcd's gateway does (Unknown, 500).
    let a = m.post("/v3/watch", r#"{"create_request":"#).await;
    assert_error(&a, 500, 2, "unexpected EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_deletes_keys_and_the_watch_sees_it() {
    let m = Member::start().await;
    let g = m.call("/v3/lease/grant", json!({"TTL": 2})).await;
    let id = g["ID"].as_str().unwrap().to_string();
    let leader = b64("/service/batman/leader");
    m.call(
        "/v3/kv/put",
        json!({"key": leader, "value": b64("pg1"), "lease": id}),
    )
    .await; // 2
    let body = json!({"create_request": {"key": leader, "start_revision": "3"}});
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert_eq!(w.result().await["created"], json!(true));
    let started = Instant::now();
    // No keepalive: the lease expires and takes the leader key with it (Patroni's failover).
    let ev = w.result().await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "expired early"
    );
    assert_eq!(
        strip(ev),
        json!({"header": {"revision": "3"}, "events": [{"type": "DELETE", "kv": {
            "key": leader, "mod_revision": "3"}}]})
    );
    let a = m
        .post("/v3/lease/keepalive", &json!({"ID": id}).to_string())
        .await;
    assert!(a.json()["result"].get("TTL").is_none(), "{}", a.text);
}

// ------------------------------------------------------------------------- errors and routes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_and_statuses() {
    let m = Member::start().await;
    m.put("foo", "bar").await; // 2
                               // Empty body = empty message; the service then rejects the missing key.
    assert_error(
        &m.post("/v3/kv/range", "").await,
        400,
        3,
        "etcdserver: key is not provided",
    );
    assert_error(
        &m.post("/v3/kv/range", "{}").await,
        400,
        3,
        "etcdserver: key is not provided",
    );
    // Malformed JSON: InvalidArgument with the decoder's message.
    assert_error(
        &m.post("/v3/kv/range", r#"{"key":"#).await,
        400,
        3,
        "unexpected EOF",
    );
    let a = m.post("/v3/kv/range", r#"{"key":5}"#).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["code"], json!(3));
    // Unknown fields are ignored; so is anything after the first JSON value.
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64("foo"), "no_such_field": [1, 2]}),
        )
        .await;
    assert_eq!(r["count"], json!("1"));
    let a = m
        .post(
            "/v3/kv/range",
            &format!("{} trailing", json!({"key": b64("foo")})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // Service errors with etcd's codes and grpc-gateway 1.16's statuses.
    assert_error(
        &m.post(
            "/v3/kv/range",
            &json!({"key": b64("foo"), "revision": "100"}).to_string(),
        )
        .await,
        400,
        11,
        "etcdserver: mvcc: required revision is a future revision",
    );
    assert_error(
        &m.post("/v3/lease/revoke", r#"{"ID":"12345"}"#).await,
        404,
        5,
        "etcdserver: requested lease not found",
    );
    m.call("/v3/lease/grant", json!({"TTL": "60", "ID": "1000"}))
        .await;
    assert_error(
        &m.post("/v3/lease/grant", r#"{"TTL":"60","ID":"1000"}"#)
            .await,
        400,
        9,
        "etcdserver: lease already exists",
    );
    assert_error(
        &m.post("/v3/lease/grant", r#"{"TTL":"9000000001"}"#).await,
        400,
        11,
        "etcdserver: too large lease TTL",
    );
    assert_error(
        &m.post(
            "/v3/kv/put",
            &json!({"key": b64("nokey"), "ignore_value": true}).to_string(),
        )
        .await,
        400,
        3,
        "etcdserver: key not found",
    );
    let dup = json!({"success": [
        {"request_put": {"key": b64("d"), "value": b64("1")}},
        {"request_put": {"key": b64("d"), "value": b64("2")}}]});
    assert_error(
        &m.post("/v3/kv/txn", &dup.to_string()).await,
        400,
        3,
        "etcdserver: duplicate key given in txn request",
    );
    // Patroni's authenticate against a cluster without auth.
    assert_error(
        &m.post("/v3/auth/authenticate", r#"{"name":"u","password":"p"}"#)
            .await,
        400,
        9,
        "etcdserver: authentication is not enabled",
    );
    // Unimplemented RPCs: 501 with the gRPC face's message.
    assert_error(
        &m.post("/v3/maintenance/downgrade", "{}").await,
        501,
        12,
        "pgraft: Downgrade is not implemented yet",
    );
    // Membership errors keep etcd's codes over HTTP too.
    assert_error(
        &m.post("/v3/cluster/member/add", r#"{"peerURLs":["not a url"]}"#)
            .await,
        400,
        3,
        "etcdserver: given member URLs are invalid",
    );
    assert_error(
        &m.post("/v3/cluster/member/remove", r#"{"ID":"12345"}"#)
            .await,
        404,
        5,
        "etcdserver: member not found",
    );
    // The lock service answers as etcd's does (its errors leave as Unknown, HTTP 500).
    assert_error(
        &m.post("/v3/lock/lock", r#"{"name":"bA==","lease":"999"}"#)
            .await,
        500,
        2,
        "etcdserver: requested lease not found",
    );
    // A server stream that works: the backup, one `{"result": ...}` line per message, as etcd's
    // gateway (no header; remaining_bytes as a string, left out at 0), the digest last.
    let a = m.post("/v3/maintenance/snapshot", "{}").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let lines: Vec<Value> = a
        .text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["result"].clone())
        .collect();
    assert!(lines.len() >= 2, "{}", a.text);
    for l in &lines {
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert!(
            keys.iter().all(|k| *k == "blob" || *k == "remaining_bytes"),
            "{l}"
        );
    }
    let last = lines.last().unwrap();
    assert_eq!(last.get("remaining_bytes"), None);
    assert_eq!(last["blob"].as_str().unwrap().len(), 44, "a base64 SHA-256");
    // A malformed first keepalive request: Unknown, as etcd's gateway answers it.
    assert_error(
        &m.post("/v3/lease/keepalive", r#"{"ID":"#).await,
        500,
        2,
        "unexpected EOF",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_prefixes_methods_and_cors() {
    let m = Member::start().await;
    m.put("foo", "bar").await;
    let key = json!({"key": b64("foo")});
    // /v3beta is rewritten to /v3.
    let r = m.call("/v3beta/kv/range", key.clone()).await;
    assert_eq!(r["count"], json!("1"));
    // Legacy lease aliases.
    let g = m.call("/v3/lease/grant", json!({"TTL": 60})).await;
    let id = g["ID"].as_str().unwrap();
    let t = m
        .call("/v3/kv/lease/timetolive", json!({"ID": id, "keys": true}))
        .await;
    assert_eq!(t["grantedTTL"], json!("60"));
    let l = m.call("/v3/kv/lease/leases", json!({})).await;
    assert_eq!(l["leases"], json!([{"ID": id}]));
    let l = m.call("/v3/lease/leases", json!({})).await;
    assert_eq!(l["leases"], json!([{"ID": id}]));
    // Other read-only RPCs.
    let s = m.call("/v3/maintenance/status", json!({})).await;
    assert_eq!(s["version"], json!("3.5.0"));
    let ml = m.call("/v3/cluster/member/list", json!({})).await;
    assert_eq!(ml["members"][0]["name"], json!("t1"));
    assert!(ml["header"].get("revision").is_none(), "{ml}");
    let al = m
        .call("/v3/maintenance/alarm", json!({"action": "GET"}))
        .await;
    assert!(al.get("alarms").is_none(), "{al}");
    // The Authorization header is checked even while auth is disabled, as etcd checks it: a
    // token no member issued is refused (see tests/auth.rs for the tokens that work).
    let a = m
        .answer(
            m.http
                .post(format!("{}/v3/kv/range", m.base))
                .header("authorization", "ewFEimfwlDNnDpzV.31")
                .body(key.to_string()),
        )
        .await;
    assert_error(&a, 401, 16, "etcdserver: invalid auth token");

    // Wrong method on a gateway route; unknown paths.
    let a = m.get("/v3/kv/range").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.text, "Method Not Allowed\n");
    let a = m.post("/v3/kv/nothing", "{}").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (StatusCode::NOT_FOUND, "Not Found\n")
    );
    let a = m.post("/v3alpha/kv/range", "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = m.get("/nothing").await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found\n")
    );
    // CORS as with etcd's default --cors=*: headers everywhere, OPTIONS answered 200.
    assert_eq!(a.header("access-control-allow-origin"), "*");
    let a = m
        .answer(
            m.http
                .request(reqwest::Method::OPTIONS, format!("{}/v3/kv/put", m.base)),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("access-control-allow-methods"),
        "POST, GET, OPTIONS, PUT, DELETE"
    );
    assert_eq!(
        a.header("access-control-allow-headers"),
        "accept, content-type, authorization"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_size_limits() {
    let m = Member::start_with(&["--max-request-bytes=1024"]).await;
    // Above max-request-bytes: the proposal is refused.
    let big = "x".repeat(2000);
    assert_error(
        &m.post(
            "/v3/kv/put",
            &json!({"key": b64("k"), "value": b64(&big)}).to_string(),
        )
        .await,
        400,
        3,
        "etcdserver: request is too large",
    );
    // Above the gRPC receive limit (max-request-bytes + 512 KiB): refused before the server,
    // as grpc-go refuses the gateway's call in etcd.
    let huge = "x".repeat(1024 + 512 * 1024 + 100);
    let a = m
        .post(
            "/v3/kv/put",
            &json!({"key": b64("k"), "value": b64(&huge)}).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    let e = a.json();
    assert_eq!(e["code"], json!(8));
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.starts_with("grpc: received message larger than max (")
            && msg.ends_with(&format!(" vs. {})", 1024 + 512 * 1024)),
        "{msg}"
    );
}

/// The answer to a body over the gateway's limit: 413 and the gateway's JSON error body.
const TOO_LARGE_BODY: &str =
    r#"{"error":"http: request body too large","message":"http: request body too large","code":8}"#;

/// A body of more than the JSON of a max-size message is refused with 413 before anything is
/// decoded or proposed, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_body_over_the_limit_is_413_and_changes_nothing() {
    let m = Member::start_with(&["--max-request-bytes=1024"]).await;
    // The limit is the JSON of a (1024 + 512 KiB)-byte message: about 765 KB. This body is
    // 1.4 MB (a 1 MiB value in base64).
    let start = format!(r#"{{"key":"{}","value":""#, b64("big"));
    let (mut w, head, writer) = RawStream::post_endless(m.addr, "/v3/kv/put", &start, b'A').await;
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    assert_eq!(w.sized_body(&head).await, TOO_LARGE_BODY);
    writer.abort();
    let r = m
        .call(
            "/v3/kv/range",
            json!({"key": b64("big"), "count_only": true}),
        )
        .await;
    assert_eq!(
        r.get("count"),
        None,
        "the refused put changed something: {r}"
    );
    // The member is unharmed, and a body under the limit still gets etcd's own answers.
    m.put("after", "1").await;
    let a = m
        .post(
            "/v3/kv/put",
            &json!({"key": b64("k"), "value": b64(&"x".repeat(530_000))}).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
}

/// A `/v3/watch` body that never ends a value (whitespace without end, or one object that
/// never closes) is refused once it passes the limit of one message, without the member
/// buffering it; a later request too large ends an open watch with an error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_watch_body_is_refused_and_the_member_stays_healthy() {
    let m = Member::start_with(&["--max-request-bytes=1024"]).await;
    m.put("foo", "bar").await;
    for (start, fill) in [("", b' '), (r#"{"create_request":{"key":""#, b'A')] {
        let (mut w, head, writer) = RawStream::post_endless(m.addr, "/v3/watch", start, fill).await;
        assert!(head.starts_with("HTTP/1.1 413 "), "{start:?}: {head}");
        assert_eq!(w.sized_body(&head).await, TOO_LARGE_BODY);
        let sent = writer.await.unwrap();
        assert!(
            sent < 32 << 20,
            "the member read {sent} bytes of an endless body"
        );
    }
    // A watch that is open, then sent a request that never ends: the stream ends with an
    // error line.
    let start = format!(
        "{}{}",
        json!({"create_request": {"key": b64("foo")}}),
        r#"{"create_request":{"key":""#
    );
    let (mut w, head, writer) = RawStream::post_endless(m.addr, "/v3/watch", &start, b'A').await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(w.result().await["created"], json!(true));
    let last: Value = serde_json::from_str(&w.chunk().await).unwrap();
    assert_eq!(
        last,
        json!({"error": {"grpc_code": 8, "http_code": 429,
               "message": "http: request body too large", "http_status": "Too Many Requests"}})
    );
    assert_eq!(w.chunk().await, "", "the stream ends after the error");
    writer.abort();
    // The bound is per request, not per body: a long-lived stream may send far more in all.
    let gap = vec![b' '; 500 << 10];
    let progress = json!({"progress_request": {}}).to_string().into_bytes();
    let parts = std::iter::repeat_n([gap, progress], 12).flatten();
    let (mut w, head, _writer) = RawStream::post_chunked(m.addr, "/v3/watch", parts).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    for _ in 0..12 {
        assert_eq!(w.result().await["watch_id"], json!("-1"));
    }
    // The member is healthy: a put and a range work.
    let rev = m.put("foo", "after").await;
    let r = m.call("/v3/kv/range", json!({"key": b64("foo")})).await;
    assert_eq!(unb64(&r["kvs"][0]["value"]), "after");
    assert_eq!(r["kvs"][0]["mod_revision"], json!(rev.to_string()));
}

// ------------------------------------------------------------------------- plain endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_livez_readyz() {
    let m = Member::start().await;
    for path in ["/health", "/health?serializable=true"] {
        let a = m.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.text, r#"{"health":"true","reason":""}"#, "{path}");
    }
    let a = m.post("/health", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);

    let a = m.get("/livez").await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "ok\n"));
    let a = m.get("/livez?verbose").await;
    assert_eq!(a.text, "[+]serializable_read ok\nok\n");
    let a = m.get("/readyz").await;
    assert_eq!((a.status, a.text.as_str()), (StatusCode::OK, "ok\n"));
    let a = m.get("/readyz?verbose&exclude=non_learner").await;
    assert_eq!(
        a.text,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
    );
    for check in [
        "data_corruption",
        "serializable_read",
        "linearizable_read",
        "non_learner",
    ] {
        let a = m.get(&format!("/readyz/{check}?verbose")).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.text, format!("[+]{check} ok\nok\n"));
    }
    let a = m.get("/livez/serializable_read").await;
    assert_eq!(a.text, "ok\n");
    let a = m.get("/livez/linearizable_read").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// A parsed Prometheus exposition: `name{labels}` -> value.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            m.insert(series.to_string(), value.parse().unwrap());
        }
        Metrics(m)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("series {series} missing"))
    }

    fn or_zero(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
}

fn grpc_series(kind: &str, service: &str, method: &str, code: Option<&str>) -> String {
    let grpc_type = match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        _ => "unary",
    };
    match code {
        Some(c) => format!(
            "grpc_server_{kind}_total{{grpc_code=\"{c}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{grpc_type}\"}}"
        ),
        None => format!(
            "grpc_server_{kind}_total{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{grpc_type}\"}}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_present_and_move() {
    let m = Member::start().await;
    let before = m.metrics().await;
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_wal_fsync_duration_seconds_sum",
        "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}",
        "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}",
        "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_server_version{server_version=\"3.5.0\"}",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "pgraft_raft_loop_turn_duration_seconds_count",
    ] {
        before.get(name);
    }
    assert_eq!(before.get("etcd_server_has_leader"), 1.0);
    assert_eq!(before.get("etcd_server_is_leader"), 1.0);
    assert!(before.get("etcd_server_leader_changes_seen_total") >= 1.0);
    assert_eq!(
        before.get("etcd_server_version{server_version=\"3.5.0\"}"),
        1.0
    );
    assert!(before.get("process_resident_memory_bytes") > 1e6);
    assert!(before.get("etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert_eq!(before.get("etcd_debugging_mvcc_keys_total"), 0.0);

    for i in 0..5 {
        m.put(&format!("k{i}"), "v").await;
    }
    m.call("/v3/kv/deleterange", json!({"key": b64("k0")}))
        .await;
    let after = m.metrics().await;
    let grew = |name: &str, by: f64| {
        assert!(
            after.get(name) >= before.or_zero(name) + by,
            "{name}: {} -> {}",
            before.or_zero(name),
            after.get(name)
        );
    };
    // Per member: six applied writes.
    assert_eq!(
        after.get("etcd_server_proposals_committed_total")
            - before.get("etcd_server_proposals_committed_total"),
        6.0
    );
    assert_eq!(
        after.get("etcd_server_proposals_applied_total"),
        after.get("etcd_server_proposals_committed_total")
    );
    assert_eq!(after.get("etcd_debugging_mvcc_keys_total"), 4.0);
    // Process-wide (other tests share the process: at least this member's writes).
    grew("etcd_disk_wal_fsync_duration_seconds_count", 6.0);
    grew("etcd_disk_backend_commit_duration_seconds_count", 6.0);
    assert!(
        after.get("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}")
            == after.get("etcd_disk_wal_fsync_duration_seconds_count")
    );
    assert!(after.get("etcd_disk_wal_fsync_duration_seconds_sum") > 0.0);
    let put_ok = grpc_series("handled", "etcdserverpb.KV", "Put", Some("OK"));
    grew(&put_ok, 5.0);
    // The commit round, stage by stage: each of the six writes was queued for the raft loop,
    // appended and committed here (the leader), applied, and answered.
    for stage in [
        "pgraft_raft_proposal_queue_duration_seconds",
        "pgraft_raft_proposal_commit_duration_seconds",
        "pgraft_server_proposal_duration_seconds",
    ] {
        grew(&format!("{stage}_count"), 6.0);
        grew(&format!("{stage}_bucket{{le=\"3.2768\"}}"), 6.0);
    }
    grew("pgraft_server_applied_entries_total", 6.0);
    grew("pgraft_server_apply_duration_seconds_count", 1.0);
    grew("pgraft_raft_loop_turn_duration_seconds_count", 6.0);
    assert!(after.get("process_cpu_seconds_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_gateway_share_the_port_and_the_grpc_counters() {
    let m = Member::start().await;
    // The counters are process-wide: only this test calls AuthStatus and Downgrade, so theirs
    // move by exactly our calls while other tests run.
    let started = grpc_series("started", "etcdserverpb.Auth", "AuthStatus", None);
    let ok = grpc_series("handled", "etcdserverpb.Auth", "AuthStatus", Some("OK"));
    let before = m.metrics().await;
    // gRPC (HTTP/2) on the same port as the JSON gateway.
    let mut c = AuthClient::connect(m.base.clone()).await.unwrap();
    let st = c.auth_status(AuthStatusRequest::default()).await.unwrap();
    assert!(!st.into_inner().enabled);
    // And through the gateway, which etcd serves as a gRPC call too.
    let st = m.call("/v3/auth/status", json!({})).await;
    assert!(st.get("enabled").is_none(), "{st}");
    let after = m.metrics().await;
    assert_eq!(after.get(&started) - before.or_zero(&started), 2.0);
    assert_eq!(after.get(&ok) - before.or_zero(&ok), 2.0);

    // A failed call is counted with its code (and only with it).
    let unimpl = grpc_series(
        "handled",
        "etcdserverpb.Maintenance",
        "Downgrade",
        Some("Unimplemented"),
    );
    let role_ok = grpc_series(
        "handled",
        "etcdserverpb.Maintenance",
        "Downgrade",
        Some("OK"),
    );
    let before = m.metrics().await;
    m.post("/v3/maintenance/downgrade", "{}").await;
    let after = m.metrics().await;
    assert_eq!(after.get(&unimpl) - before.or_zero(&unimpl), 1.0);
    assert_eq!(after.or_zero(&role_ok), 0.0);

    // A watch whose client goes away ends as Canceled.
    let canceled = grpc_series("handled", "etcdserverpb.Watch", "Watch", Some("Canceled"));
    let before = m.metrics().await;
    let body = json!({"create_request": {"key": b64("x")}});
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert_eq!(w.result().await["created"], json!(true));
    drop(w);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let now = m.metrics().await;
        if now.or_zero(&canceled) > before.or_zero(&canceled) {
            break;
        }
        assert!(Instant::now() < deadline, "watch not counted as Canceled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_member_ends_open_http_streams() {
    let m = Member::start().await;
    let body = json!({"create_request": {"key": b64("x")}});
    let (mut w, _) = RawStream::post(m.addr, "/v3/watch", &body.to_string()).await;
    assert_eq!(w.result().await["created"], json!(true));
    // A client that keeps its watch open does not hold the member past its stop...
    tokio::time::timeout(Duration::from_secs(5), m.node.stop())
        .await
        .expect("stop with an open HTTP watch");
    // ...and learns why, in grpc-gateway's stream error format.
    let last = w.chunk().await;
    let v: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        v,
        json!({"error": {"grpc_code": 14, "http_code": 503,
               "message": "etcdserver: server stopped", "http_status": "Service Unavailable"}})
    );
    assert_eq!(w.chunk().await, "", "the stream ends after the error");
}
