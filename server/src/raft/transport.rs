//! The peer transport (etcd's `rafthttp`), outbound side: one task per peer streams batches of
//! raft messages over a long-lived gRPC stream, reconnecting on failure; snapshot messages go
//! on their own stream, their state data in chunks. The raft loop never blocks on the network:
//! a full peer queue drops messages (raft retransmits) and reports the peer unreachable; a
//! broken stream reports the link lost (see [`Command::LinkLost`]).

use super::node::Command;
use etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient;
use etcd_proto::pgraftpb::{RaftBatch, SnapshotChunk};
use parking_lot::Mutex;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::sync::mpsc::Sender as LoopSender;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

/// What a member answers to peer traffic from a member removed from the cluster.
pub const MEMBER_REMOVED: &str = "pgraft: the member has been permanently removed from the cluster";

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per batch on the wire.
const MAX_BATCH: usize = 512;
/// Snapshot data per chunk.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Wait before reconnecting to a peer that failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// An idle link sends an empty batch this often (etcd's link heartbeat), so that the receiver
/// knows the sender is connected even when raft has nothing to say to it.
const LINK_HEARTBEAT: Duration = Duration::from_millis(500);
/// A peer not heard from for this long counts as disconnected.
const INACTIVE_AFTER: Duration = Duration::from_secs(2);

struct Peer {
    url: String,
    channel: Channel,
    tx: mpsc::Sender<Message>,
}

pub struct Transport {
    id: u64,
    cluster_id: u64,
    runtime: Handle,
    loop_tx: LoopSender<Command>,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Per peer heard from: (since when without a gap, last time).
    activity: Mutex<HashMap<u64, (Instant, Instant)>>,
}

impl Transport {
    pub fn new(id: u64, cluster_id: u64, runtime: Handle, loop_tx: LoopSender<Command>) -> Self {
        Transport {
            id,
            cluster_id,
            runtime,
            loop_tx,
            peers: Mutex::new(HashMap::new()),
            activity: Mutex::new(HashMap::new()),
        }
    }

    /// Records traffic (or a link heartbeat) received from a peer.
    pub fn heard_from(&self, peer: u64) {
        let now = Instant::now();
        let mut a = self.activity.lock();
        let e = a.entry(peer).or_insert((now, now));
        if now.duration_since(e.1) > INACTIVE_AFTER {
            e.0 = now;
        }
        e.1 = now;
    }

    /// When a peer was last heard from (raft traffic or a link heartbeat), if ever.
    pub fn last_heard(&self, peer: u64) -> Option<Instant> {
        self.activity.lock().get(&peer).map(|(_, last)| *last)
    }

    /// Since when a peer has been connected without a gap (etcd's `ActiveSince`); `None` when
    /// it is not connected now.
    pub fn active_since(&self, peer: u64) -> Option<Instant> {
        self.activity
            .lock()
            .get(&peer)
            .filter(|(_, last)| last.elapsed() <= INACTIVE_AFTER)
            .map(|(since, _)| *since)
    }

