//! Entries whose apply may take long, applied off the raft thread (etcd applies every entry
//! in a goroutine of its own behind `raftNode.applyc`). A range delete or a lease revoke costs
//! as much as the keys it reaches: `etcdctl del "" --prefix` over a million keys took 3.5 s to
//! apply on 2 cores, and with it on the raft thread the loop sent no heartbeat, answered no
//! ReadIndex and stepped no message for that long; a follower done sooner than its leader
//! would have campaigned. Such a batch goes to the applier thread, and the loop goes on.
//!
//! So does a batch of [`HAND_OVER_ENTRIES`] or more: under many clients apply is the largest
//! part of the raft thread's work (at 1000 clients, 173 entries a batch and 42% of that thread
//! on 2 cores), and the raft thread is the one part of a put that does not spread over cores.
//! Handed over, the raft thread's CPU per put at 1000 clients fell from 6.7-8.0 to 3.7-4.9 µs,
//! with throughput unchanged on 2 cores (where the cores, not that thread, are the limit).
//!
//! Every other batch the loop applies itself while the applier is idle: handing each batch
//! over cost a thread wakeup per commit round (a single client's put p50 0.63-0.66 -> 0.76 ms)
//! and more CPU under load (16 clients 5-14% fewer puts/s), on 2 cores. At 64 clients a batch
//! holds about 23 entries, so nearly all stay on the raft thread.
//!
//! Order: batches are applied in the order they are handed over. What the loop applies itself
//! (a batch, a conf change) it applies only while the applier is idle, so the state machine
//! sees the log in order and is never applied by two threads at once.
//!
//! The loop does not wait for the applier. A conf change that comes while the applier is busy,
//! and every entry after it, is held back in the raft log (as entries are behind a snapshot
//! install) and applied once the applier is idle ([`ApplyQueue::notify_when_idle`] wakes the
//! loop then). So is a batch that would take the queue past [`MAX_QUEUED_BYTES`]: memory stays
//! bounded, and meanwhile the loop heartbeats, steps messages and appends. A snapshot install
//! waits on its own thread until every batch before it was applied ([`IdleWaiter`]); the loop
//! waits for that thread only when a second snapshot comes during an install, and at a stop.
//!
//! Durability is unchanged: the loop writes entries before it queues them (fjall's one journal
//! keeps that order), and the log is compacted only up to the index the applier raised.

use super::node::{poll_recv, RaftStatus, StateMachine};
use crate::backend::Backend;
use parking_lot::{Condvar, Mutex};
use raft::eraftpb::Entry;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches of this many entries or more go to the applier thread.
pub const HAND_OVER_ENTRIES: usize = 64;

/// Bytes of queued entries past which the loop holds entries back in the log. Small in unit
/// tests, so that a test reaches it with a few entries.
pub const MAX_QUEUED_BYTES: usize = if cfg!(test) { 64 << 10 } else { 64 << 20 };

/// What one entry holds in the queue: its data and context, plus the struct.
fn entry_bytes(e: &Entry) -> usize {
    std::mem::size_of::<Entry>() + e.data.len() + e.context.len()
}

/// What is queued and not yet applied.
#[derive(Default)]
struct Backlog {
    bytes: usize,
    /// The loop holds entries back until the applier is idle: wake it then.
    wake_when_idle: bool,
}

#[derive(Default)]
struct Queued {
    backlog: Mutex<Backlog>,
    /// Signalled each time a batch was applied.
    applied: Condvar,
}

/// The loop's handle; dropping it ends the thread once every queued batch was applied.
pub struct ApplyQueue {
    /// Each batch with the bytes it counts for in [`Backlog`].
    tx: Option<Sender<(Vec<Entry>, usize)>>,
    queued: Arc<Queued>,
    thread: Option<JoinHandle<()>>,
}

