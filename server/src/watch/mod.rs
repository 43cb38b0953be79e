//! Watch (etcd's `watchableStore`), split in two:
//! - [`WatchHub`]: the applier publishes every new revision's events here. It keeps the most
//!   recent revisions in memory and announces the current revision; it never waits for anyone.
//! - [`stream`]: one task per client Watch stream. Each pulls the events it still needs (from
//!   the hub's memory, or from stored history when it fell behind) at its own pace, so a slow
//!   watcher never blocks writers or other watchers.

pub mod stream;

use crate::error::{Error, Result};
use crate::mvcc::{RevEvents, Store};
use parking_lot::RwLock;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;

/// Revisions kept in memory for watchers that are a little behind.
const RECENT_REVISIONS: usize = 4096;

pub struct WatchHub {
    store: Arc<Store>,
    recent: RwLock<VecDeque<Arc<RevEvents>>>,
    current: watch::Sender<i64>,
}

impl WatchHub {
    pub fn new(store: Arc<Store>) -> Self {
        let (current, _) = watch::channel(store.current_rev());
        WatchHub {
            store,
            recent: RwLock::new(VecDeque::new()),
            current,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Called by the applier after each committed chunk, with its revisions' events, or `None`
    /// when it built none (no stream was open). Then the recent revisions are forgotten, so
    /// that they stay contiguous: a stream opened later reads what it misses from the store.
    pub fn publish(&self, revs: Option<Vec<RevEvents>>, current: i64) {
        match revs {
            Some(revs) if !revs.is_empty() => {
                let mut recent = self.recent.write();
                for r in revs {
                    recent.push_back(Arc::new(r));
                }
                while recent.len() > RECENT_REVISIONS {
                    recent.pop_front();
                }
            }
            Some(_) => {}
            None => self.recent.write().clear(),
        }
        self.current.send_if_modified(|c| {
            let changed = *c != current;
            *c = current;
            changed
        });
    }

    /// Forgets recent revisions after the store was replaced by a snapshot.
    pub fn reset(&self) {
        self.recent.write().clear();
        let current = self.store.current_rev();
        self.current.send_replace(current);
    }

    pub fn current_rev(&self) -> i64 {
        *self.current.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.current.subscribe()
    }

    /// How many client watch streams are being served (each holds one subscription).
    pub fn stream_count(&self) -> usize {
        self.current.receiver_count()
    }

    /// Events of revisions `from..=to`, at most `max_revs` revisions of them, with `prev_kv`
    /// filled. Errors with `Compacted` when `from` is below the compaction point.
    pub fn events(&self, from: i64, to: i64, max_revs: usize) -> Result<Vec<Arc<RevEvents>>> {
        if from > to {
            return Ok(Vec::new());
        }
        if from < self.store.compact_rev() {
            return Err(Error::Compacted);
        }
        let to = to.min(from.saturating_add(max_revs as i64 - 1));
        {
            let recent = self.recent.read();
            if let Some(first) = recent.front() {
                if first.rev <= from {
                    let skip = recent.partition_point(|r| r.rev < from);
                    return Ok(recent
                        .iter()
                        .skip(skip)
                        .take_while(|r| r.rev <= to)
                        .cloned()
                        .collect());
                }
            }
        }
        Ok(self
            .store
            .events(from, to)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}