    /// Sets the peers to talk to (every member but this one), keyed by member ID with their
    /// first peer URL. Peers no longer listed are dropped; changed URLs reconnect.
    pub fn set_peers(&self, peers: Vec<(u64, String)>) {
        // Channels spawn their connection tasks on the runtime, even when called from the raft
        // thread.
        let _guard = self.runtime.enter();
        let mut map = self.peers.lock();
        map.retain(|id, p| peers.iter().any(|(i, u)| i == id && *u == p.url));
        for (id, url) in peers {
            if map.contains_key(&id) {
                continue;
            }
            let channel = match Endpoint::from_shared(url.clone()) {
                Ok(e) => e
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy(),
                Err(e) => {
                    tracing::error!(peer = %format!("{id:x}"), url, error = %e, "bad peer URL");
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            self.runtime.spawn(stream_to_peer(
                id,
                self.id,
                self.cluster_id,
                channel.clone(),
                rx,
                self.loop_tx.clone(),
            ));
            map.insert(id, Peer { url, channel, tx });
        }
    }

    /// A channel to a peer, for forwarding client requests to the leader.
    pub fn channel(&self, id: u64) -> Option<Channel> {
        self.peers.lock().get(&id).map(|p| p.channel.clone())
    }

    /// Hands raft's outgoing messages to their peers' queues. Never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.lock();
        for m in msgs {
            let to = m.to;
            let Some(p) = peers.get(&to) else {
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.runtime.spawn(send_snapshot(
                    m,
                    self.cluster_id,
                    p.channel.clone(),
                    self.loop_tx.clone(),
                ));
            } else if p.tx.try_send(m).is_err() {
                let _ = self.loop_tx.send(Command::Unreachable(to));
            }
        }
    }
}

/// Keeps one `Send` stream open to a peer, batching whatever is queued; an idle stream carries
/// link heartbeats (empty batches).
async fn stream_to_peer(
    id: u64,
    from: u64,
    cluster_id: u64,
    channel: Channel,
    mut rx: mpsc::Receiver<Message>,
    loop_tx: LoopSender<Command>,
) {
    let mut client = RaftPeerClient::new(channel);
    loop {
        // Wait for traffic, or the next link heartbeat, before (re)connecting.
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
            _ = tokio::time::sleep(LINK_HEARTBEAT) => None,
        };
        let (btx, brx) = mpsc::channel::<RaftBatch>(16);
        // `Some(None)`: a link heartbeat is due.
        let mut pending = Some(first);
        let call = client.send(tokio_stream::wrappers::ReceiverStream::new(brx));
        tokio::pin!(call);
        // One timer for the stream's life (not one per batch); a tick with traffic since the
        // previous one sends nothing.
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + LINK_HEARTBEAT, LINK_HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut busy = false;
        loop {
            let next = match pending.take() {
                Some(m) => m,
                None => tokio::select! {
                    res = &mut call => {
                        if peer_says_removed(id, res, &loop_tx) {
                            return;
                        }
                        break;
                    }
                    m = rx.recv() => match m {
                        Some(m) => Some(m),
                        None => return,
                    },
                    _ = heartbeat.tick() => {
                        if std::mem::take(&mut busy) {
                            continue;
                        }
                        None
                    }
                },
            };
            busy |= next.is_some();
            let mut messages = Vec::with_capacity(16);
            if let Some(m) = next {
                for m in std::iter::once(m).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                    if let Ok(b) = m.write_to_bytes() {
                        messages.push(b);
                    }
                    if messages.len() >= MAX_BATCH {
                        break;
                    }
                }
            }
            let batch = RaftBatch {
                messages,
                cluster_id,
                from,
            };
            tokio::select! {
                sent = btx.send(batch) => if sent.is_err() { break },
                res = &mut call => {
                    if peer_says_removed(id, res, &loop_tx) {
                        return;
                    }
                    break;
                }
            }
        }
        // The stream broke or could not be opened: the peer's process died (the kernel closed
        // its sockets), or the network between us failed.
        let _ = loop_tx.send(Command::LinkLost(id));
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// Logs how a peer stream ended; true (after telling the raft loop) when the peer refused us
/// because this member was removed from the cluster.
fn peer_says_removed(
    id: u64,
    res: Result<tonic::Response<etcd_proto::pgraftpb::SendAck>, tonic::Status>,
    loop_tx: &LoopSender<Command>,
) -> bool {
    match res {
        Err(e) if e.message() == MEMBER_REMOVED => {
            let _ = loop_tx.send(Command::Removed);
            true
        }
        Err(e) => {
            tracing::debug!(peer = %format!("{id:x}"), error = %e, "peer stream ended");
            false
        }
        Ok(_) => false,
    }
}

/// Streams one snapshot message to its peer and reports how it went to the raft loop.
async fn send_snapshot(
    mut m: Message,
    cluster_id: u64,
    channel: Channel,
    loop_tx: LoopSender<Command>,
) {
    let to = m.to;
    let data = std::mem::take(&mut m.mut_snapshot().data).to_vec();
    let header = match m.write_to_bytes() {
        Ok(b) => b,
        Err(_) => return,
    };
    let mut chunks = vec![SnapshotChunk {
        message: header,
        data: Vec::new(),
        cluster_id,
    }];
    chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk {
        message: Vec::new(),
        data: c.to_vec(),
        cluster_id,
    }));
    let size = data.len();
    let res = RaftPeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .snapshot(tokio_stream::iter(chunks))
        .await;
    let ok = res.is_ok();
    match res {
        Ok(_) => tracing::info!(peer = %format!("{to:x}"), bytes = size, "sent snapshot"),
        Err(e) => tracing::warn!(peer = %format!("{to:x}"), error = %e, "snapshot send failed"),
    }
    let _ = loop_tx.send(Command::SnapshotStatus(to, ok));
}
