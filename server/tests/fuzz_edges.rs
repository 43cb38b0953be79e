//! Randomised inputs at the edges a peer or a client controls (issue 17, part 3), without a
//! fuzzing toolchain: seeded mutations of valid inputs plus random bytes, for the raft stream's
//! frame splitting and message decoding, the snapshot descriptor decoder, and the JSON
//! gateway's request decoding and the Txn evaluator behind it (through a real member). Nothing
//! may panic; the gateway answers every body with JSON (a result or an error) and the member
//! keeps serving. The seed is printed: `FUZZ_SEED=<n>` reruns one, `FUZZ_ITERS=<n>` runs
//! longer (`cargo test -p pgraft-server --test fuzz_edges -- --nocapture`).

mod common;

use pgraft_server::raft::wire::{self, Frame};
use pgraft_server::snapshot::Descriptor;
use pgraft_server::Node;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn rng(test: &str) -> (StdRng, usize) {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    let iters = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    println!("{test}: FUZZ_SEED={seed} FUZZ_ITERS={iters}");
    (StdRng::seed_from_u64(seed), iters)
}

/// One random change to `data`: flip, set, insert or delete bytes, truncate, or splice in a
/// piece of itself.
fn mutate(r: &mut StdRng, data: &mut Vec<u8>) {
    let n = data.len();
    match r.random_range(0..7) {
        0 if n > 0 => {
            let i = r.random_range(0..n);
            data[i] ^= 1 << r.random_range(0..8);
        }
        1 if n > 0 => {
            let i = r.random_range(0..n);
            data[i] = [0, 0xff, 0x7f, 0x80, b'"', b'{', b'[', b'-', b'9'][r.random_range(0..9)];
        }
        2 => {
            let i = r.random_range(0..=n);
            let k = r.random_range(1..8);
            for _ in 0..k {
                data.insert(i, r.random());
            }
        }
        3 if n > 0 => {
            let i = r.random_range(0..n);
            let k = r.random_range(1..=(n - i).min(8));
            data.drain(i..i + k);
        }
        4 => data.truncate(r.random_range(0..=n)),
        5 if n > 1 => {
            let a = r.random_range(0..n);
            let b = r.random_range(a..n);
            let piece = data[a..=b].to_vec();
            let at = r.random_range(0..=data.len());
            data.splice(at..at, piece);
        }
        _ => data.push(r.random()),
    }
}

fn sample_messages() -> Vec<Message> {
    let mut out = Vec::new();
    for (t, n) in [
        (MessageType::MsgAppend, 3),
        (MessageType::MsgHeartbeat, 0),
        (MessageType::MsgRequestVote, 0),
        (MessageType::MsgSnapshot, 0),
        (MessageType::MsgAppendResponse, 0),
    ] {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = 1;
        m.to = 2;
        m.term = 5;
        m.index = 10;
        m.log_term = 4;
        m.commit = 9;
        for i in 0..n {
            m.mut_entries().push(Entry {
                index: 11 + i,
                term: 5,
                data: vec![b'x'; 20 * (i as usize + 1)].into(),
                ..Default::default()
            });
        }
        out.push(m);
    }
    out
}

/// Splits a buffer into frames as the peer stream reader does and decodes each message.
/// Returns how many frames were whole.
fn read_stream(buf: &[u8]) -> usize {
    let mut used = 0;
    let mut whole = 0;
    loop {
        match wire::next_frame(&buf[used..]) {
            Frame::Partial | Frame::TooLarge(_) => return whole,
            Frame::Whole(payload, len) => {
                assert!(
                    len >= 4 && used + len <= buf.len(),
                    "frame of {len} bytes past the end"
                );
                used += len;
                whole += 1;
                if !payload.is_empty() {
                    let _ = Message::parse_from_bytes(payload);
                }
            }
        }
    }
}

#[test]
fn raft_stream_frames_and_messages() {
    let (mut r, iters) = rng("raft_stream_frames_and_messages");
    let mut valid = Vec::new();
    for m in sample_messages() {
        wire::put_message(&mut valid, &m);
        valid.extend_from_slice(&wire::HEARTBEAT);
    }
    assert_eq!(read_stream(&valid), 10);
    for _ in 0..iters {
        let mut buf = valid.clone();
        for _ in 0..r.random_range(1..6) {
            mutate(&mut r, &mut buf);
        }
        read_stream(&buf);
        let random: Vec<u8> = (0..r.random_range(0..256)).map(|_| r.random()).collect();
        read_stream(&random);
        let mut pre = [0u8; wire::PREAMBLE_LEN];
        r.fill(&mut pre[..]);
        if r.random_bool(0.5) {
            pre[..wire::MAGIC.len()].copy_from_slice(&wire::MAGIC);
            assert!(wire::parse_preamble(&pre).is_some());
        } else if pre[..wire::MAGIC.len()] != wire::MAGIC {
            assert!(wire::parse_preamble(&pre).is_none());
        }
    }
}

