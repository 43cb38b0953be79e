//! Watch (etcd's `watchableStore`), split in two:
//! - [`WatchHub`]: the applier publishes every new revision's events here. It keeps the most
//!   recent revisions in memory and announces the current revision; it never waits for anyone.
//! - [`stream`]: one task per client Watch stream. Each pulls the events it still needs (from
//!   the hub's memory, or from stored history when it fell behind) at its own pace, so a slow
//!   watcher never blocks writers or other watchers.
//! - [`routing`]: which streams watch which keys. The hub wakes only the streams a new
//!   revision touches, and tells them which revisions to read.
//! - `keyindex`: the watched keys and ranges, found by a key they hold (for the routing, and
//!   for each stream's watchers).
//!
//! Memory is bounded in bytes, not in revisions: the history holds at most
//! [`HISTORY_BYTES`] of keys and values (a revision can carry a 1.5 MiB value and its
//! `prev_kv`), and one read of [`WatchHub::events`] returns about `max_bytes` of events.

mod keyindex;
pub mod outbox;
pub mod routing;
pub mod stream;
mod watchers;

use crate::error::Result;
use crate::mvcc::{RevEvents, Store};
use etcd_proto::etcdserverpb::WatchResponse;
use etcd_proto::mvccpb::{Event, KeyValue};
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes of recent revisions (keys, values, `prev_kv`s) kept in memory for watchers that are a
/// little behind; older ones are read from the store.
pub const HISTORY_BYTES: usize = 64 << 20;

/// Revisions of the first store read of a catch-up step: small, because nothing is known yet
/// about how large these revisions are. Later reads are sized from what the earlier ones held.
const FIRST_STORE_WINDOW: i64 = 4;

/// At most this many revisions per store read (etcd's `watchBatchMaxRevs`).
const MAX_STORE_WINDOW: i64 = 1000;

/// The memory one event holds: its struct plus the bytes of its key/value and `prev_kv`.
pub fn event_bytes(e: &Event) -> usize {
    fn kv(kv: &Option<KeyValue>) -> usize {
        kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
    }
    std::mem::size_of::<Event>() + kv(&e.kv) + kv(&e.prev_kv)
}

/// The memory one revision's events hold.
pub fn rev_bytes(r: &RevEvents) -> usize {
    std::mem::size_of::<RevEvents>() + r.events.iter().map(event_bytes).sum::<usize>()
}

/// The memory a response holds (its events; the rest is a few words).
pub fn response_bytes(r: &WatchResponse) -> usize {
    std::mem::size_of::<WatchResponse>() + r.events.iter().map(event_bytes).sum::<usize>()
}

/// Recent revisions, contiguous, oldest first, with their sizes.
#[derive(Default)]
struct History {
    revs: VecDeque<(Arc<RevEvents>, usize)>,
    bytes: usize,
}

impl History {
    fn clear(&mut self) {
        self.revs.clear();
        self.bytes = 0;
    }
}

/// Revisions `from..=upto` of the history, in order: every revision in that span that has events
/// (all of them, unless compacted away in a race), each whole.
pub struct EventBatch {
    pub revs: Vec<Arc<RevEvents>>,
    pub upto: i64,
}

pub struct WatchHub {
    store: Arc<Store>,
    recent: RwLock<History>,
    max_history_bytes: usize,
    /// The current revision, announced to the revision feeds (lock and election waiters).
    current: watch::Sender<i64>,
    /// The current revision the streams were last woken for.
    announced: AtomicI64,
    router: Arc<routing::Router>,
}

impl WatchHub {
    pub fn new(store: Arc<Store>) -> Self {
        Self::with_history_bytes(store, HISTORY_BYTES)
    }

