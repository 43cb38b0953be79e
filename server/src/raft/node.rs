//! The raft node loop (etcd's `raftNode`): one thread owns the `RawNode`. Each turn it takes
//! every queued proposal and read request, ticks the clock, and handles one Ready in raft-rs's
//! order: persist entries and hard state with one fsync (group commit), then apply committed
//! entries, then answer ReadIndex requests.

use super::RaftStorage;
use crate::error::{Error, Result};
use raft::eraftpb::{Entry, EntryType};
use raft::{RawNode, StateRole};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Applies committed entries; implemented by the server's applier.
pub trait StateMachine: Send + 'static {
    /// Applies `entries` (committed, in order) and makes them and the applied index durable
    /// enough to be replayed idempotently.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()>;
    /// A proposal could not enter the log (no leader): fail its waiter now.
    fn proposal_dropped(&mut self, id: u64, err: Error);
    /// This member became leader (`true`) or stopped being leader (`false`).
    fn leadership_changed(&mut self, is_leader: bool);
}

pub struct RaftConfig {
    pub id: u64,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    /// Entries kept in the log after compaction, for slow followers.
    pub catch_up_entries: u64,
    /// Compact the log once this many applied entries sit in it (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
}

/// What the rest of the server may read about consensus, updated by the loop.
pub struct RaftStatus {
    pub id: u64,
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit_index: AtomicU64,
    applied: watch::Sender<u64>,
}

impl RaftStatus {
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    pub fn commit_index(&self) -> u64 {
        self.commit_index.load(Ordering::Acquire)
    }
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }
    pub fn is_leader(&self) -> bool {
        self.leader() == self.id
    }
    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied.subscribe();
        // The sender lives as long as this status, so this only ends when the index is reached.
        let _ = rx.wait_for(|a| *a >= index).await;
    }
}

enum Command {
    Propose { id: u64, data: Vec<u8> },
    ReadIndex(oneshot::Sender<Result<u64>>),
    Stop,
}

/// The handle the service layer holds. Dropping every handle stops the loop.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Command>,
    pub status: Arc<RaftStatus>,
}

impl RaftHandle {
    /// Queues `data` for the log; the state machine hears about it through `id`.
    pub fn propose(&self, id: u64, data: Vec<u8>) -> Result<()> {
        self.tx
            .send(Command::Propose { id, data })
            .map_err(|_| Error::Stopped)
    }

    /// Asks the loop to finish its current turn and exit.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// A linearizable read point: the commit index confirmed by a quorum, once applied locally.
    pub async fn read_index(&self) -> Result<u64> {
        if self.status.leader() == 0 {
            return Err(Error::NoLeader);
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::ReadIndex(tx))
            .map_err(|_| Error::Stopped)?;
        let index = rx.await.map_err(|_| Error::Stopped)??;
        self.status.wait_applied(index).await;
        Ok(index)
    }
}

/// Starts the loop thread. `applied` is the index the state machine already reflects.
pub fn start<S: StateMachine>(
    cfg: RaftConfig,
    storage: RaftStorage,
    applied: u64,
    sm: S,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>)> {
    let rc = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    rc.validate().map_err(Error::internal)?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let single = storage.conf_state().voters == vec![cfg.id];
    let mut raw = RawNode::new(&rc, storage.clone(), &logger).map_err(Error::internal)?;
    if single {
        // Alone in the cluster: no one to wait for.
        raw.campaign().map_err(Error::internal)?;
    }
    let (applied_tx, _) = watch::channel(applied);
    let status = Arc::new(RaftStatus {
        id: cfg.id,
        leader: AtomicU64::new(0),
        term: AtomicU64::new(raw.raft.term),
        commit_index: AtomicU64::new(raw.raft.raft_log.committed),
        applied: applied_tx,
    });
    let (tx, rx) = mpsc::channel();
    let mut lp = Loop {
        raw,
        storage,
        sm,
        rx,
        status: status.clone(),
        cfg,
        read_seq: 0,
        pending_reads: Vec::new(),
        read_waiters: HashMap::new(),
        was_leader: false,
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            if let Err(e) = lp.run() {
                tracing::error!(error = %e, "raft loop stopped on a storage error");
                std::process::abort();
            }
        })
        .map_err(Error::internal)?;
    Ok((RaftHandle { tx, status }, thread))
}

