//! Physical compaction in the background (etcd's `scheduleCompaction`). Applying a Compaction
//! only moves the store's compaction revision (reads below it fail from then on); this thread
//! then drops the history behind it from the key index and the stored revisions, a bounded
//! step at a time, so the raft thread never waits for a walk over the whole keyspace.
//!
//! A reader whose index walk spans several steps registers the revision it reads at
//! ([`Readers`]); a step never compacts past a registered reader, so a long range that began
//! before a compaction finishes with the answer it began with. The applier's `--physical`
//! callers wait for [`Compaction::wait_done`].
//!
//! Nothing here is durable on its own: after a restart (or a snapshot install) the store is
//! loaded from whatever revisions are stored, and a pass to the stored compaction revision
//! drops what a pass cut short had left.

use super::Store;
use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Keys compacted under one hold of the index's write lock (etcd's `compactionBatchLimit`).
const STEP_KEYS: usize = 1000;
/// Stored revisions deleted in one fjall batch, at most (a step stops once it has this many).
const STEP_REVISIONS: usize = 1000;
/// How long a step waits before looking again when an older reader holds it off.
const READER_WAIT: Duration = Duration::from_millis(5);
/// How long the thread waits after a storage error before it tries again.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// A pause after each step that deleted something (etcd pauses 10 ms per batch): the deletes
/// are writes to the one fjall worker's memtables, as the applier's are.
const STEP_PAUSE: Duration = Duration::from_millis(2);
/// fjall makes every writer sleep (the raft thread too) once a keyspace has 4 sealed memtables
/// waiting for its one worker; the compactor holds back well before that.
const MAX_SEALED_MEMTABLES: usize = 1;
/// The longest the compactor holds back for fjall's flushes before each step.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Readers walking the index at a revision, for longer than one step.
#[derive(Default)]
pub(super) struct Readers(Mutex<BTreeMap<i64, usize>>);

impl Readers {
    /// Registers a reader at `at`; call it under the index's read lock, having checked that
    /// `at` is not below the compaction revision.
    pub(super) fn register(&self, at: i64) -> ReaderGuard<'_> {
        *self.0.lock().entry(at).or_default() += 1;
        ReaderGuard { readers: self, at }
    }

    fn oldest(&self) -> Option<i64> {
        self.0.lock().keys().next().copied()
    }
}

pub(crate) struct ReaderGuard<'a> {
    readers: &'a Readers,
    at: i64,
}

impl ReaderGuard<'_> {
    pub(super) fn at(&self) -> i64 {
        self.at
    }
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.readers.0.lock();
        if let Some(n) = m.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.at);
            }
        }
    }
}

#[derive(Default)]
struct State {
    /// The compaction revision to reach.
    target: i64,
    /// The compaction revision the stored history is compacted to (-1: not known to be).
    done: i64,
    /// Bumped by [`Compaction::restart`]: a pass that began before does not count.
    epoch: u64,
    stopped: bool,
}

/// What the store shares with its compactor thread.
pub(super) struct Compaction {
    ctl: Arc<Control>,
}

struct Control {
    state: Mutex<State>,
    wake: Condvar,
    done: watch::Sender<i64>,
}

impl Compaction {
    pub(super) fn new(compact_rev: i64) -> Self {
        let (done, _) = watch::channel(-1);
        Compaction {
            ctl: Arc::new(Control {
                // A stored compaction revision gets one pass after a restart: a pass cut short
                // by the stop may have left revisions behind it.
                state: Mutex::new(State {
                    target: compact_rev,
                    done: -1,
                    ..Default::default()
                }),
                wake: Condvar::new(),
                done,
            }),
        }
    }

    /// A compaction to `rev` was applied.
    pub(super) fn request(&self, rev: i64) {
        let mut s = self.ctl.state.lock();
        s.target = s.target.max(rev);
        self.ctl.wake.notify_one();
    }

