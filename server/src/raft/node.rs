//! The raft node loop (etcd's `raftNode`): one thread owns the `RawNode`. Each turn it takes
//! every queued command (proposals, read requests, peer messages), ticks the clock, and handles
//! one Ready in raft-rs's order: send what may leave now, apply committed entries (conf changes
//! through raft first; an entry whose apply may take long, such as a range delete, on the
//! applier thread: [`super::apply_queue`]), write new entries and the hard state, answer
//! ReadIndex requests.
//!
//! Durability, as etcd's raftNode: the leader's appends leave before its own write. The loop
//! writes each Ready without syncing and hands it to the [`Syncer`] thread, which does one
//! fdatasync for all Readies written meanwhile (group commit), only then sends the messages that
//! promise those entries (votes, append acknowledgements), and reports them persisted
//! (raft-rs's async Ready: `advance_append_async`, `on_persist_ready`). The loop keeps stepping
//! acknowledgements and applying while the disk flushes; with the fsync inline, a 3-member
//! leader spent about half its time waiting for the disk. Raft counts this member's own log
//! towards a commit only once it is durable; the loop applies an entry once it is committed
//! and written, durable here or not yet (`Loop::apply_ahead` says why that is safe).

use super::apply_queue::ApplyQueue;
use super::queued::{ProposalQueue, Queued, MAX_QUEUED_PROPOSAL_BYTES};
use super::round::RoundTimer;
use super::syncer::Syncer;
use super::transport::Transport;
use super::RaftStorage;
use crate::error::{Error, Result};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{GetEntriesContext, RawNode, SnapshotStatus, StateRole, Storage as _};
use raft_proto::ConfChangeI;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Installs a staged snapshot (see [`StateMachine::installer`]).
pub type Installer = Box<dyn FnOnce(&Snapshot) -> Result<()> + Send>;

/// Applies committed entries; implemented by the server's applier. Shared by the raft loop and
/// the applier thread ([`super::apply_queue`]), which never apply at the same time.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies committed normal entries, in order, with the applied index in the same batch.
    fn apply(&self, entries: Vec<Entry>) -> Result<()>;
    /// Whether applying `e` may take long: its cost grows with the stored keys it reaches (a
    /// range delete, a lease revoke), not with its own size. Such an entry is applied on the
    /// applier thread, so that the raft loop goes on meanwhile.
    fn may_take_long(e: &Entry) -> bool;
    /// Applies the membership effect of a committed conf change at `index` (raft's own view
    /// already changed to `cs`).
    fn apply_conf_change(&self, index: u64, cc: &ConfChangeV2, cs: &ConfState) -> Result<()>;
    /// What replaces the whole state with a staged snapshot's (once the raft log was reset to
    /// it: `snapshot::install::stage`), run on an installer thread while the raft loop goes
    /// on; it reloads every in-memory view before it returns.
    fn installer(&self) -> Installer;
    /// A proposal could not enter the log (no leader): fail its waiter now.
    fn proposal_dropped(&self, id: u64, err: Error);
    /// This member became leader (`true`) or stopped being leader (`false`).
    fn leadership_changed(&self, is_leader: bool);
    /// Every other member, with the URL to reach it at.
    fn peers(&self) -> Vec<(u64, String)>;
}

pub struct RaftConfig {
    pub id: u64,
    pub cluster_id: u64,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    /// Entries kept in the log after compaction, for slow followers.
    pub catch_up_entries: u64,
    /// Compact the log once this many applied entries sit in it (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Raft pre-vote (`--pre-vote`).
    pub pre_vote: bool,
    /// How peers are reached (TLS for https peer URLs).
    pub dialer: super::dial::Dialer,
}

/// What the rest of the server may read about consensus, updated by the loop.
pub struct RaftStatus {
    pub id: u64,
    pub leader: AtomicU64,
    pub term: AtomicU64,
    /// The term in which this member is leader, 0 while it is not: one word, so that a
    /// reader never pairs "leader" with a term it did not lead in (`leader` and `term` are
    /// stored one after the other).
    leader_term: AtomicU64,
    pub commit_index: AtomicU64,
    pub is_learner: AtomicBool,
    /// Set when this member has been removed from the cluster; the loop has stopped.
    pub removed: AtomicBool,
    /// Elections (campaigns, pre-vote included) this member started since it started.
    pub elections: AtomicU64,
    /// The last leadership changes this member saw (for the admin API).
    pub leader_log: super::leader_log::LeaderLog,
    /// Held from the moment a snapshot stream is accepted until raft refused the snapshot or
    /// its install is done: one snapshot at a time. A second one, received while the first
    /// waited for the loop, once deleted the first one's staged file (the member stopped on
    /// it), and one that arrives during an install would make the loop wait for that install.
    snapshot_slot: AtomicBool,
    applied: watch::Sender<u64>,
}

/// A member's raft view at one instant, for status reports (pgraft's Admin.RaftStatus).
#[derive(Debug, Clone)]
pub struct RaftReport {
    pub role: StateRole,
    pub first_index: u64,
    pub last_index: u64,
    /// Only on the leader: every member's replication progress, its own included.
    pub progress: Vec<PeerProgress>,
}

#[derive(Debug, Clone)]
pub struct PeerProgress {
    pub id: u64,
    pub matched: u64,
    pub next_idx: u64,
    /// "probe", "replicate" or "snapshot".
    pub state: &'static str,
    pub recent_active: bool,
    pub is_learner: bool,
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
    /// The term this member leads in, as its raft loop last saw it; 0 when it is not leader.
    pub fn leader_term(&self) -> u64 {
        self.leader_term.load(Ordering::Acquire)
    }
    pub fn is_learner(&self) -> bool {
        self.is_learner.load(Ordering::Acquire)
    }
    /// Raises the applied index to `index`; never lowers it (raft hands over again entries
    /// already applied ahead of their fsync).
    pub(super) fn raise_applied(&self, index: u64) {
        self.applied.send_if_modified(|a| {
            let raised = index > *a;
            if raised {
                *a = index;
            }
            raised
        });
    }

    /// Takes the one snapshot slot (see [`RaftStatus::snapshot_slot`]); false while it is held.
    pub fn claim_snapshot_slot(&self) -> bool {
        self.snapshot_slot
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives the slot back: the snapshot was refused, or its install is done.
    pub fn release_snapshot_slot(&self) {
        self.snapshot_slot.store(false, Ordering::Release);
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied.subscribe();
        // The sender lives as long as this status, so this only ends when the index is reached.
        let _ = rx.wait_for(|a| *a >= index).await;
    }
}

pub enum Command {
    Propose {
        id: u64,
        data: Vec<u8>,
        /// Counts `data` in the queue until the loop drops the command.
        queued: Queued,
    },
    /// A conf change; its own `context` carries what the state machine needs.
    ProposeConfChange {
        id: u64,
        cc: ConfChangeV2,
    },
    ReadIndex(oneshot::Sender<Result<u64>>),
    /// A message from a peer, and when it arrived
    /// (`pgraft_raft_peer_message_queue_duration_seconds`).
    Step(Message, Instant),
    TransferLeader(u64),
    /// The transport could not deliver to this peer (its queue is full).
    Unreachable(u64),
    /// The stream to this peer broke, or could not be opened. When the peer is this
    /// follower's leader and then stays silent, its lease is given up early (see
    /// `Loop::leader_silent`).
    LinkLost(u64),
    /// The raft stream to this peer (re)connected: a leader sends its heartbeats now (at most
    /// once per heartbeat interval).
    LinkUp(u64),
    /// A snapshot stream to this peer finished (`true`) or failed.
    SnapshotStatus(u64, bool),
    /// Asks for a status report.
    Report(oneshot::Sender<RaftReport>),
    /// The syncer made every Ready up to this number durable.
    Persisted(u64),
    /// A peer refused our traffic: this member was removed while it was not listening.
    Removed,
    /// Only wakes the loop: the snapshot installer is done, or the applier applied every
    /// batch queued while the loop holds entries back for it (see [`Loop::progress_held_back`]).
    Wake,
    Stop,
}

/// The handle the service layer holds.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Command>,
    pub status: Arc<RaftStatus>,
    pub transport: Arc<Transport>,
    proposals: ProposalQueue,
}

