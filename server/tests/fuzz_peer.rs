//! A structured fuzzer for the raft message stream (issue 17): a live 3-member cluster, raft
//! streams opened to one member (a follower, then the leader) in the name of another real
//! member, and seeded random but well-typed raft messages on them. Every message type but a
//! snapshot (refused on the stream anyway), boundary and random values in every field,
//! entries of every type with garbage or large data, and real-looking messages with one field
//! perturbed.
//!
//! raft-rs trusts its peers and panics on some malformed messages; a panic in the raft loop
//! aborts the member's process, which here is the test's, so a panic fails the run (the panic
//! hook prints the batch being sent first). After each batch the member must serve a put and
//! a linearizable read again (the elections a batch may cause are allowed); at the end every
//! member must hold the same keys, revision, hash and membership, with every acknowledged put.
//!
//! What it never sends: plausible forgeries, i.e. messages an honest member could send in
//! another run and whose truth raft cannot check here. An append raft may take at a position
//! where it could match this log, a commit index inside this member's log, an acknowledgement
//! of entries the claimed member may not hold, a granted vote, a proposal that decodes to a
//! real request or membership change. Raft is not Byzantine fault tolerant: a member that
//! lies like that can make the others diverge by design, and the peer port's defence against
//! it is peer TLS and the membership check. The filter ([`forgery`]) rejects only those; a
//! malformed message (one no honest member sends in any run) always goes out.
//!
//! `FUZZ_SEED=<n>` reruns a seed (the same messages, as far as the cluster's elections come
//! out the same), `FUZZ_ITERS=<n>` sends that many messages in all, `FUZZ_VERBOSE=1` prints
//! each batch, `RUST_LOG=pgraft_server=info` the members' logs
//! (`cargo test -p pgraft-server --test fuzz_peer -- --nocapture`).

mod common;

use etcd_proto::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, HashKvRequest, PutRequest,
    RangeRequest, RangeResponse,
};
use pgraft_server::raft::wire;
use pgraft_server::request::InternalRequest;
use pgraft_server::Node;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// A position this far past the target's last index stays out of its log for a batch's time
/// (the log grows by a few entries meanwhile, at elections).
const MARGIN: u64 = 1000;
/// How long a member may take to serve again after a batch (elections included).
const RECOVERY: Duration = Duration::from_secs(30);
/// One try of a put or read: a proposal forwarded to a member that is not the leader (after a
/// message made this member take another for its leader, until the leader's next heartbeat)
/// is lost, and its client waits out this long before it tries again.
const ATTEMPT: Duration = Duration::from_secs(1);
/// raft-rs's context of a vote for a leadership transfer (a vote that ignores the leader lease).
const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

/// The batch being sent, for the panic hook: a raft panic aborts the process (the member's raft
/// thread stops it) before any assertion could say what caused it.
static CURRENT: Mutex<String> = Mutex::new(String::new());
/// Set by the panic hook: a panic in any thread (a peer stream's task included, which would
/// not stop the process) fails the run.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        let batch = CURRENT
            .try_lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| "(batch description locked)".into());
        // Straight to the process's stderr: the test harness captures only the print macros,
        // and loses what it captured when the process aborts.
        let _ = writeln!(
            std::io::stderr(),
            "\n=== panic in thread {:?}: {info}\n=== while the fuzzer sent:\n{batch}",
            std::thread::current().name()
        );
        previous(info);
    }));
}

fn rng() -> (StdRng, u64, usize) {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    let iters = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    println!("fuzz_peer: FUZZ_SEED={seed} FUZZ_ITERS={iters}");
    (StdRng::seed_from_u64(seed), seed, iters)
}

/// What the fuzzer knows of the target when it makes a batch: enough to tell which messages
/// would be forgeries (the bounds hold for the whole batch).
#[derive(Clone, Copy, Debug)]
struct View {
    /// The target's term (it only grows).
    term: u64,
    /// The target's commit index (it only grows): entries up to it are committed.
    committed: u64,
    /// The target's last log index.
    last: u64,
    /// The claimed sender's commit index: entries it surely holds.
    sender_commit: u64,
    /// On a leader, the index it probes or next sends the claimed sender (0: not the leader):
    /// a refusal of it is taken, not dropped as stale.
    sender_next: u64,
    from: u64,
    to: u64,
}

