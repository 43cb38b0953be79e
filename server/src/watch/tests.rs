//! The hub's memory bounds (the history in bytes, one catch-up read in bytes), and a stream
//! that fell behind a compaction.

use super::*;
use crate::backend::Backend;

/// A store on a fresh backend, and `n` puts of `value_len`-byte values to one key (so that
/// every revision after the first carries a `prev_kv` as large as its value), published to a
/// hub as the applier publishes them.
fn hub_with_puts(
    dir: &std::path::Path,
    max_history: usize,
    n: usize,
    value_len: usize,
) -> WatchHub {
    let backend = Backend::open(dir).unwrap();
    let (store, _) = Store::open(backend).unwrap();
    let hub = WatchHub::with_history_bytes(Arc::new(store), max_history);
    for i in 0..n {
        let mut w = hub.store().write();
        w.begin_txn();
        w.put(b"key", vec![b'a' + (i % 26) as u8; value_len], 0, false)
            .unwrap();
        let current = w.end_txn();
        let events = w.commit().unwrap();
        hub.publish(events, current);
    }
    hub
}

#[test]
fn history_stays_under_its_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1 << 20;
    // 64 revisions of 100 KiB values, each with a 100 KiB prev_kv: about 12.5 MiB.
    let hub = hub_with_puts(dir.path(), cap, 64, 100 << 10);
    let held = hub.history_bytes();
    assert!(held <= cap, "history holds {held} bytes, cap {cap}");
    // Still the latest revisions, contiguous, and more than none.
    let recent = hub.recent.read();
    assert!(
        recent.revs.len() >= 4,
        "{} revisions kept",
        recent.revs.len()
    );
    assert_eq!(recent.revs.back().unwrap().0.rev, hub.current_rev());
    for pair in recent.revs.iter().collect::<Vec<_>>().windows(2) {
        assert_eq!(pair[0].0.rev + 1, pair[1].0.rev);
    }
    assert_eq!(
        recent.bytes,
        recent.revs.iter().map(|(r, _)| rev_bytes(r)).sum::<usize>()
    );
}

#[test]
fn catch_up_reads_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing in memory: every read comes from the store.
    let hub = hub_with_puts(dir.path(), 0, 40, 50 << 10);
    assert_eq!(hub.history_bytes(), 0);
    let current = hub.current_rev();
    let max = 300 << 10;
    let mut from = 2;
    let mut seen = Vec::new();
    while from <= current {
        let b = hub.events(from, current, max).unwrap();
        let bytes: usize = b.revs.iter().map(|r| rev_bytes(r)).sum();
        // At most the budget plus the first small window's overshoot.
        assert!(bytes <= max + 4 * (101 << 10), "{bytes} bytes in one read");
        assert!(!b.revs.is_empty() && b.upto >= from);
        seen.extend(b.revs.iter().map(|r| r.rev));
        from = b.upto + 1;
    }
    assert_eq!(
        seen,
        (2..=current).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    // From memory: the batch shares the history's revisions and stops near the budget too.
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_puts(dir.path(), 64 << 20, 40, 50 << 10);
    let b = hub.events(2, hub.current_rev(), max).unwrap();
    let bytes: usize = b.revs.iter().map(|r| rev_bytes(r)).sum();
    assert!(
        bytes <= max + (101 << 10) && b.upto < hub.current_rev(),
        "{bytes}"
    );
    assert!(Arc::ptr_eq(&b.revs[0], &hub.recent.read().revs[0].0));
}

/// One put of `value` to `key`, published as the applier publishes it; its revision.
fn put(hub: &WatchHub, key: &[u8], value: &[u8]) -> i64 {
    let mut w = hub.store().write();
    w.begin_txn();
    w.put(key, value.to_vec(), 0, false).unwrap();
    let current = w.end_txn();
    let events = w.commit().unwrap();
    hub.publish(events, current);
    current
}

