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
    let (events, current) = commit_puts(hub, key, value, 1, false);
    hub.publish(events, current);
    current
}

/// `n` puts of `value` to `key`, a revision each, committed as one chunk but not recorded in
/// the hub yet; with `compact`, the store is compacted at the last one in the same chunk. The
/// chunk's events and its last revision.
fn commit_puts(
    hub: &WatchHub,
    key: &[u8],
    value: &[u8],
    n: usize,
    compact: bool,
) -> (Option<Vec<RevEvents>>, i64) {
    let mut w = hub.store().write();
    let mut current = 0;
    for _ in 0..n {
        w.begin_txn();
        w.put(key, value.to_vec(), 0, false).unwrap();
        current = w.end_txn();
    }
    if compact {
        w.compact(current);
    }
    (w.commit().unwrap(), current)
}

/// A stream on a hub keeping `history` bytes of recent revisions, with two watchers of one key
/// (with `prev_kv`): watcher 0 from now on, watcher 1 from revision `later` on. It falls behind (its runtime's
/// only worker is held) while 20 puts land and the store is compacted at `compact_at`, past the
/// stream's position; then it runs again.
struct Lagging {
    hub: Arc<WatchHub>,
    requests: futures::channel::mpsc::UnboundedSender<etcd_proto::etcdserverpb::WatchRequest>,
    responses: super::outbox::Responses,
    start: i64,
    compact_at: i64,
    later: i64,
    /// The stream's runtime, left behind when the test ends: a stream that spins fails the
    /// test instead of hanging it.
    _rt: LeftBehind,
}

struct LeftBehind(Option<tokio::runtime::Runtime>);

impl Drop for LeftBehind {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn create_request(key: &[u8], start_revision: i64) -> etcd_proto::etcdserverpb::WatchRequest {
    use etcd_proto::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest};
    etcd_proto::etcdserverpb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            start_revision,
            prev_kv: true,
            ..Default::default()
        })),
    }
}

impl Lagging {
    async fn new(dir: &std::path::Path, history: usize) -> Self {
        use std::time::Duration;

        let hub = Arc::new(hub_with_puts(dir, history, 1, 8));
        let start = hub.current_rev();
        let (requests, responses, serving) = serve_stream(&hub);
        let rt = LeftBehind(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        ));
        rt.0.as_ref().unwrap().spawn(serving);
        let mut s = Lagging {
            hub,
            requests,
            responses,
            start,
            compact_at: start + 15,
            later: start + 40,
            _rt: rt,
        };
        s.requests
            .unbounded_send(create_request(b"key", 0))
            .unwrap();
        assert!(s.next().await.created);
        let later = create_request(b"key", s.later);
        s.requests.unbounded_send(later).unwrap();
        let created = s.next().await;
        assert!(created.created && created.watch_id == 1, "{created:?}");

        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        s._rt.0.as_ref().unwrap().spawn(async move {
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
        });
        held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        for _ in 0..20 {
            put(&s.hub, b"key", b"v");
        }
        let mut w = s.hub.store().write();
        w.compact(s.compact_at);
        w.commit().unwrap();
        release_tx.send(()).unwrap();
        s
    }

    async fn next(&mut self) -> etcd_proto::etcdserverpb::WatchResponse {
        use futures::StreamExt;
        tokio::time::timeout(std::time::Duration::from_secs(10), self.responses.next())
            .await
            .expect("a response within 10 s")
            .expect("the stream goes on")
    }

    /// Puts until the current revision is `later`; the events the next responses hold for
    /// watcher 1 then: only `later`'s.
    async fn later_watcher_gets_its_first_revision_only(&mut self) {
        while self.hub.current_rev() < self.later {
            put(&self.hub, b"key", b"v");
        }
        loop {
            let r = self.next().await;
            assert!(!r.canceled, "{r:?}");
            if r.watch_id != 1 {
                continue;
            }
            let revs: Vec<i64> = r
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect();
            assert_eq!(revs, vec![self.later]);
            return;
        }
    }
}

