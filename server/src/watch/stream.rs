//! One client Watch stream (etcd's `serverWatchStream` + `watchStream`), independent of the wire:
//! the gRPC face feeds it requests and forwards its responses; the HTTP gateway does the same.
//!
//! Guarantees: `created` goes out before any event of that watcher; events leave in revision
//! order, every revision whole (unless the watcher asked for `fragment`), none twice.
//!
//! The task wakes when the hub routes it a revision that touches one of its watchers' ranges
//! ([`Route`]), or for its client's requests; revisions that touch none of them cost it nothing.
//!
//! Memory: a catch-up step holds one batch of about [`BATCH_BYTES`] (shared with the hub's
//! history where it can), builds one watcher's response from it at a time, and queues it in a
//! byte-bounded [`Outbox`]; a client that reads nothing stops the task there, holding no more.

use super::outbox::{Gone, Outbox};
use super::routing::{Route, Span};
use super::watchers::{Watcher, Watchers};
use super::WatchHub;
use crate::error::Error;
use crate::mvcc::KeyRange;
use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use etcd_proto::mvccpb::Event;
use futures::{Stream, StreamExt};
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Builds a full response header for a store revision (0: no revision).
pub type HeaderFn = Arc<dyn Fn(i64) -> ResponseHeader + Send + Sync>;

/// Whether the stream's caller may watch `[key, range_end)`; `Err` holds the cancel reason
/// (etcd's `isWatchPermitted`).
pub type PermitFn = Arc<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

pub struct StreamConfig {
    /// etcd's `--experimental-watch-progress-notify-interval`; zero means no periodic
    /// notifications (etcd's meaning; a zero-period tokio interval would panic).
    pub progress_interval: Duration,
    /// Responses of a `fragment` watcher above this size are split.
    pub max_response_bytes: usize,
    /// The auth check of each watch created; `None` allows all.
    pub permit: Option<PermitFn>,
}

/// Bytes of events fetched per catch-up step (whole revisions, at least one). etcd fetches
/// 1000 revisions (`watchBatchMaxRevs`) whatever their size.
pub const BATCH_BYTES: usize = 1 << 20;

struct WatchStream {
    hub: Arc<WatchHub>,
    header: HeaderFn,
    cfg: StreamConfig,
    out: Outbox,
    watchers: Watchers,
    route: Route,
    /// Revisions routed here that the synced watchers have not read yet, oldest first.
    pending: VecDeque<Span>,
    /// The newest revision the hub had routed when the stream last looked: up to it, nothing
    /// outside `pending` touches the synced watchers, and every revision is in the store.
    routed_rev: i64,
    next_id: i64,
    /// The compaction revision every watcher is known to be at or past (see
    /// [`WatchStream::cancel_compacted`]).
    compact_checked: i64,
}

/// The client went away: stop serving the stream.
struct Closed;

/// Serves one stream until the client stops reading. Requests ending (client half-close) does
/// not end the stream: events keep flowing, as in etcd.
pub async fn serve<S>(
    hub: Arc<WatchHub>,
    header: HeaderFn,
    cfg: StreamConfig,
    mut requests: S,
    out: Outbox,
) where
    S: Stream<Item = WatchRequest> + Unpin,
{
    let mut ticker = progress_ticker(cfg.progress_interval).await;
    let mut ws = WatchStream {
        route: hub.route(),
        hub,
        header,
        cfg,
        out,
        watchers: Watchers::default(),
        pending: VecDeque::new(),
        routed_rev: 0,
        next_id: 0,
        compact_checked: 0,
    };
    let mut input_open = true;
    loop {
        let step = tokio::select! {
            req = requests.next(), if input_open => match req {
                Some(r) => ws.handle(r).await,
                None => { input_open = false; Ok(()) }
            },
            _ = ws.route.wait() => ws.catch_up().await,
            _ = next_tick(&mut ticker) => ws.progress_tick().await,
            _ = ws.out.closed() => Err(Closed),
        };
        if step.is_err() {
            return;
        }
    }
}

/// The progress notification timer, already past its immediate first tick; `None` when the
/// interval is zero (off).
async fn progress_ticker(period: Duration) -> Option<tokio::time::Interval> {
    if period.is_zero() {
        return None;
    }
    let mut ticker = tokio::time::interval(period);
    ticker.tick().await;
    Some(ticker)
}