async fn view(target: &Node, sender: &Node) -> View {
    let raft = &target.server.raft;
    let report = raft.report().await.expect("the raft loop answers");
    let from = sender.server.member_id();
    let sender_next = report
        .progress
        .iter()
        .find(|p| p.id == from)
        .map_or(0, |p| p.next_idx.saturating_sub(1));
    View {
        term: raft.status.term(),
        committed: raft.status.commit_index(),
        last: report.last_index,
        sender_commit: sender.server.raft.status.commit_index(),
        sender_next,
        from,
        to: target.server.member_id(),
    }
}

// ---- values ----

fn pick<T: Copy>(r: &mut StdRng, from: &[T]) -> T {
    from[r.random_range(0..from.len())]
}

/// A huge term or index: near overflow, or anything past 2^63 (none of which a member takes
/// for a term); in a storm also terms a member takes (around 2^62, its ceiling for jumps).
fn huge(r: &mut StdRng, storm: bool) -> u64 {
    let any = r.random::<u64>() | (1 << 63);
    let mut values = vec![u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1, any];
    if storm {
        values.extend([1 << 62, (1 << 62) - 1, (1 << 62) + (1 << 31)]);
    }
    pick(r, &values)
}

/// A term: mostly the current one or a stale one; in a storm, a later one too.
fn term(r: &mut StdRng, v: &View, storm: bool) -> u64 {
    match r.random_range(0..20) {
        0 | 1 => 0,
        2 | 3 => huge(r, storm),
        4..=6 => r.random_range(1..=v.term.max(1)),
        7 | 8 => v.term.saturating_sub(1).max(1),
        9 | 10 if storm => v.term.saturating_add(1),
        11 if storm => v.term.saturating_add(r.random_range(2..100)),
        12 if storm => v.term.saturating_add(r.random_range(100..(1 << 20))),
        _ => v.term,
    }
}

/// A term for a log position (log_term, commit_term, an entry's): any of [`term`]'s, or
/// beyond the current term.
fn log_term(r: &mut StdRng, v: &View) -> u64 {
    match r.random_range(0..10) {
        0 => v.term.saturating_add(1),
        1 => v.term.saturating_add(r.random_range(2..1000)),
        _ => term(r, v, true),
    }
}

/// An index: around the target's commit and last index, the claimed sender's commit, far past
/// the log, at the edges of u64, or anything.
fn index(r: &mut StdRng, v: &View) -> u64 {
    let base = match r.random_range(0..24) {
        0 | 1 => return 0,
        2 => return 1,
        3 | 4 => return huge(r, true),
        5 => return r.random(),
        6 => return v.last.saturating_add(r.random_range(2..=2 * MARGIN)),
        7..=9 => v.committed,
        10..=15 => v.last,
        16..=18 if v.sender_next != 0 => v.sender_next,
        _ => v.sender_commit,
    };
    match r.random_range(0..6) {
        0 => base.saturating_sub(1),
        1 => base.saturating_add(1),
        2 => base.saturating_sub(r.random_range(2..50)),
        3 => base.saturating_add(r.random_range(2..50)),
        _ => base,
    }
}

fn bytes(r: &mut StdRng, max: usize) -> Vec<u8> {
    let n = r.random_range(0..=max);
    (0..n).map(|_| r.random()).collect()
}

/// An entry's data for its type: empty, random (small, kilobytes, or rarely hundreds of them),
/// or a conf change naming node 0 (which raft ignores).
fn entry_data(r: &mut StdRng, t: EntryType) -> Vec<u8> {
    match r.random_range(0..20) {
        0..=3 => Vec::new(),
        4..=12 => bytes(r, 64),
        13..=16 => bytes(r, 4096),
        17 => bytes(r, 300 * 1024),
        _ => match t {
            EntryType::EntryConfChange => {
                let mut cc = ConfChange::default();
                cc.set_change_type(pick(
                    r,
                    &[
                        ConfChangeType::AddNode,
                        ConfChangeType::AddLearnerNode,
                        ConfChangeType::RemoveNode,
                    ],
                ));
                cc.context = bytes(r, 16).into();
                cc.write_to_bytes().unwrap()
            }
            _ => {
                let mut cc = ConfChangeV2::default();
                cc.set_transition(pick(
                    r,
                    &[
                        ConfChangeTransition::Auto,
                        ConfChangeTransition::Implicit,
                        ConfChangeTransition::Explicit,
                    ],
                ));
                for _ in 0..r.random_range(0..3) {
                    let mut s = ConfChangeSingle::default();
                    s.set_change_type(ConfChangeType::RemoveNode);
                    cc.mut_changes().push(s);
                }
                cc.context = bytes(r, 16).into();
                cc.write_to_bytes().unwrap()
            }
        },
    }
}