impl RaftHandle {
    fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::Stopped)
    }

    /// Queues `data` for the log; the state machine hears about it through `id`. Refused with
    /// `too many requests` while the loop has too many proposal bytes left to take.
    pub fn propose(&self, id: u64, data: Vec<u8>) -> Result<()> {
        let queued = self.proposals.admit(data.len())?;
        self.send(Command::Propose { id, data, queued })
    }

    pub fn propose_conf_change(&self, id: u64, cc: ConfChangeV2) -> Result<()> {
        self.send(Command::ProposeConfChange { id, cc })
    }

    /// A message that arrived from a peer.
    pub fn step(&self, m: Message) -> Result<()> {
        self.send(Command::Step(m, Instant::now()))
    }

    pub fn transfer_leader(&self, to: u64) -> Result<()> {
        self.send(Command::TransferLeader(to))
    }

    /// This member's raft view (role, log bounds, followers' progress on the leader).
    pub async fn report(&self) -> Result<RaftReport> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Report(tx))?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Asks the loop to finish its current turn and exit.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// A linearizable read point: the commit index confirmed by a quorum, once applied locally.
    pub async fn read_index(&self) -> Result<u64> {
        let index = self.quorum_index().await?;
        self.status.wait_applied(index).await;
        Ok(index)
    }

    /// The ReadIndex round alone: the leader's commit index, once a quorum answered a
    /// heartbeat the leader sent after the request (so it still led then); not yet applied
    /// here.
    pub async fn quorum_index(&self) -> Result<u64> {
        if self.status.leader() == 0 {
            return Err(Error::NoLeader);
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::ReadIndex(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

/// Starts the loop thread. `applied` is the index the state machine already reflects.
pub fn start<S: StateMachine>(
    cfg: RaftConfig,
    storage: RaftStorage,
    applied: u64,
    sm: S,
    runtime: tokio::runtime::Handle,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>)> {
    let rc = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        // A follower campaigns after a randomized timeout in (1, 1.5] x the election timeout
        // (raft-rs and etcd draw from [1, 2)), so a leader lost to a partition is replaced
        // within 2 x the election timeout. The first tick past the election timeout belongs to
        // the lease: a follower that campaigns on the very tick the lease ends could otherwise
        // reach a peer whose own tick, a fraction of a tick behind, still counts the lease, and
        // be ignored for a whole further timeout.
        min_election_tick: cfg.election_ticks + 1,
        max_election_tick: cfg.election_ticks + 1 + cfg.election_ticks.div_ceil(2),
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: cfg.pre_vote,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        // Merge appends to a follower that are still queued into one message.
        batch_append: true,
        // As etcd (MaxUncommittedEntriesSize): a leader whose followers fall behind stops
        // taking proposals once this many bytes of entries wait to commit, rather than grow
        // its log without bound in memory.
        max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
        ..Default::default()
    };
    rc.validate().map_err(Error::internal)?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let cs = storage.conf_state();
    let single = cs.voters == vec![cfg.id] && cs.learners.is_empty();
    let mut raw = RawNode::new(&rc, storage.clone(), &logger).map_err(Error::internal)?;
    // The stored term and vote, before a lone member's campaign below moves them.
    let written_term_vote = (raw.raft.term, raw.raft.vote);
    if single {
        // Alone in the cluster: no one to wait for.
        raw.campaign().map_err(Error::internal)?;
    }
    let (applied_tx, _) = watch::channel(applied);
    let status = Arc::new(RaftStatus {
        id: cfg.id,
        leader: AtomicU64::new(0),
        term: AtomicU64::new(raw.raft.term),
        leader_term: AtomicU64::new(0),
        commit_index: AtomicU64::new(raw.raft.raft_log.committed),
        is_learner: AtomicBool::new(cs.learners.contains(&cfg.id)),
        removed: AtomicBool::new(false),
        // A lone member's campaign above already made it leader.
        elections: AtomicU64::new(u64::from(single)),
        leader_log: Default::default(),
        snapshot_slot: AtomicBool::new(false),
        applied: applied_tx,
    });
    let (tx, rx) = mpsc::channel();
    if single {
        // The campaign's Ready is handled in the loop's first turn, not after a heartbeat.
        let _ = tx.send(Command::Wake);
    }
    let transport = Arc::new(Transport::new(
        cfg.id,
        cfg.cluster_id,
        cfg.dialer.clone(),
        runtime,
        tx.clone(),
        storage.snapshot_source(),
    ));
    transport.set_peers(sm.peers());
    let syncer = Syncer::start(storage.backend().clone(), transport.clone(), tx.clone())
        .map_err(Error::internal)?;
    let sm = Arc::new(sm);
    let wake = tx.clone();
    let applying = ApplyQueue::start(
        sm.clone(),
        status.clone(),
        storage.backend().clone(),
        move || {
            let _ = wake.send(Command::Wake);
        },
    )
    .map_err(Error::internal)?;
    let mut lp = Loop {
        raw,
        storage,
        sm,
        applying,
        compacted_for: applied,
        rx,
        status: status.clone(),
        transport: transport.clone(),
        syncer,
        persisting: 0,
        written_term_vote,
        term_vote_syncing: 0,
        applied_ahead: 0,
        leader_link_lost: None,
        link_up_ping: None,
        cfg,
        read_seq: read_seq_seed(),
        pending_reads: Vec::new(),
        read_waiters: HashMap::new(),
        installing: None,
        deferred: None,
        wake: tx.clone(),
        removed: false,
        compacting: false,
        was_leader: false,
        last_role: StateRole::Follower,
        last_term: 0,
        round: RoundTimer::default(),
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            // A member whose raft loop died must not go on serving: stop the process.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run())) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "raft loop stopped on a storage error");
                    std::process::abort();
                }
                Err(_) => {
                    tracing::error!("raft loop panicked");
                    std::process::abort();
                }
            }
        })
        .map_err(Error::internal)?;
    Ok((
        RaftHandle {
            tx,
            status,
            transport,
            proposals: ProposalQueue::new(MAX_QUEUED_PROPOSAL_BYTES),
        },
        thread,
    ))
}