/// A stream that fell behind while the store was compacted past the stream's position, the
/// revisions it missed gone from memory too (a history of 0 bytes): the watcher owed compacted
/// revisions is cancelled, and the stream goes on serving a watcher that starts after the
/// compaction point. (The synced position once stayed below the compaction point with nothing
/// left to cancel, and the stream spun on the failing read for good.)
#[tokio::test]
async fn a_compaction_past_a_lagging_stream_leaves_its_later_watcher_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Lagging::new(dir.path(), 0).await;
    let r = s.next().await;
    assert!(
        r.watch_id == 0 && r.canceled && r.compact_revision == s.compact_at,
        "{r:?}"
    );
    s.later_watcher_gets_its_first_revision_only().await;
}

/// The same stream with the revisions it missed still in the hub's memory: a compaction to a
/// revision the stream had not read yet cancels nothing (etcd's synced watchers got those
/// events as they were written): watcher 0 gets every revision, in order, once, each with its
/// `prev_kv` (as written: the compaction does not take it away). A watch created below the
/// compaction point is still cancelled, as etcd's.
#[tokio::test]
async fn a_lagging_stream_reads_what_it_missed_from_memory_past_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Lagging::new(dir.path(), HISTORY_BYTES).await;
    let mut revs = Vec::new();
    while revs.len() < 20 {
        let r = s.next().await;
        assert!(r.watch_id == 0 && !r.canceled, "{r:?}");
        for e in &r.events {
            let kv = e.kv.as_ref().unwrap();
            let prev = e.prev_kv.as_ref().expect("a prev_kv");
            assert_eq!(prev.mod_revision, kv.mod_revision - 1, "{e:?}");
            revs.push(kv.mod_revision);
        }
    }
    assert_eq!(revs, (s.start + 1..=s.start + 20).collect::<Vec<_>>());

    let past = create_request(b"key", s.start + 1);
    s.requests.unbounded_send(past).unwrap();
    let created = s.next().await;
    assert!(created.created && !created.canceled, "{created:?}");
    let r = s.next().await;
    assert!(
        r.watch_id == created.watch_id && r.canceled && r.compact_revision == s.compact_at,
        "{r:?}"
    );
    s.later_watcher_gets_its_first_revision_only().await;
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

/// A client's side of one watch stream served by `stream::serve` on the test's runtime.
struct TestStream {
    requests: futures::channel::mpsc::UnboundedSender<etcd_proto::etcdserverpb::WatchRequest>,
    responses: super::outbox::Responses,
}

/// A watch stream on `hub`: its requests' sender, its responses, and the task serving it (for
/// the caller to spawn).
fn serve_stream(
    hub: &Arc<WatchHub>,
) -> (
    futures::channel::mpsc::UnboundedSender<etcd_proto::etcdserverpb::WatchRequest>,
    super::outbox::Responses,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    use super::stream::{self, HeaderFn, StreamConfig};
    use etcd_proto::etcdserverpb::ResponseHeader;
    let (requests, req_rx) = futures::channel::mpsc::unbounded();
    let (out, responses) = super::outbox::channel(super::outbox::MAX_QUEUED, 1 << 20);
    let header: HeaderFn = Arc::new(|revision| ResponseHeader {
        revision,
        ..Default::default()
    });
    let cfg = StreamConfig {
        progress_interval: std::time::Duration::ZERO,
        max_response_bytes: 1 << 20,
        permit: None,
    };
    let serving = stream::serve(hub.clone(), header, cfg, req_rx, out);
    (requests, responses, serving)
}

impl TestStream {
    fn open(hub: &Arc<WatchHub>) -> Self {
        let (requests, responses, serving) = serve_stream(hub);
        tokio::spawn(serving);
        TestStream {
            requests,
            responses,
        }
    }