fn entry_type(r: &mut StdRng) -> EntryType {
    match r.random_range(0..10) {
        0 => EntryType::EntryConfChange,
        1 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    }
}

/// Entries for `m`: mostly following its position with terms in order, else anywhere.
fn entries(r: &mut StdRng, m: &Message, v: &View) -> Vec<Entry> {
    let n = match r.random_range(0..20) {
        0..=5 => 0,
        6..=15 => r.random_range(1..4),
        16..=18 => r.random_range(4..40),
        _ => r.random_range(40..200),
    };
    let contiguous = r.random_bool(0.7);
    let ordered = r.random_bool(0.7);
    let mut t = m.log_term.clamp(1, m.term.max(1));
    (0..n)
        .map(|i| {
            let index = if contiguous {
                m.index.wrapping_add(1 + i)
            } else {
                index(r, v)
            };
            if !ordered {
                t = log_term(r, v);
            } else if t < m.term && r.random_bool(0.2) {
                t += 1;
            }
            let kind = entry_type(r);
            let mut e = Entry {
                term: t,
                index,
                data: entry_data(r, kind).into(),
                context: if r.random_bool(0.2) {
                    bytes(r, 32).into()
                } else {
                    Default::default()
                },
                sync_log: r.random_bool(0.1),
                ..Default::default()
            };
            e.set_entry_type(kind);
            e
        })
        .collect()
}

// ---- messages ----

/// Every type but MsgSnapshot, the ones a peer sends more often than the local ones (which
/// raft-rs refuses from the network). TimeoutNow and TransferLeader start elections: storms
/// only.
fn kind(r: &mut StdRng, storm: bool) -> MessageType {
    use MessageType::*;
    loop {
        let t = match r.random_range(0..40) {
            0..=4 => MsgAppend,
            5..=7 => MsgAppendResponse,
            8..=10 => MsgRequestVote,
            11..=12 => MsgRequestVoteResponse,
            13..=15 => MsgHeartbeat,
            16..=17 => MsgHeartbeatResponse,
            18..=20 => MsgPropose,
            21..=23 => MsgReadIndex,
            24..=26 => MsgReadIndexResp,
            27..=29 => MsgRequestPreVote,
            30..=31 => MsgRequestPreVoteResponse,
            32 => MsgTransferLeader,
            33 => MsgTimeoutNow,
            34 => MsgHup,
            35 => MsgBeat,
            36 => MsgUnreachable,
            37 => MsgSnapStatus,
            38 => MsgCheckQuorum,
            _ => MsgAppend,
        };
        if storm || !matches!(t, MsgTransferLeader | MsgTimeoutNow) {
            return t;
        }
    }
}