impl ApplyQueue {
    /// Starts the applier thread for `sm`, which the loop shares for what it applies itself;
    /// `sm` writes to `backend`. `wake` wakes the loop (see [`ApplyQueue::notify_when_idle`]).
    pub fn start<S: StateMachine>(
        sm: Arc<S>,
        status: Arc<RaftStatus>,
        backend: Backend,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Vec<Entry>, usize)>();
        let queued = Arc::new(Queued::default());
        let q = queued.clone();
        let thread = super::spawn_vital("apply", move || {
            // Polls before sleeping, as the loop does: under load the next batch nearly always
            // comes within the poll window.
            while let Ok((entries, bytes)) = poll_recv(&rx, Duration::MAX) {
                // A writer seals its full memtables itself (`Backend::rotate_full_memtables`):
                // the loop, which does it once a turn, may be busy for long.
                let applied =
                    apply(&*sm, &status, entries).and_then(|()| backend.rotate_full_memtables());
                if let Err(e) = applied {
                    // As the raft loop on a storage error: a member must not go on from here.
                    tracing::error!(error = %e, "applier stopped on a storage error");
                    std::process::abort();
                }
                let mut left = q.backlog.lock();
                left.bytes -= bytes;
                if left.bytes == 0 && std::mem::take(&mut left.wake_when_idle) {
                    wake();
                }
                q.applied.notify_all();
            }
        })?;
        Ok(ApplyQueue {
            tx: Some(tx),
            queued,
            thread: Some(thread),
        })
    }

    /// Queues committed normal entries, in log order after those queued before; unless that
    /// would take the queue past [`MAX_QUEUED_BYTES`]: then hands them back, and the loop is
    /// woken once every batch queued was applied.
    pub fn try_submit(&self, entries: Vec<Entry>) -> Result<(), Vec<Entry>> {
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        {
            let mut queued = self.queued.backlog.lock();
            if queued.bytes > 0 && queued.bytes + bytes > MAX_QUEUED_BYTES {
                queued.wake_when_idle = true;
                return Err(entries);
            }
            queued.bytes += bytes;
        }
        if let Some(tx) = &self.tx {
            // The thread only ends when this sender is dropped, or aborts the process.
            let _ = tx.send((entries, bytes));
        }
        Ok(())
    }

    /// Whether every batch queued so far was applied (the loop may apply the next one itself).
    pub fn idle(&self) -> bool {
        self.queued.backlog.lock().bytes == 0
    }

    /// As [`ApplyQueue::idle`]; when not idle, the loop is woken once it is.
    pub fn notify_when_idle(&self) -> bool {
        let mut queued = self.queued.backlog.lock();
        queued.wake_when_idle |= queued.bytes > 0;
        queued.bytes == 0
    }

    /// A handle for another thread to wait until every batch queued so far was applied.
    pub fn idle_waiter(&self) -> IdleWaiter {
        IdleWaiter(self.queued.clone())
    }
}

/// See [`ApplyQueue::idle_waiter`].
pub struct IdleWaiter(Arc<Queued>);

impl IdleWaiter {
    /// Waits until every batch queued before the handle was taken, and since, was applied.
    pub fn wait(&self) {
        let mut queued = self.0.backlog.lock();
        while queued.bytes > 0 {
            self.0.applied.wait(&mut queued);
        }
    }
}

/// Applies one batch of committed normal entries, timed, and raises the applied index past it.
pub fn apply<S: StateMachine>(
    sm: &S,
    status: &RaftStatus,
    entries: Vec<Entry>,
) -> crate::error::Result<()> {
    let Some(last) = entries.last().map(|e| e.index) else {
        return Ok(());
    };
    let n = entries.len() as u64;
    let start = Instant::now();
    sm.apply(entries)?;
    crate::metrics::APPLY_BATCH.since(start);
    crate::metrics::APPLIED_ENTRIES.add(n);
    status.raise_applied(last);
    Ok(())
}

impl Drop for ApplyQueue {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::node::{start, Installer, RaftConfig, RaftHandle};
    use super::super::RaftStorage;
    use super::*;
    use crate::backend::Backend;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

    /// An entry whose apply takes [`SLOW_APPLY`], and says so.
    const SLOW: &[u8] = b"slow";
    const SLOW_APPLY: Duration = Duration::from_millis(2000);
    /// The loop's heartbeat in these tests: long, so that a loop left asleep with entries to
    /// apply shows (nothing else wakes it here).
    const HEARTBEAT: Duration = Duration::from_secs(5);
    /// How long after the slow entry everything is applied, at most.
    const CATCH_UP: Duration = Duration::from_millis(1500);