/// A stream that fell behind (here: its runtime busy) while the store was compacted past the
/// stream's position: the watcher owed compacted revisions is cancelled, and the stream goes
/// on serving a watcher that starts after the compaction point. (The synced position once stayed
/// below the compaction point with nothing left to cancel, and the stream spun on the failing
/// read for good.)
#[tokio::test]
async fn a_compaction_past_a_lagging_stream_leaves_its_later_watcher_served() {
    use super::outbox;
    use super::stream::{self, HeaderFn, StreamConfig};
    use etcd_proto::etcdserverpb::{watch_request::RequestUnion, ResponseHeader};
    use etcd_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
    use futures::StreamExt;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(hub_with_puts(dir.path(), HISTORY_BYTES, 1, 8));
    let start = hub.current_rev();
    let (req_tx, req_rx) = futures::channel::mpsc::unbounded();
    let (out, mut responses) = outbox::channel(outbox::MAX_QUEUED, 1 << 20);
    let header: HeaderFn = Arc::new(|revision| ResponseHeader {
        revision,
        ..Default::default()
    });
    let cfg = StreamConfig {
        progress_interval: Duration::ZERO,
        max_response_bytes: 1 << 20,
        permit: None,
    };
    // The stream runs on a runtime of its own, left behind when the test ends: a stream that
    // spins fails the test instead of hanging it.
    struct LeftBehind(Option<tokio::runtime::Runtime>);
    impl Drop for LeftBehind {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }
    let rt = LeftBehind(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap(),
    ));
    rt.0.as_ref()
        .unwrap()
        .spawn(stream::serve(hub.clone(), header, cfg, req_rx, out));
    let create = |start_revision| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"key".to_vec(),
            start_revision,
            ..Default::default()
        })),
    };
    async fn next(rx: &mut outbox::Responses) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .expect("a response within 10 s")
            .expect("the stream goes on")
    }
    let later = start + 40;
    req_tx.unbounded_send(create(0)).unwrap();
    assert!(next(&mut responses).await.created);
    req_tx.unbounded_send(create(later)).unwrap();
    let created = next(&mut responses).await;
    assert!(created.created && created.watch_id == 1, "{created:?}");

    // The stream falls behind: its runtime's only worker is held while 20 puts land and the
    // store is compacted past the stream's position.
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    rt.0.as_ref().unwrap().spawn(async move {
        held_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
    });
    held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..20 {
        put(&hub, b"key", b"v");
    }
    let compact_at = start + 15;
    let mut w = hub.store().write();
    w.compact(compact_at);
    w.commit().unwrap();
    release_tx.send(()).unwrap();

    // The first watcher is owed revisions from start + 1 on: cancelled for the compaction.
    let r = next(&mut responses).await;
    assert!(
        r.watch_id == 0 && r.canceled && r.compact_revision == compact_at,
        "{r:?}"
    );

    // The later watcher gets its first revision and nothing before it.
    while hub.current_rev() < later {
        put(&hub, b"key", b"v");
    }
    let r = next(&mut responses).await;
    assert_eq!(r.watch_id, 1, "{r:?}");
    let revs: Vec<i64> = r
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revs, vec![later]);
}

/// The applier records a chunk's revisions (a watch created then starts past them), answers its
/// proposers, and only then wakes the streams: once per new revision, never for none.
#[tokio::test]
async fn recorded_revisions_wake_the_streams_only_when_announced() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_puts(dir.path(), HISTORY_BYTES, 1, 8);
    let mut rx = hub.subscribe();
    let before = hub.current_rev();
    let mut w = hub.store().write();
    w.begin_txn();
    w.put(b"key", b"v".to_vec(), 0, false).unwrap();
    let current = w.end_txn();
    let events = w.commit().unwrap();
    hub.record(events, current);
    assert_eq!(
        hub.current_rev(),
        before + 1,
        "recorded: the current revision moved"
    );
    assert!(
        rx.changed().now_or_never().is_none(),
        "recorded: no stream woken yet"
    );
    hub.announce();
    assert!(
        rx.changed().now_or_never().unwrap().is_ok(),
        "announced: woken"
    );
    hub.announce();
    hub.record(Some(Vec::new()), current);
    hub.announce();
    assert!(
        rx.changed().now_or_never().is_none(),
        "nothing new: not woken again"
    );
}
