//! Entries whose apply may take long, applied off the raft thread (etcd applies every entry
//! in a goroutine of its own behind `raftNode.applyc`). A range delete or a lease revoke costs
//! as much as the keys it reaches: `etcdctl del "" --prefix` over a million keys took 3.5 s to
//! apply on 2 cores, and with it on the raft thread the loop sent no heartbeat, answered no
//! ReadIndex and stepped no message for that long; a follower done sooner than its leader
//! would have campaigned. Such a batch goes to the applier thread, and the loop goes on.
//!
//! Every other batch the loop applies itself while the applier is idle: handing each batch
//! over cost a thread wakeup per commit round (a single client's put p50 0.63-0.66 -> 0.76 ms)
//! and more CPU under load (16 clients 5-14% fewer puts/s), on 2 cores.
//!
//! Order: batches are applied in the order they are handed over. What the loop applies itself
//! (a batch, a conf change, a snapshot install) waits until the applier applied every batch
//! queued before it ([`ApplyQueue::idle`], [`ApplyQueue::drain`]), so the state machine sees
//! the log in order and is never applied by two threads at once.
//!
//! Memory: at most [`MAX_QUEUED_BYTES`] of entries wait; past that the loop waits for the
//! applier (no heartbeats meanwhile), as it did when it applied every entry itself. So does a
//! conf change or a snapshot install that comes right after a long entry: it waits until that
//! entry is applied.
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

/// Bytes of queued entries past which the loop waits for the applier.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What one entry holds in the queue: its data and context, plus the struct.
fn entry_bytes(e: &Entry) -> usize {
    std::mem::size_of::<Entry>() + e.data.len() + e.context.len()
}

/// Bytes queued and not yet applied; the loop waits on `applied` for them to go down.
#[derive(Default)]
struct Queued {
    bytes: Mutex<usize>,
    applied: Condvar,
}

/// The loop's handle; dropping it ends the thread once every queued batch was applied.
pub struct ApplyQueue {
    /// Each batch with the bytes it counts for in [`Queued`].
    tx: Option<Sender<(Vec<Entry>, usize)>>,
    queued: Arc<Queued>,
    thread: Option<JoinHandle<()>>,
}