/// The next progress tick; never, when notifications are off.
async fn next_tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl WatchStream {
    async fn send(&self, resp: WatchResponse) -> Result<(), Closed> {
        self.out.send(resp).await.map_err(|Gone| Closed)
    }

    fn current(&self) -> i64 {
        self.hub.current_rev()
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.remove(c.watch_id) {
                    self.send(WatchResponse {
                        header: Some((self.header)(self.current())),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Catching up first makes every watcher synced, so the notify may go out; not
                // while one is still behind, reading history a snapshot install holds back
                // (etcd sends none to unsynced ones). The revision is the one every synced
                // watcher was sent everything up to.
                self.catch_up().await?;
                let Some(synced) = self.synced_rev() else {
                    return Ok(());
                };
                self.send(WatchResponse {
                    header: Some((self.header)(synced)),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }

    async fn reject(&self, reason: String) -> Result<(), Closed> {
        self.send(WatchResponse {
            header: Some((self.header)(self.current())),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Closed> {
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        if let Some(permit) = &self.cfg.permit {
            if let Err(reason) = permit(&key, &c.range_end) {
                return self.reject(reason).await;
            }
        }
        let range = KeyRange::new(&key, &c.range_end);
        if range.is_empty() {
            return self.reject("mvcc: watcher range is empty".into()).await;
        }
        if c.start_revision < 0 {
            return self.reject(Error::Compacted.to_string()).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(c.watch_id) {
                return self
                    .reject("mvcc: duplicate watch ID provided on the WatchStream".into())
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        // Routed here before the current revision is read: a revision recorded after this
        // read is routed to the watcher, one recorded before it is not owed.
        let routed = self.route.watch(&range);
        let current = self.current();
        // It may start below the compaction point.
        self.compact_checked = 0;
        let compact = self.hub.store().compact_rev();
        let filters: Vec<i32> = c.filters;
        self.watchers.insert(
            id,
            Watcher {
                range,
                next_rev: if c.start_revision == 0 {
                    current + 1
                } else {
                    c.start_revision
                },
                prev_kv: c.prev_kv,
                no_put: filters.contains(&(FilterType::Noput as i32)),
                no_delete: filters.contains(&(FilterType::Nodelete as i32)),
                progress_notify: c.progress_notify,
                fragment: c.fragment,
                notified_since_tick: false,
            },
            routed,
        );
        self.send(WatchResponse {
            header: Some((self.header)(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        if c.start_revision != 0 && c.start_revision < compact {
            // etcd's: created, then cancelled. Here at once, even while the compaction's
            // chunk is not routed yet (the watcher would count as synced, reading the history).
            self.remove(id);
            return self.send_compacted(id, compact).await;
        }
        self.catch_up().await
    }

    /// Removes watcher `id`; false if there is none.
    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(id) else {
            return false;
        };
        self.route.unwatch(&w.range);
        true
    }

    /// Brings the synced watchers up to the revision the hub routed last, through the
    /// revisions routed here, and the watchers behind up to it too, through every revision.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        let (spans, routed) = self.route.take();
        self.pending.extend(spans);
        self.routed_rev = self.routed_rev.max(routed);
        loop {
            self.skip_unrouted();
            self.cancel_compacted().await?;
            // A compaction may have moved the synced watchers past some of what is pending.
            self.skip_unrouted();
            let Some((from, to, synced)) = self.next_step() else {
                return Ok(());
            };
            let batch = match self.hub.events(from, to, BATCH_BYTES) {
                Ok(b) => b,
                // A compaction raced with us, or the history dropped what a compaction left
                // only there: the next turn cancels the affected watchers.
                Err(Error::Compacted) => continue,
                // The store is being replaced by a snapshot: the watchers stay where they are,
                // and catch up once the install is done (the hub wakes every stream).
                Err(Error::SnapshotInstalling) => return Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "watch history read failed");
                    return Err(Closed);
                }
            };
            let upto = batch.upto;
            // A watcher behind gets a `prev_kv` only while it is above the compaction point,
            // as etcd's unsynced watchers read it from the store; the synced ones get it as
            // it was when written (from the history), as etcd's got it then.
            let compact = if synced {
                0
            } else {
                self.hub.store().compact_rev()
            };
            // The watchers of the group move past the batch; those of its keys (found through
            // the key index) are owed some of its events.
            let due = if synced {
                self.watchers.advance_synced(&batch.revs, upto)
            } else {
                self.watchers.advance_behind(&batch.revs, upto)
            };
            // One watcher's copy of the events at a time: it is queued before the next is built.
            for (id, from) in due {
                let Some(w) = self.watchers.get_mut(id) else {
                    continue;
                };
                let events = w.events_from(&batch.revs, from, compact);
                if events.is_empty() {
                    continue;
                }
                w.notified_since_tick = true;
                let fragment = w.fragment;
                self.send_events(id, fragment, upto, events).await?;
            }
        }
    }

    /// Drops the pending spans the synced watchers are past, and moves them over what was not
    /// routed here: up to the first pending revision (or the last routed anywhere), none
    /// touches them. Without a synced watcher, nothing pending is read.
    fn skip_unrouted(&mut self) {
        if !self.watchers.has_synced() {
            // They may be every revision (from `route_unknown`), with no one to read them for.
            self.pending.clear();
        }
        let synced_next = self.watchers.synced_next();
        while self.pending.front().is_some_and(|s| s.1 < synced_next) {
            self.pending.pop_front();
        }
        match self.pending.front() {
            Some(&(from, _)) => self.watchers.synced_to(from - 1),
            None => self.watchers.synced_to(self.routed_rev),
        }
    }

    /// The next revisions to read, `from..=to`, and for whom: the synced watchers (true: a
    /// pending span) or those behind (every revision up to the last routed); `None` when all
    /// are caught up.
    fn next_step(&self) -> Option<(i64, i64, bool)> {
        match self.pending.front() {
            Some(&(from, to)) => Some((from.max(self.watchers.synced_next()), to, true)),
            None => {
                let from = self.watchers.behind_from(self.routed_rev)?;
                Some((from, self.routed_rev, false))
            }
        }
    }

    /// The revision every watcher was sent everything up to, for a progress notification;
    /// `None` while some are not there yet (behind, or revisions routed here not read: a
    /// snapshot install held them back).
    fn synced_rev(&self) -> Option<i64> {
        let rev = self.watchers.synced_next() - 1;
        let behind = self.watchers.iter().any(|(_, _, next)| next <= rev);
        (self.pending.is_empty() && !behind).then_some(rev)
    }

    /// Cancels the watchers that need a revision below the compaction point that can no longer
    /// be read. Watchers only move forward, so once none is owed a revision below a compaction
    /// point, none needs checking again until the next compaction or a new watcher.
    ///
    /// The synced watchers are checked only once their position is known at or past the
    /// compaction, or a revision routed to them is below it: a compaction is visible from the
    /// applier's commit on, before its chunk's revisions are routed, and a quiet stream's
    /// position moves only with what was routed. They are cancelled only when the hub's
    /// history no longer holds what they missed (etcd's synced watchers got it as it was
    /// written; only a slow one is cancelled). A watcher behind (etcd's unsynced: created in the
    /// past) reads the store as etcd's does, and is cancelled once below the compaction point.
    async fn cancel_compacted(&mut self) -> Result<(), Closed> {
        let compact = self.hub.store().compact_rev();
        if compact <= self.compact_checked {
            return Ok(());
        }
        // With a span pending, the synced watchers are at `synced_next` for sure.
        let synced_next = self.watchers.synced_next();
        let synced_known = synced_next >= compact || !self.pending.is_empty();
        let synced_lost = synced_known && !self.hub.readable_from(synced_next, compact);
        let behind: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(id, _, next)| {
                *next < compact && (self.watchers.is_behind(*id) || synced_lost)
            })
            .map(|(id, _, _)| id)
            .collect();
        for &id in &behind {
            self.remove(id);
        }
        if synced_lost {
            self.watchers.compacted(compact);
        }
        if synced_known && self.watchers.iter().all(|(_, _, next)| next >= compact) {
            self.compact_checked = compact;
        }
        for id in behind {
            self.send_compacted(id, compact).await?;
        }
        Ok(())
    }

    /// Tells the client that watcher `id` was cancelled: it is owed revisions compacted away.
    async fn send_compacted(&self, id: i64, compact: i64) -> Result<(), Closed> {
        self.send(WatchResponse {
            header: Some((self.header)(0)),
            watch_id: id,
            canceled: true,
            compact_revision: compact,
            ..Default::default()
        })
        .await
    }

    async fn send_events(
        &self,
        id: i64,
        fragment: bool,
        rev: i64,
        events: Vec<Event>,
    ) -> Result<(), Closed> {
        let header = Some((self.header)(rev));
        // Sized only for a `fragment` watcher: the others get one response whatever its size.
        let whole = || events.iter().map(|e| e.encoded_len()).sum::<usize>();
        if !fragment || events.len() < 2 || whole() <= self.cfg.max_response_bytes {
            return self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    events,
                    ..Default::default()
                })
                .await;
        }
        let mut chunks: Vec<Vec<Event>> = vec![Vec::new()];
        let mut chunk_size = 0;
        for e in events {
            let n = e.encoded_len();
            if chunk_size + n > self.cfg.max_response_bytes && !chunks.last().unwrap().is_empty() {
                chunks.push(Vec::new());
                chunk_size = 0;
            }
            chunk_size += n;
            chunks.last_mut().unwrap().push(e);
        }
        let last = chunks.len() - 1;
        for (i, events) in chunks.into_iter().enumerate() {
            self.send(WatchResponse {
                header,
                watch_id: id,
                events,
                fragment: i != last,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Periodic progress notifications for synced watchers that asked for them and had nothing
    /// to report since the last tick.
    async fn progress_tick(&mut self) -> Result<(), Closed> {
        self.catch_up().await?;
        let current = self.watchers.synced_next() - 1;
        // Revisions routed here and not read yet (an install held them back): none is synced.
        let held = !self.pending.is_empty();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w, next)| {
                !held && w.progress_notify && *next > current && !w.notified_since_tick
            })
            .map(|(id, _, _)| id)
            .collect();
        for (_, w) in self.watchers.iter_mut() {
            w.notified_since_tick = false;
        }
        for id in due {
            self.send(WatchResponse {
                header: Some((self.header)(current)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

impl Drop for WatchStream {
    /// Takes the watchers' ranges out of the hub's routes (the route itself leaves after).
    fn drop(&mut self) {
        for (_, w, _) in self.watchers.iter() {
            self.route.unwatch(&w.range);
        }
    }
}