    /// A state machine that records what it applied, in order (a conf change as "conf").
    #[derive(Clone, Default)]
    struct Recorder {
        applied: Arc<Mutex<Vec<Vec<u8>>>>,
        /// Entries applied on the applier thread.
        by_applier: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl StateMachine for Recorder {
        fn apply(&self, entries: Vec<Entry>) -> crate::error::Result<()> {
            if std::thread::current().name() == Some("apply") {
                let n = entries.len();
                self.by_applier
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
            for e in entries {
                if e.data.as_ref() == SLOW {
                    std::thread::sleep(SLOW_APPLY);
                }
                if !e.data.is_empty() {
                    self.applied.lock().push(e.data.to_vec());
                }
            }
            Ok(())
        }
        fn may_take_long(e: &Entry) -> bool {
            e.data.as_ref() == SLOW
        }
        fn apply_conf_change(
            &self,
            _: u64,
            _: &ConfChangeV2,
            _: &ConfState,
        ) -> crate::error::Result<()> {
            self.applied.lock().push(b"conf".to_vec());
            Ok(())
        }
        fn installer(&self) -> Installer {
            Box::new(|_| Ok(()))
        }
        fn proposal_dropped(&self, _: u64, _: crate::error::Error) {}
        fn leadership_changed(&self, _: bool) {}
        fn peers(&self) -> Vec<(u64, String)> {
            Vec::new()
        }
    }

    /// Waits until `cond` holds, for at most `within`.
    async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A one-member raft loop over [`Recorder`], leading, with every entry so far applied.
    struct Member {
        raft: RaftHandle,
        thread: JoinHandle<()>,
        sm: Recorder,
        status: Arc<RaftStatus>,
        /// The applied index once it settled.
        base: u64,
        _dir: tempfile::TempDir,
    }

    impl Member {
        async fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let storage = RaftStorage::open(Backend::open(dir.path()).unwrap()).unwrap();
            storage.bootstrap(vec![1]).unwrap();
            let cfg = RaftConfig {
                id: 1,
                cluster_id: 1,
                heartbeat: HEARTBEAT,
                election_ticks: 10,
                catch_up_entries: 5000,
                snapshot_count: 10_000,
                pre_vote: true,
                dialer: super::super::dial::Dialer::new(None),
            };
            let sm = Recorder::default();
            let (raft, thread) = start(
                cfg,
                storage,
                1,
                sm.clone(),
                tokio::runtime::Handle::current(),
            )
            .unwrap();
            let status = raft.status.clone();
            until(
                Duration::from_secs(10),
                "a leader, its first entry applied",
                || {
                    status.is_leader()
                        && status.applied_index() == status.commit_index()
                        && status.commit_index() > 1
                },
            )
            .await;
            let base = status.applied_index();
            Member {
                raft,
                thread,
                sm,
                status,
                base,
                _dir: dir,
            }
        }

        /// Once `entries` entries past the base are committed, checks that the loop answers a
        /// status report at once while the applied index is still below `below` (the slow
        /// entry's).
        async fn answers_while_applying(&self, entries: u64, below: u64) {
            let st = &self.status;
            until(SLOW_APPLY / 2, "committed", || {
                st.commit_index() >= self.base + entries
            })
            .await;
            let asked = Instant::now();
            self.raft.report().await.unwrap();
            let took = asked.elapsed();
            assert!(
                took < SLOW_APPLY / 5,
                "the loop answered after {took:?}, behind the apply"
            );
            assert!(
                st.applied_index() < below,
                "applied {} while the slow entry at {below} applies",
                st.applied_index(),
            );
        }

        /// Checks that `entries` entries past the base are applied soon after the slow entry
        /// proposed at `since` (the loop was woken for what it held back), and what was, in
        /// order, since the base.
        async fn applied_in_order(&self, entries: u64, want: &[Vec<u8>], since: Instant) {
            let by = since + SLOW_APPLY + CATCH_UP;
            tokio::time::timeout(
                by.saturating_duration_since(Instant::now()),
                self.status.wait_applied(self.base + entries),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {entries} applied {:?} after the slow entry",
                    self.status.applied_index() - self.base,
                    since.elapsed()
                )
            });
            assert!(*self.sm.applied.lock() == want, "applied out of order");
        }