impl ApplyQueue {
    /// Starts the applier thread for `sm`, which the loop shares for what it applies itself;
    /// `sm` writes to `backend`.
    pub fn start<S: StateMachine>(
        sm: Arc<S>,
        status: Arc<RaftStatus>,
        backend: Backend,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Vec<Entry>, usize)>();
        let queued = Arc::new(Queued::default());
        let q = queued.clone();
        let thread = super::spawn_vital("apply", move || {
            // Polls before sleeping, as the loop does: under load the next batch nearly always
            // comes within the poll window.
            while let Ok((entries, bytes)) = poll_recv(&rx, Duration::MAX) {
                // A writer seals its full memtables itself (`Backend::rotate_full_memtables`):
                // the loop, which does it once a turn, may be waiting for this thread.
                let applied =
                    apply(&*sm, &status, entries).and_then(|()| backend.rotate_full_memtables());
                if let Err(e) = applied {
                    // As the raft loop on a storage error: a member must not go on from here.
                    tracing::error!(error = %e, "applier stopped on a storage error");
                    std::process::abort();
                }
                let mut left = q.bytes.lock();
                *left -= bytes;
                q.applied.notify_all();
            }
        })?;
        Ok(ApplyQueue {
            tx: Some(tx),
            queued,
            thread: Some(thread),
        })
    }

    /// Queues committed normal entries, in log order after those queued before; waits first
    /// while more than [`MAX_QUEUED_BYTES`] are queued.
    pub fn submit(&self, entries: Vec<Entry>) {
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        {
            let mut queued = self.queued.bytes.lock();
            while *queued > 0 && *queued + bytes > MAX_QUEUED_BYTES {
                self.queued.applied.wait(&mut queued);
            }
            *queued += bytes;
        }
        if let Some(tx) = &self.tx {
            // The thread only ends when this sender is dropped, or aborts the process.
            let _ = tx.send((entries, bytes));
        }
    }

    /// Whether every batch queued so far was applied (the loop may apply the next one itself).
    pub fn idle(&self) -> bool {
        *self.queued.bytes.lock() == 0
    }

    /// Waits until every batch queued so far was applied.
    pub fn drain(&self) {
        let mut queued = self.queued.bytes.lock();
        while *queued > 0 {
            self.queued.applied.wait(&mut queued);
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
    use super::super::node::{start, Installer, RaftConfig};
    use super::super::RaftStorage;
    use super::*;
    use crate::backend::Backend;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

    /// Entries whose apply takes long: [`SLOW_APPLY`] and [`BRIEF_APPLY`].
    const SLOW: &[u8] = b"slow";
    const SLOW_APPLY: Duration = Duration::from_millis(1500);
    const BRIEF: &[u8] = b"brief";
    const BRIEF_APPLY: Duration = Duration::from_millis(300);

    /// A state machine that records what it applied, in order (a conf change as "conf"); the
    /// entries [`SLOW`] and [`BRIEF`] take long to apply, and say so.
    #[derive(Clone, Default)]
    struct Recorder {
        applied: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl StateMachine for Recorder {
        fn apply(&self, entries: Vec<Entry>) -> crate::error::Result<()> {
            for e in entries {
                match e.data.as_ref() {
                    SLOW => std::thread::sleep(SLOW_APPLY),
                    BRIEF => std::thread::sleep(BRIEF_APPLY),
                    _ => {}
                }
                if !e.data.is_empty() {
                    self.applied.lock().push(e.data.to_vec());
                }
            }
            Ok(())
        }
        fn may_take_long(e: &Entry) -> bool {
            e.data.as_ref() == SLOW || e.data.as_ref() == BRIEF
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

    /// While an entry that may take long applies, the raft loop goes on: it answers a status
    /// report at once (it waited out the whole apply when the loop applied every entry), the
    /// applied index stays below that entry until it is applied, and the entries after it are
    /// applied after it, in order, though the loop could have applied them itself. A conf
    /// change right after such an entry waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_goes_on_while_an_entry_that_may_take_long_applies() {
        let dir = tempfile::tempdir().unwrap();
        let storage = RaftStorage::open(Backend::open(dir.path()).unwrap()).unwrap();
        storage.bootstrap(vec![1]).unwrap();
        let cfg = RaftConfig {
            id: 1,
            cluster_id: 1,
            heartbeat: Duration::from_millis(100),
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
        let st = raft.status.clone();
        let long = Duration::from_secs(10);
        until(long, "a leader, its first entry applied", || {
            st.is_leader() && st.applied_index() == st.commit_index() && st.commit_index() > 1
        })
        .await;
        let base = st.applied_index();

        raft.propose(1, b"before".to_vec()).unwrap();
        raft.propose(2, SLOW.to_vec()).unwrap();
        raft.propose(3, b"after".to_vec()).unwrap();
        until(SLOW_APPLY / 2, "committed", || {
            st.commit_index() >= base + 3
        })
        .await;
        let asked = Instant::now();
        raft.report().await.unwrap();
        let took = asked.elapsed();
        assert!(
            took < SLOW_APPLY / 5,
            "the loop answered after {took:?}, behind the apply"
        );
        assert!(
            st.applied_index() < base + 2,
            "applied {} while the slow entry at {} applies",
            st.applied_index(),
            base + 2
        );
        tokio::time::timeout(SLOW_APPLY * 3, st.wait_applied(base + 3))
            .await
            .expect("everything applied");

        raft.propose(4, BRIEF.to_vec()).unwrap();
        let add = ConfChangeSingle {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 2,
            ..Default::default()
        };
        let cc = ConfChangeV2 {
            changes: vec![add].into(),
            ..Default::default()
        };
        raft.propose_conf_change(5, cc).unwrap();
        tokio::time::timeout(long, st.wait_applied(base + 5))
            .await
            .expect("the conf change applied");
        let applied: Vec<Vec<u8>> = sm.applied.lock().clone();
        let want: Vec<&[u8]> = vec![b"before", SLOW, b"after", BRIEF, b"conf"];
        assert_eq!(applied, want.iter().map(|d| d.to_vec()).collect::<Vec<_>>());
        raft.stop();
        thread.join().unwrap();
    }
}