/// A message with every field drawn at random (from values that matter to raft).
fn random_message(r: &mut StdRng, v: &View, storm: bool) -> Message {
    let mut m = Message::default();
    let t = kind(r, storm);
    m.set_msg_type(t);
    m.from = v.from;
    m.to = v.to;
    m.term =
        if matches!(t, MessageType::MsgPropose | MessageType::MsgReadIndex) && r.random_bool(0.7) {
            0
        } else {
            term(r, v, storm)
        };
    m.log_term = log_term(r, v);
    m.index = index(r, v);
    m.commit = index(r, v);
    m.commit_term = if r.random_bool(0.5) {
        0
    } else {
        log_term(r, v)
    };
    m.reject = r.random_bool(0.5);
    m.reject_hint = if r.random_bool(0.5) { 0 } else { index(r, v) };
    m.request_snapshot = if storm && r.random_bool(0.1) {
        index(r, v)
    } else if r.random_bool(0.05) {
        huge(r, true)
    } else {
        0
    };
    m.context = match r.random_range(0..10) {
        0 if storm => CAMPAIGN_TRANSFER.to_vec().into(),
        1..=3 => bytes(r, 16).into(),
        _ => Default::default(),
    };
    m.priority = match r.random_range(0..6) {
        0 => pick(r, &[i64::MAX, i64::MIN, -1, 1]),
        1 => r.random(),
        _ => 0,
    };
    m.deprecated_priority = if r.random_bool(0.1) { r.random() } else { 0 };
    let with_entries = matches!(
        t,
        MessageType::MsgAppend
            | MessageType::MsgPropose
            | MessageType::MsgReadIndex
            | MessageType::MsgReadIndexResp
    );
    if with_entries || r.random_bool(0.05) {
        m.entries = entries(r, &m, v).into();
    }
    if r.random_bool(0.02) {
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = index(r, v);
        meta.term = log_term(r, v);
        m.mut_snapshot().data = bytes(r, 64).into();
    }
    m
}

/// A message shaped like one an honest member sends in this state.
fn real_looking(r: &mut StdRng, v: &View, storm: bool) -> Message {
    use MessageType::*;
    let mut m = Message {
        from: v.from,
        to: v.to,
        term: v.term,
        ..Default::default()
    };
    let ctx = |r: &mut StdRng| -> Entry {
        Entry {
            data: r.random::<u64>().to_be_bytes().to_vec().into(),
            ..Default::default()
        }
    };
    match r.random_range(0..12) {
        0 => {
            m.set_msg_type(MsgHeartbeat);
            m.commit = v.committed;
        }
        1 | 2 => {
            m.set_msg_type(MsgAppend);
            m.index = v.last;
            m.log_term = v.term;
            m.commit = v.committed;
            for i in 0..r.random_range(0..4) {
                m.mut_entries().push(Entry {
                    term: v.term,
                    index: v.last.saturating_add(1 + i),
                    data: bytes(r, 32).into(),
                    ..Default::default()
                });
            }
        }
        3 => {
            m.set_msg_type(pick(r, &[MsgRequestVote, MsgRequestPreVote]));
            m.term = if storm {
                v.term.saturating_add(1)
            } else {
                v.term
            };
            m.index = v.last;
            m.log_term = v.term;
            m.commit = v.committed;
            m.commit_term = v.term;
        }
        4 => {
            m.set_msg_type(pick(
                r,
                &[MsgRequestVoteResponse, MsgRequestPreVoteResponse],
            ));
            m.reject = true;
            m.commit = v.committed;
            m.commit_term = v.term;
        }
        5 => {
            m.set_msg_type(MsgAppendResponse);
            m.index = v.sender_commit;
            m.commit = v.sender_commit;
        }
        6 => {
            m.set_msg_type(MsgAppendResponse);
            m.reject = true;
            m.index = v.last;
            m.reject_hint = v.sender_commit;
            m.log_term = v.term;
            m.commit = v.sender_commit;
        }
        7 => {
            m.set_msg_type(MsgHeartbeatResponse);
            m.commit = v.sender_commit;
            if r.random_bool(0.5) {
                m.context = r.random::<u64>().to_be_bytes().to_vec().into();
            }
        }
        8 => {
            m.set_msg_type(MsgReadIndex);
            m.term = 0;
            m.mut_entries().push(ctx(r));
        }
        9 => {
            m.set_msg_type(MsgReadIndexResp);
            m.index = v.committed;
            m.mut_entries().push(ctx(r));
        }
        10 => {
            m.set_msg_type(MsgPropose);
            m.term = 0;
            m.mut_entries().push(Entry::default());
        }
        _ => {
            m.set_msg_type(if storm {
                pick(r, &[MsgTimeoutNow, MsgTransferLeader])
            } else {
                MsgHeartbeatResponse
            });
        }
    }
    m
}