    /// The whole state was replaced: compact it to `rev` from scratch.
    pub(super) fn restart(&self, rev: i64) {
        let mut s = self.ctl.state.lock();
        s.target = rev;
        s.done = -1;
        s.epoch += 1;
        self.ctl.wake.notify_one();
    }

    /// Resolves once the stored history is compacted to `rev` or beyond.
    pub(super) async fn wait_done(&self, rev: i64) {
        let mut rx = self.ctl.done.subscribe();
        // The sender lives as long as the store (the caller holds it).
        let _ = rx.wait_for(|d| *d >= rev).await;
    }
}

impl Drop for Compaction {
    fn drop(&mut self) {
        self.ctl.state.lock().stopped = true;
        self.ctl.wake.notify_one();
    }
}

/// Starts the compactor thread. It holds the store only for a step at a time, and ends once
/// the store is dropped.
pub(super) fn start(store: &Arc<Store>) -> Result<()> {
    let weak = Arc::downgrade(store);
    let ctl = store.compaction.ctl.clone();
    std::thread::Builder::new()
        .name("mvcc-compactor".into())
        .spawn(move || run(&ctl, &weak))
        .map_err(Error::internal)?;
    Ok(())
}

enum Pass {
    Done,
    /// The state was replaced under the pass, or a storage error: look at the target again.
    Interrupted,
    Stopped,
}

fn run(ctl: &Control, store: &Weak<Store>) {
    loop {
        let (target, epoch) = {
            let mut s = ctl.state.lock();
            while !s.stopped && s.target <= s.done {
                ctl.wake.wait(&mut s);
            }
            if s.stopped {
                return;
            }
            (s.target, s.epoch)
        };
        let started = std::time::Instant::now();
        match pass(store, target) {
            Pass::Done => {
                let mut s = ctl.state.lock();
                if s.epoch == epoch {
                    s.done = s.done.max(target);
                }
                drop(s);
                ctl.done.send_if_modified(|d| {
                    let raised = target > *d;
                    *d = (*d).max(target);
                    raised
                });
                tracing::info!(revision = target, took = ?started.elapsed(), "compaction finished");
            }
            Pass::Interrupted => {}
            Pass::Stopped => return,
        }
    }
}

/// One pass over the key index, compacting it to `target` a step at a time and deleting the
/// dropped revisions' values after each step.
fn pass(weak: &Weak<Store>, target: i64) -> Pass {
    let mut resume: Option<Vec<u8>> = None;
    let mut generation = None;
    loop {
        let Some(store) = weak.upgrade() else {
            return Pass::Stopped;
        };
        let step = {
            let mut inner = store.inner.write();
            if *generation.get_or_insert(inner.generation) != inner.generation {
                return Pass::Interrupted;
            }
            if store.readers.oldest().is_some_and(|at| at < target) {
                None
            } else {
                Some(inner.index.compact_chunk(
                    target,
                    resume.as_deref(),
                    STEP_KEYS,
                    STEP_REVISIONS,
                ))
            }
        };
        let Some((dropped, next)) = step else {
            drop(store);
            std::thread::sleep(READER_WAIT);
            continue;
        };
        if !dropped.is_empty() {
            let kv = &store.backend.kv;
            let waited = std::time::Instant::now();
            while kv.sealed_memtable_count() > MAX_SEALED_MEMTABLES && waited.elapsed() < FLUSH_WAIT
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut batch = store.backend.db.batch();
            for rev in &dropped {
                batch.remove(&store.backend.kv, rev.to_bytes());
            }
            if let Err(e) = batch
                .commit()
                .map_err(crate::error::Error::from)
                .and_then(|()| store.backend.rotate_full_memtables())
            {
                tracing::error!(error = %e, "compaction: deleting revisions failed");
                drop(store);
                std::thread::sleep(ERROR_BACKOFF);
                return Pass::Interrupted;
            }
        }
        match next {
            Some(k) => resume = Some(k),
            None => return Pass::Done,
        }
        if !dropped.is_empty() {
            drop(store);
            std::thread::sleep(STEP_PAUSE);
        }
    }
}