    /// A hub keeping at most `max_history_bytes` of recent revisions in memory.
    pub fn with_history_bytes(store: Arc<Store>, max_history_bytes: usize) -> Self {
        let rev = store.current_rev();
        let (current, _) = watch::channel(rev);
        WatchHub {
            store,
            recent: RwLock::new(History::default()),
            max_history_bytes,
            current,
            announced: AtomicI64::new(rev),
            router: Arc::new(routing::Router::new(rev)),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// [`WatchHub::record`], then [`WatchHub::announce`] (the applier answers its proposers in
    /// between; tests that play the applier need no gap).
    #[cfg(test)]
    pub fn publish(&self, revs: Option<Vec<RevEvents>>, current: i64) {
        self.record(revs, current);
        self.announce();
    }

    /// Called by the applier after each committed chunk, with its revisions' events, or `None`
    /// when it built none (no stream was open). Then the recent revisions are forgotten, so
    /// that they stay contiguous: a stream opened later reads what it misses from the store.
    /// The oldest revisions leave once the history holds more than its byte cap.
    ///
    /// The revisions are routed to the streams watching their keys before the current revision
    /// moves, so a stream never sees a current revision past what was routed to it. The
    /// streams are not woken yet: the applier answers the chunk's proposers first, so that a
    /// writer's answer is not queued behind every stream the chunk wakes. A watch created after
    /// that answer already starts past the chunk: the current revision is set here.
    pub fn record(&self, revs: Option<Vec<RevEvents>>, current: i64) {
        match revs {
            Some(revs) if !revs.is_empty() => {
                let revs: Vec<Arc<RevEvents>> = revs.into_iter().map(Arc::new).collect();
                self.router.route(revs.iter().map(|r| r.as_ref()), current);
                let mut recent = self.recent.write();
                for r in revs {
                    let n = rev_bytes(&r);
                    recent.bytes += n;
                    recent.revs.push_back((r, n));
                }
                while recent.bytes > self.max_history_bytes {
                    let Some((_, n)) = recent.revs.pop_front() else {
                        break;
                    };
                    recent.bytes -= n;
                }
            }
            Some(_) => {}
            None => {
                self.recent.write().clear();
                // Not built: a stream that opened meanwhile reads them from the store.
                self.router.route_unknown(current);
            }
        }
        // Set without waking anyone (a `false` from the closure); `announce` wakes the streams.
        self.current.send_if_modified(|c| {
            *c = current;
            false
        });
    }

    /// Wakes the streams that watch a key of what was recorded since the last call, and the
    /// revision feeds.
    pub fn announce(&self) {
        self.router.wake();
        let current = self.current_rev();
        if self.announced.swap(current, Ordering::AcqRel) != current {
            self.current.send_modify(|_| {});
        }
    }

    /// Forgets recent revisions after the store was replaced by a snapshot; every stream is
    /// woken, to read what changed from the new store (or to retry a read the install held
    /// back).
    pub fn reset(&self) {
        self.recent.write().clear();
        let current = self.store.current_rev();
        self.router.route_unknown(current);
        self.current.send_replace(current);
        self.announced.store(current, Ordering::Release);
        self.router.wake_all();
    }

    /// A new stream's place among the watched keys.
    pub fn route(&self) -> routing::Route {
        self.router.join()
    }

    pub fn current_rev(&self) -> i64 {
        *self.current.borrow()
    }

    /// The current revision as it is announced, for the revision feeds.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.current.subscribe()
    }

    /// How many watch streams and revision feeds are being served.
    pub fn stream_count(&self) -> usize {
        self.router.stream_count() + self.current.receiver_count()
    }

    /// Bytes the in-memory history holds now.
    pub fn history_bytes(&self) -> usize {
        self.recent.read().bytes
    }

    /// Events of revisions from `from` on, up to `to`, with `prev_kv` filled: whole revisions
    /// until about `max_bytes` of them are gathered (at least one revision). Recent revisions are
    /// shared with the history; older ones are read from the store a few at a time, each read
    /// sized from the revisions read before it, so a step never loads much more than `max_bytes`.
    /// Errors with `Compacted` when a revision it must read from the store is below the
    /// compaction point ([`WatchHub::readable_from`] says when none is).
    pub fn events(&self, from: i64, to: i64, max_bytes: usize) -> Result<EventBatch> {
        let mut batch = EventBatch {
            revs: Vec::new(),
            upto: from - 1,
        };
        if from > to {
            return Ok(batch);
        }
        let mut bytes = 0;
        let mut window = FIRST_STORE_WINDOW;
        while batch.upto < to && bytes < max_bytes {
            let next = batch.upto + 1;
            if self.take_from_history(next, to, max_bytes, &mut batch, &mut bytes) {
                continue;
            }
            let hi = to.min(next.saturating_add(window - 1));
            let (mut read, mut read_bytes) = (0i64, 0usize);
            for r in self.store.events(next, hi)? {
                read += 1;
                read_bytes += rev_bytes(&r);
                batch.revs.push(Arc::new(r));
            }
            bytes += read_bytes;
            batch.upto = hi;
            let per_rev = (read_bytes / read.max(1) as usize).max(1);
            let room = max_bytes.saturating_sub(bytes) / per_rev;
            window = (room as i64).clamp(1, MAX_STORE_WINDOW);
        }
        Ok(batch)
    }

    /// Whether every revision from `rev` on can still be read, the store being compacted at
    /// `compact`: none is below the compaction point, or the history holds `rev` and every
    /// revision after it up to that point. A compaction removes old revisions from the store,
    /// not from the history: a stream a little behind when the store was compacted to its
    /// current revision still reads what it missed (etcd's synced watchers got those events as
    /// they were written).
    pub fn readable_from(&self, rev: i64, compact: i64) -> bool {
        if rev >= compact {
            return true;
        }
        let recent = self.recent.read();
        match (recent.revs.front(), recent.revs.back()) {
            (Some((first, _)), Some((last, _))) => first.rev <= rev && last.rev + 1 >= compact,
            _ => false,
        }
    }

    /// Takes what the history holds from `next` on into `batch`; false when it took nothing
    /// (it does not hold `next`), so that the caller reads from the store and always moves on.
    fn take_from_history(
        &self,
        next: i64,
        to: i64,
        max_bytes: usize,
        batch: &mut EventBatch,
        bytes: &mut usize,
    ) -> bool {
        let recent = self.recent.read();
        let held = |r: i64| {
            recent.revs.front().is_some_and(|(f, _)| f.rev <= r)
                && recent.revs.back().is_some_and(|(b, _)| b.rev >= r)
        };
        if !held(next) {
            return false;
        }
        let skip = recent.revs.partition_point(|(r, _)| r.rev < next);
        let before = batch.upto;
        for (r, n) in recent.revs.iter().skip(skip) {
            if r.rev > to || *bytes >= max_bytes {
                break;
            }
            *bytes += n;
            batch.upto = r.rev;
            batch.revs.push(r.clone());
        }
        batch.upto > before
    }
}

#[cfg(test)]
mod tests;