/// One or two fields of `m` changed to a boundary or random value.
fn perturb(r: &mut StdRng, m: &mut Message, v: &View, storm: bool) {
    for _ in 0..r.random_range(1..=2) {
        match r.random_range(0..14) {
            0 | 1 => m.term = term(r, v, storm),
            2 => m.log_term = log_term(r, v),
            3 | 4 => m.index = index(r, v),
            5 | 6 => m.commit = index(r, v),
            7 => m.commit_term = log_term(r, v),
            8 => m.reject = !m.reject,
            9 => m.reject_hint = index(r, v),
            10 => {
                m.context = if storm && r.random_bool(0.3) {
                    CAMPAIGN_TRANSFER.to_vec().into()
                } else {
                    bytes(r, 16).into()
                }
            }
            11 => m.priority = pick(r, &[i64::MAX, i64::MIN, -1, 1]),
            _ => perturb_entries(r, m, v),
        }
    }
}

fn perturb_entries(r: &mut StdRng, m: &mut Message, v: &View) {
    let mut es: Vec<Entry> = m.take_entries().into();
    let n = es.len();
    match r.random_range(0..9) {
        0 => es.clear(),
        1 if n > 0 => {
            es.remove(r.random_range(0..n));
        }
        2 if n > 0 => {
            let e = es[r.random_range(0..n)].clone();
            es.insert(r.random_range(0..=n), e);
        }
        3 if n > 1 => es.swap(0, n - 1),
        4 if n > 0 => {
            let i = r.random_range(0..n);
            es[i].index = index(r, v);
        }
        5 if n > 0 => {
            let i = r.random_range(0..n);
            es[i].term = pick(
                r,
                &[
                    0,
                    m.term.saturating_add(1),
                    m.log_term.saturating_sub(1),
                    u64::MAX,
                ],
            );
        }
        6 if n > 0 => {
            let i = r.random_range(0..n);
            let t = entry_type(r);
            es[i].set_entry_type(t);
            es[i].data = entry_data(r, t).into();
        }
        _ => {
            let at = m.index.wrapping_add(n as u64 + r.random_range(1..4));
            es.push(Entry {
                term: m.term,
                index: at,
                data: bytes(r, 32).into(),
                ..Default::default()
            });
        }
    }
    m.entries = es.into();
}

/// Whether an append follows the rules an honest leader's do: a term, a log term no later
/// than it (0 only at index 0), and entries right after its position with terms in order.
fn honest_append(m: &Message) -> bool {
    if m.term == 0 || m.log_term > m.term || (m.log_term == 0) != (m.index == 0) {
        return false;
    }
    let mut prev = m.log_term.max(1);
    for (i, e) in m.entries.iter().enumerate() {
        if m.index.checked_add(1 + i as u64) != Some(e.index) || e.term < prev || e.term > m.term {
            return false;
        }
        prev = e.term;
    }
    true
}

/// Whether an entry of a proposal decodes to something that would change the state: a real
/// request, or a membership change (raft ignores changes of node 0).
fn effective_entry(e: &Entry) -> bool {
    match e.get_entry_type() {
        EntryType::EntryNormal => <InternalRequest as prost::Message>::decode(e.data.as_ref())
            .is_ok_and(|q| q.op.is_some()),
        EntryType::EntryConfChange => {
            ConfChange::parse_from_bytes(&e.data).is_ok_and(|cc| cc.node_id != 0)
        }
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data)
            .is_ok_and(|cc| cc.changes.iter().any(|c| c.node_id != 0)),
    }
}