#[test]
fn snapshot_descriptor_decoder() {
    let (mut r, iters) = rng("snapshot_descriptor_decoder");
    let d = Descriptor {
        index: 1000,
        current_rev: 42,
        compact_rev: 17,
        file: "snap-1000".into(),
        length: 123_456,
        sha1: vec![7; 20],
    };
    let valid = prost::Message::encode_to_vec(&d);
    assert_eq!(Descriptor::decode_from(&valid).ok(), Some(d));
    for _ in 0..iters {
        let mut buf = valid.clone();
        for _ in 0..r.random_range(1..6) {
            mutate(&mut r, &mut buf);
        }
        let _ = Descriptor::decode_from(&buf);
    }
    assert!(Descriptor::decode_from(&vec![0u8; 64 * 1024 + 1]).is_err());
}

/// Valid gateway requests the mutations start from (Patroni's shapes and the other unary
/// calls, with compares and nested operations for the Txn evaluator).
const SEEDS: &[(&str, &str)] = &[
    (
        "/v3/kv/put",
        r#"{"key":"YQ==","value":"MQ==","prev_kv":true}"#,
    ),
    (
        "/v3/kv/range",
        r#"{"key":"YQ==","range_end":"Yg==","limit":"10","revision":"0","sort_order":"DESCEND","sort_target":"MOD","serializable":true,"keys_only":false,"count_only":false,"min_mod_revision":"0"}"#,
    ),
    (
        "/v3/kv/deleterange",
        r#"{"key":"YQ==","range_end":"AA==","prev_kv":true}"#,
    ),
    (
        "/v3/kv/txn",
        r#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"MOD","mod_revision":"2"},{"key":"Yg==","result":"LESS","target":"VERSION","version":"3","range_end":"Yw=="},{"key":"YQ==","target":"VALUE","result":"NOT_EQUAL","value":"MQ=="},{"key":"YQ==","target":"LEASE","result":"GREATER","lease":"0"}],"success":[{"request_put":{"key":"YQ==","value":"Mg=="}},{"request_range":{"key":"YQ==","range_end":"AA=="}},{"request_txn":{"compare":[{"key":"YQ==","target":"CREATE","result":"EQUAL","create_revision":"0"}],"success":[{"request_delete_range":{"key":"Yg=="}}]}}],"failure":[{"request_range":{"key":"YQ=="}}]}"#,
    ),
    ("/v3/kv/compaction", r#"{"revision":"1","physical":false}"#),
    ("/v3/lease/grant", r#"{"TTL":"30","ID":"0"}"#),
    ("/v3/lease/revoke", r#"{"ID":"12345"}"#),
    ("/v3/lease/timetolive", r#"{"ID":"12345","keys":true}"#),
    ("/v3/lease/leases", r#"{}"#),
    ("/v3/maintenance/status", r#"{}"#),
];

#[tokio::test]
async fn gateway_request_bodies() {
    let (mut r, iters) = rng("gateway_request_bodies");
    let iters = iters / 2;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(common::config(dir.path(), &[]))
        .await
        .expect("node starts");
    let base = format!("http://{}", node.client_addrs[0]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.server.raft.status.leader() == 0 {
        assert!(Instant::now() < deadline, "no leader after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..iters {
        let (path, seed) = SEEDS[i % SEEDS.len()];
        let mut body = seed.as_bytes().to_vec();
        for _ in 0..r.random_range(1..5) {
            mutate(&mut r, &mut body);
        }
        let resp = http
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{path} {:?}: no answer: {e}",
                    String::from_utf8_lossy(&body)
                )
            });
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "{path} {:?}: {status} answer is not JSON: {text:?}",
            String::from_utf8_lossy(&body)
        );
        assert_ne!(
            status,
            500,
            "{path} {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        *statuses.entry(status).or_insert(0) += 1;
    }
    println!("answers by HTTP status: {statuses:?}");
    // still serving
    let resp = http
        .post(format!("{base}/v3/kv/put"))
        .body(r#"{"key":"ZnV6eg==","value":"b2s="}"#)
        .send()
        .await
        .expect("put after the fuzzing");
    assert_eq!(resp.status().as_u16(), 200);
    node.stop().await;
}