    /// Creates a watcher on `[key, range_end)` (`key` alone when `range_end` is empty) from
    /// `start_revision` and returns its id.
    async fn watch(&mut self, key: &[u8], range_end: &[u8], start_revision: i64) -> i64 {
        use etcd_proto::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest};
        let create = WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision,
            ..Default::default()
        };
        self.requests
            .unbounded_send(etcd_proto::etcdserverpb::WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .unwrap();
        let r = self.next().await.expect("a created response");
        assert!(r.created && !r.canceled, "{r:?}");
        r.watch_id
    }

    /// Asks for a progress notification and returns its revision.
    async fn progress(&mut self) -> i64 {
        use etcd_proto::etcdserverpb::{watch_request::RequestUnion, WatchProgressRequest};
        self.requests
            .unbounded_send(etcd_proto::etcdserverpb::WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
            })
            .unwrap();
        let r = self.next().await.expect("the progress notification");
        assert!(
            !r.canceled && r.watch_id == -1,
            "not a progress notification: {r:?}"
        );
        r.header.unwrap().revision
    }

    /// The next response, or `None` after `wait` without one.
    async fn next_within(
        &mut self,
        wait: std::time::Duration,
    ) -> Option<etcd_proto::etcdserverpb::WatchResponse> {
        use futures::StreamExt;
        tokio::time::timeout(wait, self.responses.next())
            .await
            .ok()
            .flatten()
    }

    async fn next(&mut self) -> Option<etcd_proto::etcdserverpb::WatchResponse> {
        self.next_within(std::time::Duration::from_secs(10)).await
    }

    /// (watch id, key, mod revision) of every event in the responses until `n` events came;
    /// none may be a cancellation.
    async fn events(&mut self, n: usize) -> Vec<(i64, Vec<u8>, i64)> {
        let mut got = Vec::new();
        while got.len() < n {
            let r = self.next().await.expect("more events");
            assert!(!r.canceled, "cancelled: {r:?}");
            for e in r.events {
                let kv = e.kv.unwrap();
                got.push((r.watch_id, kv.key, kv.mod_revision));
            }
        }
        got
    }
}

/// Streams get the events of their own keys only, each in order and once, whether the hub
/// holds the revisions in memory or they are read from the store; a watcher created in the
/// past catches up and then follows new revisions; a stream no put concerns hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_get_the_revisions_of_their_keys_only() {
    for history in [HISTORY_BYTES, 0] {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(hub_with_puts(dir.path(), history, 1, 8));
        let (mut a, mut b, mut idle) = (
            TestStream::open(&hub),
            TestStream::open(&hub),
            TestStream::open(&hub),
        );
        let wa = a.watch(b"a", b"", 0).await;
        let wp = b.watch(b"p/", b"p0", 0).await;
        idle.watch(b"zzz", b"", 0).await;
        let mut puts = Vec::new();
        for i in 0..30 {
            let key: &[u8] = match i % 3 {
                0 => b"a",
                1 => b"p/x",
                _ => b"q",
            };
            puts.push((key.to_vec(), put(&hub, key, b"v")));
        }
        let owed = |key: &[u8], id: i64| -> Vec<(i64, Vec<u8>, i64)> {
            puts.iter()
                .filter(|(k, _)| k.starts_with(key))
                .map(|(k, r)| (id, k.clone(), *r))
                .collect()
        };
        assert_eq!(a.events(10).await, owed(b"a", wa), "history {history}");
        assert_eq!(b.events(10).await, owed(b"p/", wp), "history {history}");

        // A second watcher on stream b, from the first put on: the history of "a", then on.
        let first = puts[0].1;
        let wb = b.watch(b"a", b"", first).await;
        assert_eq!(b.events(10).await, owed(b"a", wb), "history {history}");
        let rev = put(&hub, b"a", b"w");
        let want = vec![(wa, b"a".to_vec(), rev)];
        assert_eq!(a.events(1).await, want);
        assert_eq!(b.events(1).await, vec![(wb, b"a".to_vec(), rev)]);

        let quiet = std::time::Duration::from_millis(200);
        assert!(idle.next_within(quiet).await.is_none());
        assert!(a.next_within(quiet).await.is_none());
        assert!(b.next_within(quiet).await.is_none());
    }
}

/// A hub on a fresh store in `dir`, and a stream with one watcher, on key `q`: the hub, the
/// stream and the watcher's id.
async fn hub_watching_q(dir: &std::path::Path) -> (Arc<WatchHub>, TestStream, i64) {
    let hub = Arc::new(hub_with_puts(dir, HISTORY_BYTES, 1, 8));
    let mut stream = TestStream::open(&hub);
    let id = stream.watch(b"q", b"", 0).await;
    (hub, stream, id)
}

/// A stream whose keys no put touched for a while is not woken, so its position stays where it
/// was; a compaction past that position must not cancel its watchers, which are owed nothing
/// below it, and the next put to its key reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_is_not_cancelled_by_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut quiet, id) = hub_watching_q(dir.path()).await;
    for _ in 0..20 {
        put(&hub, b"other", b"v");
    }
    let mut w = hub.store().write();
    w.compact(hub.current_rev());
    w.commit().unwrap();
    let rev = put(&hub, b"q", b"v");
    assert_eq!(quiet.events(1).await, vec![(id, b"q".to_vec(), rev)]);
}