/// Why `m` would be a plausible forgery (see the module comment), if it would.
fn forgery(m: &Message, v: &View) -> Option<&'static str> {
    use MessageType::*;
    if m.term != 0 && m.term < v.term {
        // Stale: raft answers from its own state or ignores it.
        return None;
    }
    // Positions that may be inside the target's log but past its commit index, and terms
    // entries there may have.
    let in_log = |i: u64| i > v.committed && i <= v.last.saturating_add(MARGIN);
    let max_term = m.term.max(v.term).saturating_add(MARGIN);
    let maybe_term = |t: u64| (1..=max_term).contains(&t);
    let t = m.get_msg_type();
    match t {
        MsgAppend
            if honest_append(m)
                && m.index >= v.committed
                && m.index <= v.last.saturating_add(MARGIN)
                && maybe_term(m.log_term) =>
        {
            Some("an append at a position that may match")
        }
        MsgHeartbeat if in_log(m.commit) => Some("a heartbeat commit inside the log"),
        MsgReadIndexResp if m.term != 0 && m.entries.len() == 1 && in_log(m.index) => {
            Some("a read index inside the log")
        }
        MsgRequestVoteResponse | MsgRequestPreVoteResponse if !m.reject => Some("a granted vote"),
        MsgAppendResponse
            if !m.reject
                && m.index > v.sender_commit
                && m.index <= v.last.saturating_add(MARGIN) =>
        {
            Some("an acknowledgement the sender may not back")
        }
        MsgPropose if m.entries.iter().any(effective_entry) => Some("an effective proposal"),
        MsgRequestVote | MsgRequestPreVote | MsgRequestVoteResponse | MsgRequestPreVoteResponse
            if in_log(m.commit) && maybe_term(m.commit_term) =>
        {
            Some("a vote's commit inside the log")
        }
        _ => None,
    }
}

fn describe(m: &Message) -> String {
    let mut s = format!(
        "{:?} term={} log_term={} index={} commit={} commit_term={} reject={} hint={} \
         req_snap={} ctx={:?} prio={}/{}",
        m.get_msg_type(),
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.reject,
        m.reject_hint,
        m.request_snapshot,
        String::from_utf8_lossy(&m.context[..m.context.len().min(16)]),
        m.priority,
        m.deprecated_priority,
    );
    if !m.entries.is_empty() {
        let shown: Vec<String> = m
            .entries
            .iter()
            .take(6)
            .map(|e| {
                format!(
                    "{}/{}/{:?}/{}B",
                    e.index,
                    e.term,
                    e.get_entry_type(),
                    e.data.len()
                )
            })
            .collect();
        s += &format!(" entries({})=[{}]", m.entries.len(), shown.join(" "));
    }
    if m.has_snapshot() {
        s += " +snapshot";
    }
    s
}

#[derive(Default)]
struct Stats {
    batches: usize,
    storms: usize,
    sent: BTreeMap<String, usize>,
    forgeries_skipped: BTreeMap<&'static str, usize>,
    slow_recoveries: usize,
    longest_recovery: Duration,
}

fn generate(r: &mut StdRng, v: &View, storm: bool, stats: &mut Stats) -> Message {
    loop {
        let m = if r.random_bool(0.35) {
            let mut m = real_looking(r, v, storm);
            perturb(r, &mut m, v, storm);
            m
        } else {
            random_message(r, v, storm)
        };
        match forgery(&m, v) {
            Some(why) => *stats.forgeries_skipped.entry(why).or_default() += 1,
            None => {
                *stats
                    .sent
                    .entry(format!("{:?}", m.get_msg_type()))
                    .or_default() += 1;
                return m;
            }
        }
    }
}

// ---- the cluster ----

/// The members, with a client of each.
struct Cluster {
    nodes: Vec<Node>,
    clients: Vec<KvClient<Channel>>,
}

impl Cluster {
    async fn start(dir: &std::path::Path) -> Cluster {
        let nodes = common::start_cluster(dir, 3, &[]).await;
        let mut clients = Vec::new();
        for n in &nodes {
            clients.push(
                KvClient::new(common::channel(n).await).max_decoding_message_size(usize::MAX),
            );
        }
        Cluster { nodes, clients }
    }

    fn id(&self, i: usize) -> u64 {
        self.nodes[i].server.member_id()
    }
}