/// A snapshot install under way on its own thread.
struct Installing {
    index: u64,
    conf_state: ConfState,
    thread: std::thread::JoinHandle<Result<()>>,
    /// Set by the installer as it is done, before it wakes the loop (the thread may not have
    /// ended yet when the loop wakes).
    done: Arc<AtomicBool>,
}

struct Loop<S> {
    raw: RawNode<RaftStorage>,
    storage: RaftStorage,
    /// Shared with the applier thread (see [`Loop::apply_normal`]); the loop applies conf
    /// changes and installs snapshots itself, once the applier is done with what came before.
    sm: Arc<S>,
    applying: ApplyQueue,
    /// The applied index the log was last considered for compaction at.
    compacted_for: u64,
    rx: Receiver<Command>,
    status: Arc<RaftStatus>,
    transport: Arc<Transport>,
    syncer: Syncer,
    /// The last Ready handed to the syncer and not yet reported persisted (0: none). Later
    /// Readies queue behind it, so that raft hears of them in order.
    persisting: u64,
    /// The term and vote of the last hard state written to the log (durable or not yet).
    written_term_vote: (u64, u64),
    /// The number of the last Ready that changed them, while the syncer has it (else 0):
    /// until it is durable, every message waits its turn.
    term_vote_syncing: u64,
    /// The last entry applied before it was durable here (see [`Loop::apply_ahead`]); raft
    /// hands it over again once it is, and it is skipped then.
    applied_ahead: u64,
    /// The stream to this leader broke at this instant (see [`Loop::link_lost`]).
    leader_link_lost: Option<(u64, Instant)>,
    /// When a link coming up last made this leader heartbeat (at most once per heartbeat
    /// interval: a link that keeps failing must not multiply the heartbeats).
    link_up_ping: Option<Instant>,
    cfg: RaftConfig,
    /// The last ReadIndex sequence number used; starts at [`read_seq_seed`].
    read_seq: u64,
    pending_reads: Vec<ReadWaiter>,
    /// Set when this member learned it was removed from the cluster.
    removed: bool,
    /// A log compaction is under way, [`COMPACT_STEP`] entries at a time.
    compacting: bool,
    /// ReadIndex requests in flight: context -> (last sent, callers).
    read_waiters: HashMap<Vec<u8>, (Instant, Vec<ReadWaiter>)>,
    /// A snapshot being installed by its own thread (see [`Loop::start_install`]).
    installing: Option<Installing>,
    /// Committed entries held back, by a snapshot install or for the applier (a conf change
    /// while it is busy, or a batch past its queue's bound): the next index to apply and the
    /// last committed one raft handed out. They are in the log; once the install is done and
    /// the applier idle they are applied from it, a bounded step per turn
    /// ([`Loop::progress_held_back`]).
    deferred: Option<(u64, u64)>,
    /// For the installer thread, to wake the loop when it is done.
    wake: Sender<Command>,
    was_leader: bool,
    /// Role and term seen at the last status update (to count elections).
    last_role: StateRole,
    last_term: u64,
    /// Times the commit round's stages for the metrics (the leader's side and a follower's).
    round: RoundTimer,
}

/// Where a member's ReadIndex sequence starts: the wall clock in nanoseconds. A leader ignores a
/// ReadIndex context it already has pending, and one it answered long ago may still sit in a
/// slow message; a member that restarted from 0 could repeat such a context and get (or lose)
/// another request's answer. The sequence takes at most one step per loop turn, far fewer
/// than one per nanosecond, so a later start begins past every number an earlier run used
/// (unless the clock stepped back by more than that run's lifetime); the low bits are mixed
/// with randomness for that case.
fn read_seq_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (rand::random::<u64>() & 0xffff)
}

/// How long a ReadIndex request may go unanswered before it is sent again (etcd's
/// `readIndexRetryTime`).
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// A caller waiting for a ReadIndex answer.
type ReadWaiter = oneshot::Sender<Result<u64>>;

/// How long the loop (and the syncer: [`poll_recv`]) polls its queue, yielding the CPU between
/// polls, before it sleeps. Under load the next command (an acknowledgement, a proposal, a
/// persisted report) nearly always comes within this window, and taking it without a sleep and
/// a wakeup is much cheaper: on our 2-core VMs a futex wakeup of an idle vCPU costs more than
/// the work it hands over.
/// Measured (3 members, 256-byte puts, medians of 4 interleaved runs): 16 clients 9.1k -> 10.5k
/// puts/s and 140 -> 114 µs of server CPU per put; 64 clients 14.2k -> 15.4k puts/s. Idle, it
/// costs one poll window per tick.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(30);

/// Receives from `rx`, polling for [`SPIN_BEFORE_SLEEP`] (yielding the CPU between polls)
/// before sleeping for the rest of `wait`.
pub(super) fn poll_recv<T>(
    rx: &Receiver<T>,
    wait: Duration,
) -> std::result::Result<T, RecvTimeoutError> {
    let spin_until = Instant::now() + SPIN_BEFORE_SLEEP.min(wait);
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(mpsc::TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(mpsc::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now()
            }
            Err(mpsc::TryRecvError::Empty) => break,
        }
    }
    rx.recv_timeout(wait.saturating_sub(SPIN_BEFORE_SLEEP))
}

/// What a peer message is checked against: this member's raft state when it is stepped.
struct Local {
    term: u64,
    last_index: u64,
    leader: bool,
}

/// How far a peer's term may lead: raft takes any later term as its own, and one near
/// `u64::MAX` overflowed at the next campaign. A term may be up to [`MAX_TERM_LEAD`] past the
/// larger of this member's term and [`TERM_CEILING`]: no cluster gets to the ceiling by
/// elections (at one a second, not in a hundred billion years), so no honest term is ever
/// refused, and one message can move a member at most that far. A bound on every jump
/// (this member's term plus a lead) would cut off a member lagging a term behind another
/// that took a jump within its own bound and then campaigned: the laggard would refuse its
/// every message from then on. Past the ceiling, where only a peer's jump takes a cluster,
/// that can still happen.
const TERM_CEILING: u64 = 1 << 62;
const MAX_TERM_LEAD: u64 = 1 << 32;

