//! Which streams watch which keys, across the whole hub (etcd's `watchableStore` keeps its synced
//! watchers in one `watcherGroup` for the same reason): the applier's new revisions are routed
//! to the streams with a watcher on one of their keys, and only those streams are woken, each
//! told which revisions to read. Waking every stream to look for itself cost a put one task
//! wakeup per open stream.
//!
//! The promise to a stream: every revision after the one [`Route::watch`] returned that holds
//! an event on the watched range is routed to the stream, in a span it takes with
//! [`Route::take`]. Spans are merged as they come and bounded in number ([`MAX_SPANS`]): past
//! that, the newest span stretches to cover the new revision, and the stream reads (and
//! filters) the revisions in between. Revisions whose events were not built (no stream was
//! open) or that a snapshot install replaced are routed to every stream
//! ([`Router::route_unknown`]); those streams read them from the store.

use super::keyindex::KeyIndex;
use crate::mvcc::{KeyRange, RevEvents};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Spans of revisions waiting for one stream, at most.
pub const MAX_SPANS: usize = 64;

/// Revisions `from..=to` (inclusive).
pub type Span = (i64, i64);

#[derive(Default)]
pub struct Router {
    routes: Mutex<Routes>,
    /// The newest revision routed: every one up to it went to the streams that watch its keys.
    /// Written under the `routes` lock after the revisions' spans are added, read without it.
    routed: AtomicI64,
    /// How many streams have a route: read by the applier for every chunk, without the lock.
    streams: AtomicUsize,
}

#[derive(Default)]
struct Routes {
    next_stream: u64,
    streams: HashMap<u64, Arc<Slot>>,
    /// The streams watching each key and range.
    index: KeyIndex<Watching>,
    /// Streams routed something since the last [`Router::wake`].
    to_wake: Vec<Arc<Slot>>,
}

/// The streams with a watcher on one key or range: stream -> how many of its watchers.
#[derive(Default)]
struct Watching(HashMap<u64, u32>);

impl Watching {
    fn add(&mut self, stream: u64) {
        *self.0.entry(stream).or_default() += 1;
    }

    /// Removes one of `stream`'s watchers; true when no stream is left.
    fn remove(&mut self, stream: u64) -> bool {
        if let Some(n) = self.0.get_mut(&stream) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&stream);
            }
        }
        self.0.is_empty()
    }

    fn streams(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }
}

/// What is routed to one stream: its own lock, so that taking it never waits for the router.
struct Slot {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    spans: Vec<Span>,
    /// In the router's `to_wake` list.
    queued: bool,
}

impl Pending {
    fn add(&mut self, (from, to): Span) {
        let full = self.spans.len() >= MAX_SPANS;
        match self.spans.last_mut() {
            Some(last) if last.1 + 1 >= from => last.1 = last.1.max(to),
            // Full: the newest span stretches over the gap.
            Some(last) if full => last.1 = to,
            _ => self.spans.push((from, to)),
        }
    }
}

impl Routes {
    /// Adds `span` (never below the spans added before) to stream `id`'s slot, and queues the
    /// stream's wakeup.
    fn add(&mut self, id: u64, span: Span) {
        let Some(slot) = self.streams.get(&id) else {
            return;
        };
        let mut p = slot.pending.lock();
        p.add(span);
        if !std::mem::replace(&mut p.queued, true) {
            self.to_wake.push(slot.clone());
        }
    }

    /// The streams with a watcher whose range holds `key`, into `ids` (a stream may come more
    /// than once).
    fn watching(&self, key: &[u8], ids: &mut Vec<u64>) {
        self.index.holding(key, |w| ids.extend(w.streams()));
    }

    /// Adds `span` to every stream.
    fn add_all(&mut self, span: Span) {
        if span.0 > span.1 {
            return;
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.add(id, span);
        }
    }
}

impl Router {
    pub fn new(routed: i64) -> Self {
        Router {
            routes: Mutex::default(),
            routed: AtomicI64::new(routed),
            streams: AtomicUsize::new(0),
        }
    }

    /// A new stream's route; it leaves the router when dropped.
    pub fn join(self: &Arc<Self>) -> Route {
        let mut r = self.routes.lock();
        let id = r.next_stream;
        r.next_stream += 1;
        let slot = Arc::new(Slot {
            pending: Mutex::default(),
            wake: Notify::new(),
        });
        r.streams.insert(id, slot.clone());
        self.streams.store(r.streams.len(), Ordering::Release);
        Route {
            router: self.clone(),
            id,
            slot,
        }
    }

    /// How many streams have a route.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }

    /// Routes the revisions after the last routed, up to `upto`, to every stream (nothing is
    /// known here of what they hold), and records `upto` as routed.
    fn route_unknown_locked(&self, r: &mut Routes, upto: i64) {
        r.add_all((self.routed.load(Ordering::Acquire) + 1, upto));
        self.routed.fetch_max(upto, Ordering::AcqRel);
    }