/// The current leader, once there is one all members agree on.
async fn leader(nodes: &[Node]) -> usize {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let leaders: Vec<u64> = nodes
            .iter()
            .map(|n| n.server.raft.status.leader())
            .collect();
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            if let Some(i) = nodes
                .iter()
                .position(|n| n.server.member_id() == leaders[0])
            {
                return i;
            }
        }
        if Instant::now() >= deadline {
            let mut states = Vec::new();
            for n in nodes {
                let st = &n.server.raft.status;
                let report = n.server.raft.report().await;
                states.push(format!(
                    "{:x}: term {} leader {:x} commit {} applied {} {report:x?}",
                    n.server.member_id(),
                    st.term(),
                    st.leader(),
                    st.commit_index(),
                    st.applied_index()
                ));
            }
            panic!("no leader all members agree on after {RECOVERY:?}: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A put through `node`, retried (elections, leader changes) until it is acknowledged; returns
/// the revision.
async fn put(c: &Cluster, i: usize, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + RECOVERY;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        let mut kv = c.clients[i].clone();
        match tokio::time::timeout(ATTEMPT, kv.put(req)).await {
            Ok(Ok(r)) => return r.into_inner().header.unwrap().revision,
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "member {:x} did not take a put within {RECOVERY:?}: {last_error}",
        c.id(i)
    );
}

/// A linearizable range through `node`, retried until answered.
async fn range(c: &Cluster, i: usize, key: &[u8], end: &[u8]) -> RangeResponse {
    let deadline = Instant::now() + RECOVERY;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let req = RangeRequest {
            key: key.to_vec(),
            range_end: end.to_vec(),
            ..Default::default()
        };
        let mut kv = c.clients[i].clone();
        match tokio::time::timeout(ATTEMPT, kv.range(req)).await {
            Ok(Ok(r)) => return r.into_inner(),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "member {:x} did not answer a linearizable read within {RECOVERY:?}: {last_error}",
        c.id(i)
    );
}

/// Sends `msgs` on a new raft stream to `target` in the name of member `from`; returns the
/// stream (kept open until the batch is checked). The member writes on a raft stream only to
/// refuse it, which these messages must never make it do.
async fn send(target: &Node, from: u64, msgs: &[Message]) -> TcpStream {
    let mut out = wire::preamble(target.server.cluster_id(), from).to_vec();
    for m in msgs {
        wire::put_message(&mut out, m);
    }
    let mut s = TcpStream::connect(target.peer_addrs[0])
        .await
        .expect("peer port");
    let written = s.write_all(&out).await;
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_millis(30), s.read_buf(&mut answer)).await {
        Err(_) if written.is_ok() => s,
        Err(_) => panic!("raft stream write failed: {written:?}"),
        Ok(read) => {
            let reason = match wire::next_frame(&answer) {
                wire::Frame::Whole(reason, _) => String::from_utf8_lossy(reason).into_owned(),
                _ => format!("{answer:?}"),
            };
            panic!("the member refused or closed the stream ({read:?}, {written:?}): {reason}");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// A follower, in the name of the leader or of the other follower.
    Follower,
    /// The leader, in the name of a follower.
    Leader,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_from_a_member_never_break_the_cluster() {
    install_panic_hook();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (mut r, seed, iters) = rng();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path()).await;
    let nodes = &c.nodes;
    let ids: Vec<u64> = nodes.iter().map(|n| n.server.member_id()).collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("fuzz/init/{i:02}"), format!("{seed}-{i}"));
        put(&c, i % 3, &k, &v).await;
        acked.push((k, v));
    }

    let mut stats = Stats::default();
    let mut sent = 0;
    for (p, phase) in [Phase::Follower, Phase::Leader].into_iter().enumerate() {
        let quota = iters / 2 + if p == 0 { iters % 2 } else { 0 };
        let mut done = 0;
        while done < quota {
            let l = leader(nodes).await;
            let (t, s) = match phase {
                Phase::Follower => {
                    let t = (l + r.random_range(1..3)) % 3;
                    let s = if r.random_bool(0.6) { l } else { 3 - l - t };
                    (t, s)
                }
                Phase::Leader => (l, (l + r.random_range(1..3)) % 3),
            };
            let (target, sender) = (&nodes[t], &nodes[s]);
            let storm = r.random_bool(0.1);
            let v = view(target, sender).await;
            let n = r.random_range(1..=64).min(quota - done);
            let msgs: Vec<Message> = (0..n)
                .map(|_| generate(&mut r, &v, storm, &mut stats))
                .collect();
            *CURRENT.lock().unwrap() = format!(
                "FUZZ_SEED={seed} {phase:?} batch {} (storm: {storm}) to {:x} as {:x}, {v:?}\n{}",
                stats.batches,
                v.to,
                v.from,
                msgs.iter().map(describe).collect::<Vec<_>>().join("\n")
            );
            if std::env::var_os("FUZZ_VERBOSE").is_some() {
                println!(
                    "batch {} {phase:?} to {:x} as {:x} storm {storm} n {n} {v:?}",
                    stats.batches, v.to, v.from
                );
            }
            let stream = send(target, v.from, &msgs).await;
            // The member serves again: a put through it, then a linearizable read of it.
            let (k, val) = (
                format!("fuzz/{p}/{:05}", stats.batches),
                format!("{seed}-{}", stats.batches),
            );
            let began = Instant::now();
            put(&c, t, &k, &val).await;
            let got = range(&c, t, k.as_bytes(), &[]).await;
            assert_eq!(
                got.kvs.first().map(|kv| kv.value.as_slice()),
                Some(val.as_bytes()),
                "{k} read back through {:x}",
                v.to
            );
            let took = began.elapsed();
            if std::env::var_os("FUZZ_VERBOSE").is_some() {
                println!("  served again after {} ms", took.as_millis());
            }
            if took > Duration::from_secs(1) {
                stats.slow_recoveries += 1;
            }
            stats.longest_recovery = stats.longest_recovery.max(took);
            drop(stream);
            acked.push((k, val));
            assert!(
                !PANICKED.load(Ordering::SeqCst),
                "a thread panicked (see above)"
            );
            stats.batches += 1;
            stats.storms += usize::from(storm);
            done += n;
            sent += n;
        }
    }
    CURRENT.lock().unwrap().clear();
    let fuzzing = started.elapsed();

    // Every member ends with the same state: the same keys, values and revisions (every
    // acknowledged put among them), the same hash at the final revision, the same members.
    let l = leader(nodes).await;
    let rev = put(&c, l, "fuzz/final", "end").await;
    let mut states = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let got = range(&c, i, b"fuzz/", b"fuzz0").await;
        assert!(
            got.header.as_ref().unwrap().revision >= rev,
            "a linearizable read below the final put's revision"
        );
        let hash = MaintenanceClient::new(common::channel(n).await)
            .hash_kv(HashKvRequest { revision: rev })
            .await
            .expect("HashKV")
            .into_inner();
        let mut members: Vec<u64> = n.server.membership.members().iter().map(|m| m.id).collect();
        members.sort_unstable();
        states.push((got, hash.hash, hash.compact_revision, members));
    }
    for (i, (got, hash, compact, members)) in states.iter().enumerate() {
        let (want, want_hash, want_compact, want_members) = &states[0];
        assert_eq!(got.kvs, want.kvs, "member {:x}'s keys differ", ids[i]);
        assert_eq!(
            got.header.as_ref().unwrap().revision,
            want.header.as_ref().unwrap().revision,
            "member {:x}'s revision differs",
            ids[i]
        );
        assert_eq!(
            (hash, compact),
            (want_hash, want_compact),
            "member {:x}'s hash",
            ids[i]
        );
        assert_eq!(members, want_members, "member {:x}'s members", ids[i]);
    }
    let mut all_ids = ids.clone();
    all_ids.sort_unstable();
    assert_eq!(states[0].3, all_ids, "the members changed");
    let stored: BTreeMap<&[u8], &[u8]> = states[0]
        .0
        .kvs
        .iter()
        .map(|kv| (kv.key.as_slice(), kv.value.as_slice()))
        .collect();
    for (k, v) in &acked {
        assert_eq!(
            stored.get(k.as_bytes()).copied(),
            Some(v.as_bytes()),
            "acknowledged put of {k} lost"
        );
    }
    assert!(!PANICKED.load(Ordering::SeqCst), "a thread panicked");
    let terms: Vec<u64> = nodes.iter().map(|n| n.server.raft.status.term()).collect();
    println!(
        "fuzz_peer: {sent} messages in {} batches ({} storms) in {:.1} s ({:.1} s in all); \
         {} slow recoveries, the longest {:.2} s; terms now {terms:?}",
        stats.batches,
        stats.storms,
        fuzzing.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        stats.slow_recoveries,
        stats.longest_recovery.as_secs_f64(),
    );
    println!("sent by type: {:?}", stats.sent);
    println!("forgeries not sent: {:?}", stats.forgeries_skipped);
    for n in c.nodes {
        n.stop().await;
    }
}