/// Whether a message from a peer may be stepped: raft-rs trusts its peers and panics on some
/// malformed messages (an empty proposal or read request; a message without a term, or with
/// one near `u64::MAX`; a heartbeat committing past this member's log; an append positioned
/// past it, or with entries that do not follow its position; an acknowledgement past the
/// leader's log), and a panic stops the raft loop, the member with it. Others cut a member
/// off for good, or change the membership in ways no member asks for. No member sends these;
/// anything on the peer port could (`tests/fuzz_peer.rs` sends them).
///
/// A follower forwards a proposal, a read request or a leadership transfer request to its
/// leader as it came, `from` and term included: raft-rs panics sending one with a term, and
/// the leader would refuse a message that another member's stream carries, closing the stream
/// with it. So only a leader takes them (one with a later term makes it step down first, and
/// it then drops it: it knows no leader in that term).
fn admissible(m: &Message, local: &Local) -> std::result::Result<(), &'static str> {
    if m.term > local.term.max(TERM_CEILING).saturating_add(MAX_TERM_LEAD) {
        return Err("a term too far ahead");
    }
    match m.get_msg_type() {
        // raft-rs takes a message without a term for one of its own (no term check): a vote
        // granted in it is sent without a term (a panic), a candidate asserts the term of an
        // append, a read index answer commits an index past the log. Only proposals and read
        // requests come without one.
        MessageType::MsgPropose | MessageType::MsgReadIndex => {}
        _ if m.term == 0 => return Err("a message without a term"),
        _ => {}
    }
    match m.get_msg_type() {
        MessageType::MsgPropose if m.entries.is_empty() => Err("a proposal without entries"),
        MessageType::MsgPropose if !m.entries.iter().all(proposable_conf_change) => {
            Err("a membership change no member proposes")
        }
        // The leader reads the request's context from its first entry.
        MessageType::MsgReadIndex if m.entries.is_empty() => Err("a read request without context"),
        MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgTransferLeader
            if !local.leader =>
        {
            Err("a request for the leader")
        }
        // A follower acknowledges (or refuses) only what a leader sent it from its log. One
        // past it (raft-rs takes it for the follower's match) has the leader's heartbeats
        // commit past the follower's log, which the follower refuses (below): it never hears
        // from its leader again.
        MessageType::MsgAppendResponse if m.index > local.last_index => {
            Err("an acknowledgement past this member's log")
        }
        // A refusal's hint is where the follower's log matches the append it refused, at or
        // before the append's position (raft-rs adds one to it).
        MessageType::MsgAppendResponse if m.reject_hint > m.index => {
            Err("a refusal hinting past its append")
        }
        // The leader sends min(the follower's match, its commit): never past this log.
        MessageType::MsgHeartbeat if m.commit > local.last_index => {
            Err("a heartbeat committing past this member's log")
        }
        // raft-rs takes log term 0 past the end of its log for a match (a position's term
        // reads 0 there), then commits or appends past its end: a leader's log term is 0 only
        // at index 0.
        MessageType::MsgAppend if m.log_term == 0 && m.index > local.last_index => {
            Err("an append positioned past this member's log")
        }
        MessageType::MsgAppend => {
            // Entries follow the append's position, with terms from its log term (at least 1:
            // every entry has one) up to its own term.
            let mut prev_term = m.log_term.max(1);
            for (i, e) in m.entries.iter().enumerate() {
                if m.index.checked_add(1 + i as u64) != Some(e.index) {
                    return Err("entries not following the append's position");
                }
                if e.term < prev_term || e.term > m.term {
                    return Err("entry terms out of order");
                }
                prev_term = e.term;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Messages a follower may send before its Ready is durable (see [`Loop::send_ahead`]): they
/// say nothing of its log or its vote.
fn claims_nothing_durable(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHeartbeatResponse | MessageType::MsgReadIndex
    )
}

/// Whether an entry a peer proposes is a normal one or a membership change as members propose
/// them (`service::cluster`): one change, of a member (raft ignores node 0, which the
/// membership took for a member), without a joint configuration (an explicit one stays until
/// a change leaves it, which no member proposes: no membership change could pass after it).
fn proposable_conf_change(e: &Entry) -> bool {
    match e.get_entry_type() {
        EntryType::EntryNormal => true,
        EntryType::EntryConfChange => false,
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data).is_ok_and(|cc| {
            cc.get_transition() == raft::eraftpb::ConfChangeTransition::Auto
                && cc.changes.len() == 1
                && cc.changes[0].node_id != 0
        }),
    }
}

/// Counts (and logs, the first time and every 1000th after) a refused peer message.
fn refused_peer_message(m: &Message, why: &'static str) {
    static REFUSED: AtomicU64 = AtomicU64::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed);
    if n.is_multiple_of(1000) {
        tracing::warn!(
            from = %format!("{:x}", m.from),
            kind = ?m.get_msg_type(),
            why,
            refused_so_far = n + 1,
            "refused a malformed raft message from a peer"
        );
    }
}

/// Log entries dropped per applied chunk while compacting: a 100k-entry compaction in one
/// batch held the loop (and every put) for tens of milliseconds.
const COMPACT_STEP: u64 = 2048;
/// Entries a leader keeps, at least, for a follower that still needs them and is catching up
/// (heard from lately; a member that is down gets `--snapshot-count` more, then a snapshot): a
/// member installing a big snapshot appends the entries that follow it meanwhile, but slower
/// than usual (its disk is busy with the install), and with a small `--snapshot-count` it fell
/// that far behind and was sent one snapshot after another (4 at 100k keys,
/// `--snapshot-count=1000`, 40 s to catch up). On disk, not in memory.
const MIN_FOLLOWER_RETENTION: u64 = 20_000;
/// Bytes of entries a leader holds uncommitted before it refuses proposals (etcd: 1 GiB).
const MAX_UNCOMMITTED_BYTES: u64 = 1 << 30;
/// Entries (and bytes) applied per turn from the log when they were held back
/// ([`Loop::deferred`]).
const DEFERRED_STEP: u64 = 1024;
const DEFERRED_STEP_BYTES: u64 = 4 * 1024 * 1024;
/// Upper bound of commands taken in one turn, so a flood cannot starve ticks.
const MAX_COMMANDS: usize = 4096;

impl<S: StateMachine> Loop<S> {
    fn run(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.heartbeat;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let received = poll_recv(&self.rx, wait);
            let turn = Instant::now();
            match received {
                Ok(cmd) => {
                    let more: Vec<Command> = self.rx.try_iter().take(MAX_COMMANDS).collect();
                    for cmd in std::iter::once(cmd).chain(more) {
                        if matches!(cmd, Command::Stop) {
                            self.on_ready()?;
                            if let Some(inst) = self.installing.take() {
                                // Not left writing behind a stopped member's back.
                                let _ = inst.thread.join();
                            }
                            return Ok(());
                        }
                        self.handle(cmd);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                self.leader_silent();
                self.raw.tick();
                next_tick += self.cfg.heartbeat;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.heartbeat;
                }
            }
            self.issue_read_index();
            if self.removed || self.drain_ready()? || self.progress_held_back()? {
                tracing::warn!("this member was removed from the cluster; raft stopped");
                self.status.removed.store(true, Ordering::Release);
                self.status.leader.store(0, Ordering::Release);
                self.status.leader_term.store(0, Ordering::Release);
                return Ok(());
            }
            self.apply_ahead()?;
            self.compact_log_as_applied()?;
            self.storage.backend().rotate_full_memtables()?;
            crate::metrics::RAFT_LOOP_TURN.since(turn);
            crate::metrics::warn_if_slow("raft loop turn", turn);
        }
    }