struct Loop<S> {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    sm: S,
    rx: Receiver<Command>,
    status: Arc<RaftStatus>,
    cfg: RaftConfig,
    read_seq: u64,
    pending_reads: Vec<oneshot::Sender<Result<u64>>>,
    read_waiters: HashMap<Vec<u8>, Vec<oneshot::Sender<Result<u64>>>>,
    was_leader: bool,
}

/// Upper bound of commands taken in one turn, so a flood cannot starve ticks.
const MAX_BATCH: usize = 4096;

impl<S: StateMachine> Loop<S> {
    fn run(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.heartbeat;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(cmd) => {
                    let more: Vec<Command> = self.rx.try_iter().take(MAX_BATCH).collect();
                    for cmd in std::iter::once(cmd).chain(more) {
                        if matches!(cmd, Command::Stop) {
                            return self.on_ready();
                        }
                        self.handle(cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.cfg.heartbeat;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.heartbeat;
                }
            }
            self.issue_read_index();
            self.on_ready()?;
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data } => {
                if self.raw.propose(Vec::new(), data).is_err() {
                    self.sm.proposal_dropped(id, Error::NoLeader);
                }
            }
            Command::ReadIndex(tx) => self.pending_reads.push(tx),
            Command::Stop => {}
        }
    }

    /// One ReadIndex request covers every read queued this turn.
    fn issue_read_index(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == 0 {
            for tx in self.pending_reads.drain(..) {
                let _ = tx.send(Err(Error::NoLeader));
            }
            return;
        }
        self.read_seq += 1;
        let ctx = self.read_seq.to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.read_waiters
            .insert(ctx, std::mem::take(&mut self.pending_reads));
    }

    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // Messages to peers go out with the multi-member transport; a single member has none.
        debug_assert!(rd.messages().is_empty());
        if !rd.committed_entries().is_empty() {
            self.apply(rd.take_committed_entries())?;
        }
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            self.storage
                .persist(rd.entries(), hs.as_ref(), rd.must_sync())?;
        }
        for rs in rd.take_read_states() {
            if let Some(waiters) = self.read_waiters.remove(&rs.request_ctx) {
                for tx in waiters {
                    let _ = tx.send(Ok(rs.index));
                }
            }
        }
        let mut light = self.raw.advance(rd);
        if let Some(c) = light.commit_index() {
            self.status.commit_index.store(c, Ordering::Release);
        }
        let committed = light.take_committed_entries();
        if !committed.is_empty() {
            self.apply(committed)?;
        }
        self.raw.advance_apply();
        self.update_status();
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let last = entries.last().map(|e| e.index).unwrap_or(0);
        for e in &entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                // Membership changes arrive with the multi-member cluster.
                tracing::warn!(index = e.index, "ignoring a conf change entry");
            }
        }
        self.sm.apply(entries)?;
        self.status.commit_index.fetch_max(last, Ordering::AcqRel);
        self.status.applied.send_replace(last);
        self.maybe_compact_log(last)
    }

    fn maybe_compact_log(&mut self, applied: u64) -> Result<()> {
        let first = self.storage.first_index().unwrap_or(1);
        if applied.saturating_sub(first) > self.cfg.snapshot_count + self.cfg.catch_up_entries {
            self.storage
                .compact(applied.saturating_sub(self.cfg.catch_up_entries))?;
        }
        Ok(())
    }

    fn update_status(&mut self) {
        let r = &self.raw.raft;
        self.status.term.store(r.term, Ordering::Release);
        let prev = self.status.leader.swap(r.leader_id, Ordering::AcqRel);
        crate::metrics::leader_seen(prev, r.leader_id);
        let is_leader = r.state == StateRole::Leader;
        if is_leader != self.was_leader {
            self.was_leader = is_leader;
            tracing::info!(term = r.term, is_leader, "leadership changed");
            self.sm.leadership_changed(is_leader);
        }
    }
}

use raft::Storage as _;