/// A compaction is visible from the applier's commit on, before its chunk's revisions are
/// routed: a stream that catches up in between (here for a progress request) must not take
/// its quiet watcher for one owed compacted revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_not_yet_routed_cancels_no_synced_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, mut quiet, id) = hub_watching_q(dir.path()).await;
    let routed = hub.current_rev();

    // One chunk: two puts elsewhere and a compaction past them, committed, not yet recorded.
    let (events, current) = commit_puts(&hub, b"other", b"v", 2, true);

    assert_eq!(quiet.progress().await, routed);

    hub.publish(events, current);
    let rev = put(&hub, b"q", b"v");
    assert_eq!(quiet.events(1).await, vec![(id, b"q".to_vec(), rev)]);
}

/// A snapshot install wakes every stream, also when no revision changed: a read it held back
/// is tried again.
#[test]
fn a_snapshot_install_wakes_every_stream() {
    use futures::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_puts(dir.path(), HISTORY_BYTES, 1, 8);
    let route = hub.route();
    assert!(route.wait().now_or_never().is_none());
    hub.reset();
    assert!(route.wait().now_or_never().is_some());
}

/// Revisions are routed when recorded, before the current revision moves. A watch created in
/// between has a `created` header below the revision just routed, so it is owed that revision:
/// it reads it at once (not only at the key's next change), and a progress notification after
/// it is at or past it (etcd sends its current revision; clients take it as monotonic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_created_while_its_revision_is_recorded_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(hub_with_puts(dir.path(), HISTORY_BYTES, 1, 8));
    let mut s = TestStream::open(&hub);
    let (events, current) = commit_puts(&hub, b"q", b"v", 1, false);
    // The first half of `record`: routed, the current revision not moved yet.
    hub.router.route(events.iter().flatten(), current);
    let id = s.watch(b"q", b"", 0).await;
    assert_eq!(s.events(1).await, vec![(id, b"q".to_vec(), current)]);
    assert_eq!(s.progress().await, current);
}

/// The same stream when the hub's memory holds only the newest of the revisions it missed (8 of
/// 20): the older ones are compacted away from the store, so watcher 0 is cancelled.
#[tokio::test]
async fn a_lagging_stream_is_cancelled_when_memory_lost_part_of_what_it_missed() {
    // The bytes one revision of `Lagging`'s puts takes in the history.
    let sample_dir = tempfile::tempdir().unwrap();
    let sample = hub_with_puts(sample_dir.path(), HISTORY_BYTES, 1, 8);
    put(&sample, b"key", b"v");
    let before = sample.history_bytes();
    put(&sample, b"key", b"v");
    let per_rev = sample.history_bytes() - before;

    let dir = tempfile::tempdir().unwrap();
    let mut s = Lagging::new(dir.path(), 8 * per_rev).await;
    let held = s
        .hub
        .recent
        .read()
        .revs
        .front()
        .map(|(r, _)| r.rev)
        .unwrap();
    assert!(
        held > s.start + 1 && held <= s.compact_at,
        "history from {held}"
    );
    let r = s.next().await;
    assert!(
        r.watch_id == 0 && r.canceled && r.compact_revision == s.compact_at,
        "{r:?}"
    );
    s.later_watcher_gets_its_first_revision_only().await;
}

/// A compaction is visible from the applier's commit on, before its chunk's revisions reach the
/// hub: a watch created then from a revision below the compaction point is cancelled all the
/// same (it would count as synced, and read the chunk from memory once recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_created_below_a_compaction_not_yet_routed_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(hub_with_puts(dir.path(), HISTORY_BYTES, 1, 8));
    let first = hub.current_rev() + 1;
    let mut s = TestStream::open(&hub);
    // Two puts and a compaction at the second, committed, not yet recorded.
    let (events, current) = commit_puts(&hub, b"q", b"v", 2, true);
    s.requests
        .unbounded_send(create_request(b"q", first))
        .unwrap();
    let created = s.next().await.unwrap();
    assert!(created.created && !created.canceled, "{created:?}");
    let r = s.next().await.unwrap();
    assert!(
        r.watch_id == created.watch_id && r.canceled && r.compact_revision == current,
        "{r:?}"
    );
    hub.publish(events, current);
    assert!(s
        .next_within(std::time::Duration::from_millis(200))
        .await
        .is_none());
}