    /// Routes the revisions `revs` (in order, the newest `upto`) to the streams that watch
    /// their keys; [`Router::wake`] wakes them.
    pub fn route<'a>(&self, revs: impl Iterator<Item = &'a RevEvents>, upto: i64) {
        let mut r = self.routes.lock();
        let mut revs = revs.peekable();
        // Revisions between the last routed and these (none, as the applier records them) are
        // unknown here: every stream reads them.
        if let Some(first) = revs.peek() {
            self.route_unknown_locked(&mut r, first.rev - 1);
        }
        let mut ids = Vec::new();
        for rev in revs {
            ids.clear();
            for e in &rev.events {
                if let Some(kv) = &e.kv {
                    r.watching(&kv.key, &mut ids);
                }
            }
            // Once per stream and revision, however many of its events the stream watches.
            ids.sort_unstable();
            ids.dedup();
            for &id in &ids {
                r.add(id, (rev.rev, rev.rev));
            }
        }
        self.routed.fetch_max(upto, Ordering::AcqRel);
    }

    /// Routes the revisions after the last routed, up to `upto`, to every stream: what they
    /// hold is not known here (not built, or replaced by a snapshot), so each stream reads and
    /// filters them.
    pub fn route_unknown(&self, upto: i64) {
        self.route_unknown_locked(&mut self.routes.lock(), upto);
    }

    /// Wakes the streams routed something since the last call.
    pub fn wake(&self) {
        let woken = std::mem::take(&mut self.routes.lock().to_wake);
        for slot in woken {
            slot.pending.lock().queued = false;
            slot.wake.notify_one();
        }
    }

    /// Wakes every stream, routed something or not.
    pub fn wake_all(&self) {
        let all: Vec<Arc<Slot>> = {
            let mut r = self.routes.lock();
            r.to_wake.clear();
            r.streams.values().cloned().collect()
        };
        for slot in all {
            slot.pending.lock().queued = false;
            slot.wake.notify_one();
        }
    }
}

/// One stream's place in the [`Router`].
pub struct Route {
    router: Arc<Router>,
    id: u64,
    slot: Arc<Slot>,
}

impl Route {
    /// Routes the revisions that touch `range` here from now on. Returns the newest revision
    /// routed so far: every later one that touches `range` will reach this stream.
    pub fn watch(&self, range: &KeyRange) -> i64 {
        let mut r = self.router.routes.lock();
        r.index.entry(range).add(self.id);
        self.router.routed.load(Ordering::Acquire)
    }

    /// Undoes one [`Route::watch`] of `range`.
    pub fn unwatch(&self, range: &KeyRange) {
        let mut r = self.router.routes.lock();
        r.index.release(range, |w| w.remove(self.id));
    }

    /// The spans routed here since the last call, oldest first, and the newest revision routed
    /// (to anyone): up to it, no revision outside those spans touches this stream's ranges.
    pub fn take(&self) -> (Vec<Span>, i64) {
        // Read first: the spans of every revision up to it are in the slot already.
        let routed = self.router.routed.load(Ordering::Acquire);
        let spans = std::mem::take(&mut self.slot.pending.lock().spans);
        (spans, routed)
    }

    /// Waits until something is routed here (at once if something was since the last wait).
    pub async fn wait(&self) {
        self.slot.wake.notified().await
    }
}