        fn stop(self) {
            self.raft.stop();
            self.thread.join().unwrap();
        }
    }

    /// While an entry that may take long applies, the raft loop goes on: it answers a status
    /// report at once (it waited out the whole apply when the loop applied every entry), the
    /// applied index stays below that entry until it is applied, and the entries after it are
    /// applied after it, in order, though the loop could have applied them itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_goes_on_while_an_entry_that_may_take_long_applies() {
        let m = Member::start().await;
        let since = Instant::now();
        m.raft.propose(1, b"before".to_vec()).unwrap();
        m.raft.propose(2, SLOW.to_vec()).unwrap();
        m.raft.propose(3, b"after".to_vec()).unwrap();
        m.answers_while_applying(3, m.base + 2).await;
        let want = [b"before".as_slice(), SLOW, b"after"];
        m.applied_in_order(3, &want.map(<[u8]>::to_vec), since)
            .await;
        m.stop();
    }

    /// A conf change right after an entry that may take long is applied after it, and the loop
    /// does not wait for it meanwhile: the conf change is held back in the log (the loop
    /// answered only once the slow entry was applied when it waited for the applier).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conf_change_after_a_long_entry_waits_for_it_but_the_loop_does_not() {
        let m = Member::start().await;
        let since = Instant::now();
        m.raft.propose(1, SLOW.to_vec()).unwrap();
        let add = ConfChangeSingle {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 2,
            ..Default::default()
        };
        let cc = ConfChangeV2 {
            changes: vec![add].into(),
            ..Default::default()
        };
        m.raft.propose_conf_change(2, cc).unwrap();
        m.raft.propose(3, b"after".to_vec()).unwrap();
        m.answers_while_applying(3, m.base + 1).await;
        let want = [SLOW, b"conf".as_slice(), b"after"];
        m.applied_in_order(3, &want.map(<[u8]>::to_vec), since)
            .await;
        m.stop();
    }

    /// Entries queued behind a long one past [`MAX_QUEUED_BYTES`] are held back in the log,
    /// not in memory, and the loop goes on (it waited for the applier to make room before);
    /// all are applied, in order, once the applier caught up: more than the loop applies from
    /// the log in one turn, so it goes on turning for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_past_the_queue_bound_are_held_back_while_the_loop_goes_on() {
        let m = Member::start().await;
        let since = Instant::now();
        m.raft.propose(1, SLOW.to_vec()).unwrap();
        // Queued alone, so that what follows finds the queue busy.
        until(SLOW_APPLY / 4, "the slow entry committed", || {
            m.status.commit_index() > m.base
        })
        .await;
        let fill = |i: usize| {
            let mut data = format!("fill {i} ").into_bytes();
            data.resize(4096, b'.');
            data
        };
        let n = 1100;
        for i in 0..n {
            m.raft.propose(2 + i as u64, fill(i)).unwrap();
        }
        m.answers_while_applying(1 + n as u64, m.base + 1).await;
        let want: Vec<Vec<u8>> = std::iter::once(SLOW.to_vec())
            .chain((0..n).map(fill))
            .collect();
        m.applied_in_order(1 + n as u64, &want, since).await;
        m.stop();
    }

    /// A burst of proposals commits in large batches, which the applier thread applies (the
    /// raft loop applied every batch itself before); every entry is applied, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_batches_go_to_the_applier() {
        let m = Member::start().await;
        let n = 20 * HAND_OVER_ENTRIES;
        for i in 0..n {
            m.raft
                .propose(1 + i as u64, format!("burst {i}").into_bytes())
                .unwrap();
        }
        let want: Vec<Vec<u8>> = (0..n).map(|i| format!("burst {i}").into_bytes()).collect();
        m.applied_in_order(n as u64, &want, Instant::now()).await;
        let by_applier = m.sm.by_applier.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            by_applier > 0,
            "no batch of {n} proposals went to the applier"
        );
        m.stop();
    }
}