    /// Why raft refused a proposal: no leader to take it (or leadership moving away), or, on
    /// a leader, too many bytes of entries waiting to commit.
    fn drop_reason(&self) -> Error {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader && raft.lead_transferee.is_none() {
            Error::TooManyRequests
        } else {
            Error::NoLeader
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { id, data, queued } => {
                crate::metrics::PROPOSAL_QUEUE.since(queued.at);
                if self.raw.propose(Vec::new(), data).is_err() {
                    let reason = self.drop_reason();
                    self.sm.proposal_dropped(id, reason);
                } else if self.raw.raft.state == StateRole::Leader {
                    self.round.appended(self.raw.raft.raft_log.last_index());
                }
            }
            Command::ProposeConfChange { id, cc } => {
                if self.raw.propose_conf_change(Vec::new(), cc).is_err() {
                    self.sm.proposal_dropped(id, Error::NoLeader);
                }
            }
            Command::ReadIndex(tx) => self.pending_reads.push(tx),
            // The turn looks at the installer and the applier.
            Command::Wake => {}
            Command::Step(m, _) if m.get_msg_type() == MessageType::MsgSnapshot => {
                self.step_snapshot(m)
            }
            Command::Step(m, arrived) => {
                crate::metrics::PEER_MESSAGE_QUEUE.since(arrived);
                let raft = &self.raw.raft;
                let local = Local {
                    term: raft.term,
                    last_index: raft.raft_log.last_index(),
                    leader: raft.state == StateRole::Leader,
                };
                if let Err(why) = admissible(&m, &local) {
                    refused_peer_message(&m, why);
                    return;
                }
                self.round.received(&m, arrived);
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "dropped a peer message");
                }
            }
            Command::TransferLeader(to) => self.raw.transfer_leader(to),
            Command::Unreachable(id) => self.raw.report_unreachable(id),
            Command::LinkLost(id) => {
                self.raw.report_unreachable(id);
                self.link_lost(id);
            }
            Command::LinkUp(_) => {
                if self
                    .link_up_ping
                    .is_none_or(|at| at.elapsed() >= self.cfg.heartbeat)
                {
                    self.link_up_ping = Some(Instant::now());
                    self.raw.ping();
                }
            }
            Command::SnapshotStatus(id, ok) => {
                let st = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(id, st);
            }
            Command::Report(tx) => {
                let _ = tx.send(self.report());
            }
            Command::Persisted(number) => {
                self.raw.on_persist_ready(number);
                if number == self.persisting {
                    self.persisting = 0;
                }
                if number >= self.term_vote_syncing {
                    self.term_vote_syncing = 0;
                }
            }
            Command::Removed => self.removed = true,
            Command::Stop => {}
        }
    }

    /// Fast failover, part one: the stream to our leader broke. Nearly always its process died
    /// (a crash or `kill -9`: the kernel closed its sockets). Noted here; [`Loop::leader_silent`]
    /// decides.
    fn link_lost(&mut self, id: u64) {
        let r = &self.raw.raft;
        if r.state == StateRole::Follower && r.leader_id == id && self.leader_link_lost.is_none() {
            self.leader_link_lost = Some((id, Instant::now()));
        }
    }

    /// Fast failover, part two, before each tick. When the leader whose stream broke has also
    /// been silent for 1.5 heartbeat intervals since (a live leader heartbeats every interval,
    /// on its own stream to us), waiting out its lease (raft's election timeout) would be a
    /// wasted second: this follower gives the lease up now. It grants votes at once, and
    /// campaigns when the part of its randomized timeout past the lease (up to half an election
    /// timeout) runs out. The other followers see the same, so a new leader is elected within
    /// about half an election timeout of the crash instead of one to one and a half.
    ///
    /// A leader that is alive is not disturbed: its heartbeats reset the count before we
    /// campaign, and a member that still hears it refuses our pre-vote. Safety does not rest on
    /// timing in raft.
    fn leader_silent(&mut self) {
        let Some((id, since)) = self.leader_link_lost else {
            return;
        };
        if since.elapsed() < self.cfg.heartbeat * 3 / 2 {
            return;
        }
        self.leader_link_lost = None;
        let r = &mut self.raw.raft;
        if r.state != StateRole::Follower || r.leader_id != id {
            return;
        }
        if self.transport.last_heard(id).is_some_and(|t| t > since) {
            return;
        }
        let timeout = r.election_timeout();
        if r.election_elapsed < timeout {
            tracing::info!(
                leader = %format!("{id:x}"),
                "lost the link to the leader and heard nothing since; its lease is given up"
            );
            r.election_elapsed = timeout;
        }
    }

    /// One ReadIndex request covers every read queued this turn. Its context is unique in the
    /// cluster (member ID + sequence): the leader ignores a context it already has pending.
    /// A request with no answer after [`READ_INDEX_RETRY`] is sent again (it may have been lost
    /// with a leader change or a dropped message).
    fn issue_read_index(&mut self) {
        if !self.pending_reads.is_empty() {
            if self.raw.raft.leader_id == 0 {
                for tx in self.pending_reads.drain(..) {
                    let _ = tx.send(Err(Error::NoLeader));
                }
            } else {
                self.read_seq = self.read_seq.wrapping_add(1);
                let mut ctx = self.cfg.id.to_be_bytes().to_vec();
                ctx.extend_from_slice(&self.read_seq.to_be_bytes());
                self.raw.read_index(ctx.clone());
                let waiters = std::mem::take(&mut self.pending_reads);
                self.read_waiters.insert(ctx, (Instant::now(), waiters));
            }
        }
        let now = Instant::now();
        for (ctx, (sent, waiters)) in self.read_waiters.iter_mut() {
            waiters.retain(|tx| !tx.is_closed());
            if now.duration_since(*sent) >= READ_INDEX_RETRY {
                *sent = now;
                self.raw.read_index(ctx.clone());
            }
        }
        self.read_waiters.retain(|_, (_, w)| !w.is_empty());
    }

    /// Handles Readies until raft has none: making entries durable can commit them (our own
    /// vote counts only once persisted), which gives raft a new Ready at once. Bounded by the
    /// work queued: each Ready hands over what raft had.
    fn drain_ready(&mut self) -> Result<bool> {
        while self.raw.has_ready() {
            if self.on_ready()? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Handles one Ready; true when applying it removed this member.
    fn on_ready(&mut self) -> Result<bool> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut rd = self.raw.ready();
        // The leader's appends leave in parallel with its own fsync.
        let msgs = rd.take_messages();
        self.round.sent(&msgs);
        self.transport.send(msgs);
        if !rd.snapshot().is_empty() {
            self.start_install(rd.snapshot().clone())?;
        }
        if !rd.committed_entries().is_empty() {
            if let Some((_, last)) = self.deferred.as_mut() {
                // Behind those held back: applied from the log after them.
                *last = rd.committed_entries().last().map_or(*last, |e| e.index);
            } else if self.apply(rd.take_committed_entries())? {
                // Removed: raft no longer tracks this member's own progress; stop here.
                return Ok(true);
            }
        }
        let hs = rd.hs().cloned();
        if !rd.entries().is_empty() || hs.is_some() {
            self.storage.persist(rd.entries(), hs.as_ref())?;
        }
        // A new term or vote must be durable before any message that carries it leaves.
        let term_vote_changed = hs
            .as_ref()
            .is_some_and(|h| (h.term, h.vote) != self.written_term_vote);
        if let Some(h) = &hs {
            self.written_term_vote = (h.term, h.vote);
        }
        let rd_must_sync = rd.must_sync();
        for rs in rd.take_read_states() {
            if let Some((_, waiters)) = self.read_waiters.remove(&rs.request_ctx) {
                for tx in waiters {
                    let _ = tx.send(Ok(rs.index));
                }
            }
        }
        let number = rd.number();
        let installed_snapshot = !rd.snapshot().is_empty();
        // What the syncer must fsync; a snapshot Ready is made durable right here.
        let sync_later = rd_must_sync && !installed_snapshot;
        let held = rd.take_persisted_messages();
        let acked = self.round.acknowledging(&held);
        self.raw.advance_append_async(rd);
        if installed_snapshot {
            // Raft applies from the snapshot index on in this same turn (`advance_apply` below),
            // which it allows only once the snapshot is reported persisted: so the Ready is made
            // durable here. The install batch was fsync'ed, and with it every write before;
            // entries or a hard state written after it in this Ready need one more sync.
            if rd_must_sync {
                self.storage.backend().sync_journal()?;
            }
            self.raw.on_persist_ready(number);
        }
        if self.persisting != 0 || sync_later {
            // Behind earlier Readies still syncing (the messages keep their order), or to be
            // synced itself.
            if term_vote_changed {
                self.term_vote_syncing = number;
            }
            let held = if self.term_vote_syncing != 0 {
                held
            } else {
                self.send_ahead(held)
            };
            self.syncer.request(number, held, sync_later, acked);
            self.persisting = number;
        } else {
            self.transport.send(held);
            super::round::observe_ack(acked);
            if !installed_snapshot {
                self.raw.on_persist_ready(number);
            }
        }
        match self.deferred {
            // Raft's applied index is the state machine's: a conf change still held back
            // keeps this member from campaigning, as raft requires.
            Some((next, _)) => self.raw.advance_apply_to(next - 1),
            None => self.raw.advance_apply(),
        }
        // Never lowered: entries applied ahead (their index raised it) count as committed.
        self.status
            .commit_index
            .fetch_max(self.raw.raft.raft_log.committed, Ordering::AcqRel);
        self.update_status();
        Ok(false)
    }

    /// Sends now, of a Ready's messages held for durability, those that claim nothing durable:
    /// heartbeat answers (which also confirm the leader's ReadIndex rounds) and this
    /// follower's ReadIndex requests. Under writes a follower's Readies queue behind its
    /// fsyncs; without this every linearizable read waited out a follower's fsync of writes
    /// it has nothing to do with. Never while a new term or vote is not durable yet (the
    /// messages carry the term). Returns the rest, which wait.
    fn send_ahead(&self, held: Vec<Message>) -> Vec<Message> {
        let (now, later): (Vec<Message>, Vec<Message>) = held
            .into_iter()
            .partition(|m| claims_nothing_durable(m.get_msg_type()));
        if !now.is_empty() {
            self.transport.send(now);
        }
        later
    }

    /// A snapshot from the leader (this member's log is behind the leader's compacted log):
    /// the raft log is reset to it and made durable here (with the install's marker), then
    /// the state machine's keyspaces are replaced by an installer thread, which takes seconds
    /// for a big state. The loop goes on meanwhile: it ticks, answers heartbeats, appends and
    /// acknowledges the entries that follow the snapshot, and holds back applying them
    /// ([`Loop::deferred`]); reads on this member wait for the install.
    fn start_install(&mut self, snap: Snapshot) -> Result<()> {
        if let Some(inst) = self.installing.take() {
            // Another snapshot while one installs (rare: the leader sends one only to a member
            // its log cannot serve): the first one finishes first.
            self.finish_install(inst)?;
        }
        crate::snapshot::install::stage(self.storage.backend(), &self.storage, &snap)?;
        let meta = snap.get_metadata();
        let (index, conf_state) = (meta.index, meta.get_conf_state().clone());
        let job = self.sm.installer();
        let wake = self.wake.clone();
        let applier = self.applying.idle_waiter();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-install".into())
            .spawn(move || {
                // The state is replaced only once every entry before the snapshot was applied.
                applier.wait();
                let result = job(&snap);
                finished.store(true, Ordering::Release);
                let _ = wake.send(Command::Wake);
                result
            })
            .map_err(Error::internal)?;
        self.installing = Some(Installing {
            index,
            conf_state,
            thread,
            done,
        });
        // Sent only to a member missing entries before the snapshot: nothing was applied
        // past it here, and what was held back is in it.
        self.deferred = Some((index + 1, index));
        self.applied_ahead = 0;
        self.compacting = false;
        Ok(())
    }

    /// A snapshot received from the leader, its data naming a staged file. Raft takes it (the
    /// next Ready installs it) or refuses it (this member caught up meanwhile); a refused one's
    /// file goes and the snapshot slot is free again.
    fn step_snapshot(&mut self, m: Message) {
        let index = m.get_snapshot().get_metadata().index;
        let staged = m.clone();
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "dropped a peer message");
        }
        let taken = self.raw.raft.raft_log.unstable.snapshot.as_ref();
        if taken.is_none_or(|s| s.get_metadata().index != index) {
            crate::snapshot::receive::discard(&staged);
            self.status.release_snapshot_slot();
        }
    }

    /// Waits for the installer (at once when it is done) and makes its state current.
    fn finish_install(&mut self, inst: Installing) -> Result<()> {
        inst.thread
            .join()
            .map_err(|_| Error::internal("the snapshot installer panicked"))??;
        self.after_membership_change(&inst.conf_state);
        self.status.raise_applied(inst.index);
        Ok(())
    }

    /// Once the installer is done and the applier idle: applies the entries held back, from
    /// the log, a bounded step per turn. True when applying removed this member.
    fn progress_held_back(&mut self) -> Result<bool> {
        if self
            .installing
            .as_ref()
            .is_some_and(|inst| !inst.done.load(Ordering::Acquire))
        {
            return Ok(false);
        }
        if let Some(inst) = self.installing.take() {
            self.finish_install(inst)?;
            self.status.release_snapshot_slot();
        }
        let Some((next, last)) = self.deferred else {
            return Ok(false);
        };
        if next > last {
            self.deferred = None;
            return Ok(false);
        }
        if !self.applying.notify_when_idle() {
            return Ok(false);
        }
        let high = last.min(next + DEFERRED_STEP - 1) + 1;
        let entries = self
            .storage
            .entries(
                next,
                high,
                DEFERRED_STEP_BYTES,
                GetEntriesContext::empty(false),
            )
            .map_err(Error::internal)?;
        let Some(got) = entries.last().map(|e| e.index) else {
            return Err(Error::internal("held-back entries missing from the log"));
        };
        self.deferred = (got < last).then_some((got + 1, last));
        let removed = self.apply(entries)?;
        // Up to what was applied or queued: `apply` may have held some back again.
        self.raw
            .advance_apply_to(self.deferred.map_or(got, |(next, _)| next - 1));
        if self.deferred.is_some() && self.applying.notify_when_idle() {
            // More to apply, and nothing else will wake the loop for it: the next turn goes on
            // at once (after the commands that came meanwhile). A busy applier wakes it.
            let _ = self.wake.send(Command::Wake);
        }
        Ok(removed)
    }

    /// Holds back committed entries `from..=upto` (and those already held back) in the log.
    fn hold_back(&mut self, from: u64, upto: u64) {
        let last = self.deferred.map_or(upto, |(_, last)| last.max(upto));
        self.deferred = Some((from, last));
    }

    /// Applies committed entries: runs of normal entries in one batch, here or on the applier
    /// thread; a conf change here, once the applier applied every entry before it: to raft
    /// first, then to the membership. What cannot be applied or queued now is held back
    /// ([`Loop::deferred`]). True when applying removed this member.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<bool> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(false);
        };
        self.note_committed(last);
        // Committed before the applier raises the applied index to any of them: the status
        // never shows an applied index ahead of the commit index.
        self.status.commit_index.fetch_max(last, Ordering::AcqRel);
        let mut normal = Vec::new();
        let mut removed = false;
        for e in entries {
            match e.get_entry_type() {
                EntryType::EntryNormal if e.index <= self.applied_ahead => {}
                EntryType::EntryNormal => normal.push(e),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if !self.apply_normal(std::mem::take(&mut normal), last)? {
                        return Ok(removed);
                    }
                    if !self.applying.notify_when_idle() {
                        self.hold_back(e.index, last);
                        return Ok(removed);
                    }
                    removed |= self.apply_conf_change(&e)?;
                    self.status.raise_applied(e.index);
                }
            }
        }
        self.apply_normal(normal, last)?;
        Ok(removed)
    }

    /// Entries up to `last` are committed: the commit round of the ones this leader appended
    /// ends. A member that stepped down in this Ready (its status not updated yet) times none:
    /// what it had appended may have been replaced.
    fn note_committed(&mut self, last: u64) {
        if self.raw.raft.state == StateRole::Leader {
            self.round.committed(last);
        } else {
            self.round.not_leading();
        }
    }

    /// Applies one batch of normal entries here, or hands it to the applier thread: when one
    /// of them may take long, when it is large (see [`super::apply_queue`]), or when the
    /// applier still has batches (which go first). False when the queue was full (never while
    /// the applier is idle): the batch is held back, with the rest up to `last`.
    fn apply_normal(&mut self, entries: Vec<Entry>, last: u64) -> Result<bool> {
        let Some(first) = entries.first().map(|e| e.index) else {
            return Ok(true);
        };
        if self.apply_or_queue(entries)?.is_some() {
            self.hold_back(first, last);
            return Ok(false);
        }
        Ok(true)
    }

    /// Applies a batch here or queues it for the applier (see [`Loop::apply_normal`]); hands
    /// it back when the queue is full.
    fn apply_or_queue(&mut self, entries: Vec<Entry>) -> Result<Option<Vec<Entry>>> {
        if self.applying.idle()
            && entries.len() < super::apply_queue::HAND_OVER_ENTRIES
            && !entries.iter().any(S::may_take_long)
        {
            super::apply_queue::apply(&*self.sm, &self.status, entries)?;
            return Ok(None);
        }
        Ok(self.applying.try_submit(entries).err())
    }

    /// Considers the log for compaction each time the applied index moved: only entries the
    /// state machine holds (not those still queued for the applier) and raft counts as applied
    /// (durable here, so not those applied ahead) may leave the log.
    fn compact_log_as_applied(&mut self) -> Result<()> {
        let applied = self
            .status
            .applied_index()
            .min(self.raw.raft.raft_log.applied);
        if applied == self.compacted_for {
            return Ok(());
        }
        self.compacted_for = applied;
        self.maybe_compact_log(applied)
    }

    /// Applies entries that are committed but not yet durable on this member. raft-rs (as
    /// etcd-raft) hands out only entries that are both, for a log kept apart from the state
    /// machine. Ours is not: log entries and applied state go to the one fjall journal, the
    /// entries first, and the journal recovers as a prefix (fjall syncs a journal before it
    /// starts the next, and a memtable reaches disk only after its journal did). So the applied
    /// state can never survive a crash without the entries it came from, and a restart replays
    /// from the durable applied index (the commit index raised to it). What makes a write
    /// acknowledged does not change: raft commits an entry once a quorum holds it durably (the
    /// leader's own copy counts only once synced), and an entry is applied only once committed.
    ///
    /// The gain: the leader answers once the followers' acknowledgements commit an entry
    /// instead of also waiting for its own fdatasync; a follower serves reads sooner.
    /// Measured (3 members, 256-byte puts, medians of 4 interleaved runs): 16 clients 12.1k ->
    /// 12.4k puts/s, 64 clients 21.3k -> 22.2k, server CPU per put 58 -> 55 µs.
    /// Runs after every Ready was handled, when each entry raft holds has been written to
    /// storage, and only while nothing is held back; stops at a conf change, which goes
    /// through raft's own apply.
    ///
    /// This rests on fjall making a memtable durable (an SST) only after the journal that
    /// holds it: its flush task syncs the journal, then flushes the sealed memtables. With one
    /// fjall worker, which both seals and flushes, no memtable can be sealed in between
    /// (`backend::FJALL_WORKERS`, checked at compile time there).
    fn apply_ahead(&mut self) -> Result<()> {
        if self.deferred.is_some() {
            return Ok(());
        }
        let log = &self.raw.raft.raft_log;
        let from = self.applied_ahead.max(log.applied) + 1;
        let to = log.committed.min(log.last_index());
        if to < from {
            return Ok(());
        }
        let entries = log
            .slice(
                from,
                to + 1,
                DEFERRED_STEP_BYTES,
                GetEntriesContext::empty(false),
            )
            .map_err(Error::internal)?;
        let normal: Vec<Entry> = entries
            .into_iter()
            .take_while(|e| e.get_entry_type() == EntryType::EntryNormal)
            .collect();
        let Some(last) = normal.last().map(|e| e.index) else {
            return Ok(());
        };
        self.note_committed(last);
        // Committed (raft's commit index is at or past it) before it is applied: the status
        // never shows an applied index ahead of the commit index.
        self.status.commit_index.fetch_max(last, Ordering::AcqRel);
        // A batch the queue refuses is applied once raft hands it out (never held back before).
        if self.apply_or_queue(normal)?.is_none() {
            self.applied_ahead = last;
        }
        Ok(())
    }

    /// Returns true when the change removed this member. A conf change that does not decode,
    /// or that raft refuses (one removing every voter, say), is skipped with an error logged:
    /// a log entry is data from the network, and failing here stopped the member, and every
    /// member replaying the log, for good. Raft refuses the same change on every member (it
    /// depends only on the configuration, which they share), so they stay in agreement.
    fn apply_conf_change(&mut self, e: &Entry) -> Result<bool> {
        let decoded = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&e.data)
        } else {
            raft::eraftpb::ConfChange::parse_from_bytes(&e.data).map(|v1| v1.into_v2())
        };
        let applied = decoded.map_err(Error::internal).and_then(|cc| {
            Ok((
                self.raw.apply_conf_change(&cc).map_err(Error::internal)?,
                cc,
            ))
        });
        let (cs, cc) = match applied {
            Ok(v) => v,
            Err(err) => {
                tracing::error!(index = e.index, error = %err, "conf change refused; skipped");
                return Ok(false);
            }
        };
        self.storage.set_conf_state(&cs)?;
        self.sm.apply_conf_change(e.index, &cc, &cs)?;
        self.after_membership_change(&cs);
        let me = self.cfg.id;
        Ok(!cs.voters.contains(&me) && !cs.learners.contains(&me))
    }

    fn after_membership_change(&mut self, cs: &ConfState) {
        self.status
            .is_learner
            .store(cs.learners.contains(&self.cfg.id), Ordering::Release);
        let peers = self.sm.peers();
        let ids: Vec<u64> = peers.iter().map(|(id, _)| *id).collect();
        crate::metrics::retain_peers(&ids);
        self.transport.set_peers(peers);
    }

    /// Once `--snapshot-count` entries are applied beyond the ones kept for slow followers,
    /// drops them from the log: [`COMPACT_STEP`] entries per applied chunk, so that the loop
    /// never stalls on deleting a whole snapshot count's worth at once.
    ///
    /// On the leader, the entries a follower still needs stay too (up to `--snapshot-count`
    /// more): those after the snapshot it is being sent or is installing, or after the last one
    /// it has. A member that takes seconds to install a big snapshot under load then catches up
    /// from the log, instead of finding it compacted past the snapshot once the snapshot's
    /// stream is over (raft then probes it from there) and needing another one, and another.
    fn maybe_compact_log(&mut self, applied: u64) -> Result<()> {
        let first = self.storage.first_index().unwrap_or(1);
        let mut keep_from = applied.saturating_sub(self.cfg.catch_up_entries);
        if let Some(needed) = self.followers_need_from(false) {
            keep_from = keep_from.min(needed.max(applied.saturating_sub(self.cfg.snapshot_count)));
        }
        if let Some(needed) = self.followers_need_from(true) {
            let extra = self.cfg.snapshot_count.max(MIN_FOLLOWER_RETENTION);
            keep_from = keep_from.min(needed.max(applied.saturating_sub(extra)));
        }
        let due =
            applied.saturating_sub(first) > self.cfg.snapshot_count + self.cfg.catch_up_entries;
        if due || (self.compacting && first < keep_from) {
            // A step, or more when applied chunks outrun the steps (a member catching up
            // applies thousands at once): the log never holds more than it did before steps.
            let upto = keep_from
                .min(first + COMPACT_STEP - 1)
                .max(keep_from.saturating_sub(self.cfg.snapshot_count));
            self.storage.compact(upto)?;
            tracing::debug!(first, upto, keep_from, "raft log compacted");
            self.compacting = upto < keep_from;
        }
        Ok(())
    }

    /// On the leader: the lowest log position a follower still needs, the index of the snapshot
    /// it is being sent, or the entry before the next one it is to get. With `active_only`,
    /// among the followers heard from lately (catching up now, not down).
    fn followers_need_from(&self, active_only: bool) -> Option<u64> {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader {
            return None;
        }
        r.prs()
            .iter()
            .filter(|(id, p)| **id != self.cfg.id && (!active_only || p.recent_active))
            .map(|(_, p)| match p.state {
                raft::ProgressState::Snapshot => p.pending_snapshot,
                _ => p.next_idx.saturating_sub(1),
            })
            .min()
    }

    fn report(&self) -> RaftReport {
        let r = &self.raw.raft;
        let mut progress = Vec::new();
        if r.state == StateRole::Leader {
            let learners = r.prs().conf().learners();
            for (id, p) in r.prs().iter() {
                progress.push(PeerProgress {
                    id: *id,
                    matched: p.matched,
                    next_idx: p.next_idx,
                    state: match p.state {
                        raft::ProgressState::Probe => "probe",
                        raft::ProgressState::Replicate => "replicate",
                        raft::ProgressState::Snapshot => "snapshot",
                    },
                    recent_active: p.recent_active,
                    is_learner: learners.contains(id),
                });
            }
            progress.sort_by_key(|p| p.id);
        }
        RaftReport {
            role: r.state,
            first_index: self.storage.first_index().unwrap_or(0),
            last_index: r.raft_log.last_index(),
            progress,
        }
    }

    fn update_status(&mut self) {
        let r = &self.raw.raft;
        let campaigning =
            |s: StateRole| matches!(s, StateRole::PreCandidate | StateRole::Candidate);
        // A campaign begins when a member enters (pre-)candidacy, or, as a candidate, moves to
        // a new term (a failed election followed by another).
        if campaigning(r.state)
            && (!campaigning(self.last_role)
                || (r.state == StateRole::Candidate
                    && self.last_role == StateRole::Candidate
                    && r.term != self.last_term))
        {
            self.status.elections.fetch_add(1, Ordering::Relaxed);
        }
        self.last_role = r.state;
        self.last_term = r.term;
        self.status.term.store(r.term, Ordering::Release);
        let prev = self.status.leader.swap(r.leader_id, Ordering::AcqRel);
        crate::metrics::leader_seen(prev, r.leader_id);
        self.status.leader_log.record(prev, r.leader_id, r.term);
        let is_leader = r.state == StateRole::Leader;
        self.status
            .leader_term
            .store(if is_leader { r.term } else { 0 }, Ordering::Release);
        if is_leader != self.was_leader {
            self.was_leader = is_leader;
            self.round.clear();
            tracing::info!(term = r.term, is_leader, "leadership changed");
            self.sm.leadership_changed(is_leader);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A later start's ReadIndex sequence begins past an earlier run's: by the time elapsed
    /// in nanoseconds (a run takes at most one number per loop turn), less the random bits.
    #[test]
    fn read_seq_seeds_grow_with_the_clock() {
        let first = read_seq_seed();
        std::thread::sleep(Duration::from_millis(2));
        let later = read_seq_seed();
        assert!(later > first + 1_000_000, "{first} -> {later}");
        // Not a restart from 0: past 2025-01-01 in nanoseconds.
        assert!(first > 1_735_689_600_000_000_000);
    }

    /// Any term up to the ceiling plus the lead is taken, whatever this member's term; past
    /// the ceiling, up to this member's term plus the lead.
    #[test]
    fn peer_terms_are_bounded_past_the_ceiling_only() {
        let heartbeat = |term: u64| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeatResponse);
            m.term = term;
            m
        };
        let local = |term: u64| Local {
            term,
            last_index: 10,
            leader: true,
        };
        let top = TERM_CEILING + MAX_TERM_LEAD;
        for own in [1, 5, TERM_CEILING - 1, TERM_CEILING] {
            assert!(admissible(&heartbeat(own + 1), &local(own)).is_ok());
            assert!(admissible(&heartbeat(top), &local(own)).is_ok());
            assert!(admissible(&heartbeat(top + 1), &local(own)).is_err());
        }
        let own = TERM_CEILING + 7;
        assert!(admissible(&heartbeat(own + MAX_TERM_LEAD), &local(own)).is_ok());
        assert!(admissible(&heartbeat(own + MAX_TERM_LEAD + 1), &local(own)).is_err());
        assert!(admissible(&heartbeat(u64::MAX), &local(u64::MAX - 1)).is_ok());
        assert!(admissible(&heartbeat(u64::MAX), &local(1)).is_err());
    }
}