impl Drop for Route {
    /// Forgets the stream. Its watchers' ranges are unwatched by their owner first
    /// (`WatchStream`'s drop), so nothing of it is left in the key index.
    fn drop(&mut self) {
        let mut r = self.router.routes.lock();
        r.streams.remove(&self.id);
        self.router
            .streams
            .store(r.streams.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::prefix_end;
    use futures::FutureExt;

    fn rev(rev: i64, keys: &[&[u8]]) -> RevEvents {
        Arc::unwrap_or_clone(crate::watch::watchers::tests::rev(rev, keys))
    }

    fn woken(r: &Route) -> bool {
        r.wait().now_or_never().is_some()
    }

    /// A revision reaches, and wakes, only the streams that watch one of its keys.
    #[test]
    fn revisions_reach_the_streams_of_their_keys_only() {
        let router = Arc::new(Router::new(10));
        let (a, b, c) = (router.join(), router.join(), router.join());
        assert_eq!(a.watch(&KeyRange::single(b"a")), 10);
        a.watch(&KeyRange::single(b"a"));
        b.watch(&KeyRange::single(b"b"));
        c.watch(&KeyRange::new(b"p/", b"p0"));
        router.route([rev(11, &[b"a"]), rev(12, &[b"b", b"p/x"])].iter(), 12);
        assert!(!woken(&a), "routed, not woken yet");
        router.wake();
        assert!(woken(&a) && woken(&b) && woken(&c));
        assert_eq!(a.take(), (vec![(11, 11)], 12));
        assert_eq!(b.take(), (vec![(12, 12)], 12));
        assert_eq!(c.take(), (vec![(12, 12)], 12));

        // Untouched streams are not woken, and still learn how far the router got.
        router.route(
            [rev(13, &[b"a"]), rev(14, &[b"zz"]), rev(15, &[b"a"])].iter(),
            15,
        );
        router.wake();
        assert!(woken(&a) && !woken(&b) && !woken(&c));
        assert_eq!(a.take(), (vec![(13, 13), (15, 15)], 15));
        assert_eq!(b.take(), (vec![], 15));

        // One unwatch of two leaves the key watched; the second removes it.
        a.unwatch(&KeyRange::single(b"a"));
        router.route([rev(16, &[b"a"])].iter(), 16);
        router.wake();
        assert!(woken(&a));
        assert_eq!(a.take().0, vec![(16, 16)]);
        a.unwatch(&KeyRange::single(b"a"));
        c.unwatch(&KeyRange::new(b"p/", b"p0"));
        router.route([rev(17, &[b"a", b"p/y"])].iter(), 17);
        router.wake();
        assert!(!woken(&a) && !woken(&c));
        let r = router.routes.lock();
        assert_eq!(r.index.len(), 1, "only b's key is left");
    }

    /// Prefix and range watchers are found, among few ranges and among many.
    #[test]
    fn prefixes_and_ranges_are_found_however_many() {
        for extra in [0u8, 40] {
            let router = Arc::new(Router::new(0));
            let (a, b, c) = (router.join(), router.join(), router.join());
            a.watch(&KeyRange::new(b"p/", b"p0"));
            b.watch(&KeyRange::new(b"p/x", b"p/y"));
            c.watch(&KeyRange::new(b"p/a", b"p/b\0"));
            for i in 0..extra {
                let other = [b'z', i];
                c.watch(&KeyRange::new(&other, &prefix_end(&other)));
            }
            let revs = [rev(1, &[b"p/xy"]), rev(2, &[b"p/b"]), rev(3, &[b"q", b"p"])];
            router.route(revs.iter(), 3);
            assert_eq!(a.take().0, vec![(1, 2)], "{extra} more prefixes");
            assert_eq!(b.take().0, vec![(1, 1)], "{extra} more prefixes");
            assert_eq!(c.take().0, vec![(2, 2)], "{extra} more prefixes");
            let r = router.routes.lock();
            assert_eq!(r.index.len(), 3 + extra as usize);
        }
    }

    /// Consecutive revisions merge into one span; past MAX_SPANS the newest span stretches.
    #[test]
    fn spans_merge_and_stay_bounded() {
        let router = Arc::new(Router::new(0));
        let a = router.join();
        a.watch(&KeyRange::single(b"a"));
        let revs: Vec<RevEvents> = (1..=5).map(|i| rev(i, &[b"a"])).collect();
        router.route(revs.iter(), 5);
        assert_eq!(a.take().0, vec![(1, 5)]);
        for i in 0..(MAX_SPANS as i64 + 10) {
            let r = 6 + 2 * i;
            router.route([rev(r, &[b"a"]), rev(r + 1, &[b"b"])].iter(), r + 1);
        }
        let (spans, routed) = a.take();
        assert_eq!(spans.len(), MAX_SPANS);
        assert_eq!(spans[0], (6, 6));
        assert_eq!(
            *spans.last().unwrap(),
            (6 + 2 * (MAX_SPANS as i64 - 1), routed - 1)
        );
        for w in spans.windows(2) {
            assert!(w[0].1 < w[1].0, "{spans:?}");
        }
    }

    /// What the router does not know (revisions not built, or skipped) goes to every stream;
    /// `wake_all` wakes streams routed nothing too; a dropped stream leaves the router.
    #[test]
    fn unknown_revisions_go_to_every_stream() {
        let router = Arc::new(Router::new(0));
        let (a, b, c) = (router.join(), router.join(), router.join());
        a.watch(&KeyRange::single(b"a"));
        router.route_unknown(7);
        router.wake();
        assert!(woken(&a) && woken(&b));
        assert_eq!(b.take(), (vec![(1, 7)], 7));
        router.route([rev(8, &[b"a"])].iter(), 8);
        assert_eq!(a.take(), (vec![(1, 8)], 8));
        // Revisions 9..=11 never routed: every stream gets them with the next ones.
        router.route([rev(12, &[b"a"])].iter(), 12);
        assert_eq!(a.take().0, vec![(9, 12)]);
        assert_eq!(b.take().0, vec![(9, 11)]);
        router.wake();
        c.take();
        router.wake_all();
        assert!(woken(&c));
        drop(b);
        assert_eq!(router.stream_count(), 2);
    }
}
