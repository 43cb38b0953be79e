//! The peer transport (etcd's `rafthttp`), outbound side. Raft messages go to each peer over
//! one long-lived raft message stream ([`super::wire`]): the thread that sends them (the raft
//! loop, the syncer) writes their frames straight into the socket while it takes them, so a
//! put's messages cost no thread wakeup on the way out. A link task per peer connects and
//! reconnects, writes what the socket could not take at once, sends link heartbeats on an idle
//! link, and watches for the peer refusing or closing the stream. Snapshot messages go over
//! gRPC on their own stream, their state data in chunks. The raft loop never blocks on the
//! network: a full peer queue drops messages (raft retransmits) and reports the peer
//! unreachable; a broken stream reports the link lost (see [`Command::LinkLost`]).

use super::dial::Dialer;
use super::node::Command;
use super::wire;
use crate::snapshot::source::{Captured, SnapshotSource};
use crate::snapshot::Descriptor;
use etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient;
use etcd_proto::pgraftpb::SnapshotChunk;
use parking_lot::Mutex;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender as LoopSender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// What a member answers to peer traffic from a member removed from the cluster.
pub const MEMBER_REMOVED: &str = "pgraft: the member has been permanently removed from the cluster";

/// Bytes queued per peer (frames the socket has not taken yet) before new messages are dropped.
const PEER_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// A queue buffer grown past this is freed once written, not kept for the next burst.
const KEEP_QUEUE_CAPACITY: usize = 1024 * 1024;
/// Plaintext handed to a TLS session at a time, once it has sent what it had: a session holds
/// at most about this much ciphertext beyond the queue.
const TLS_CHUNK: usize = 64 * 1024;
/// Most bytes read back from a peer on a raft stream (only a refusal's reason comes back).
const MAX_ANSWER: usize = 64 * 1024;
/// Snapshot chunks read ahead of the gRPC stream: with the chunk being filled and the one the
/// stream is sending, a sender holds at most this many + 2 chunks.
const SNAPSHOT_CHUNKS_AHEAD: usize = 2;
/// Wait before reconnecting to a peer that failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// An idle link sends an empty frame this often (etcd's link heartbeat), so that the receiver
/// knows the sender is connected even when raft has nothing to say to it.
const LINK_HEARTBEAT: Duration = Duration::from_millis(500);
/// A peer not heard from for this long counts as disconnected.
const INACTIVE_AFTER: Duration = Duration::from_secs(2);

struct Peer {
    url: String,
    channel: Channel,
    link: Arc<Link>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The peer left the cluster, or the transport is going away: end its link task.
        self.link.closed.store(true, Ordering::Release);
        self.link.wake.notify_one();
    }
}

/// One peer's raft message stream, shared by the senders and the link task.
#[derive(Default)]
struct Link {
    out: Mutex<Outbox>,
    /// Rings the link task: frames are waiting, or the link is closed.
    wake: Notify,
    /// Raft traffic since the last heartbeat tick (an idle link sends heartbeats).
    busy: AtomicBool,
    closed: AtomicBool,
    /// Rung when the peer opened its own stream to this member: it is up (just restarted,
    /// say), so a link waiting to reconnect tries at once rather than after its backoff.
    redial: Notify,
}

#[derive(Default)]
struct Outbox {
    /// The connected stream; `None` while (re)connecting.
    stream: Option<Arc<TcpStream>>,
    /// The TLS session over `stream`, for an https peer URL: frames are encrypted through it
    /// (under this lock, by whichever thread writes) and its records written to the socket.
    tls: Option<rustls::ClientConnection>,
    /// Whole frames the socket has not taken yet; the first `written` bytes are sent.
    queue: Vec<u8>,
    written: usize,
}

impl Link {
    /// Sends raft's `frames` (whole frames): straight into the socket when nothing waits
    /// before them and it takes them, else queued for the link task. False, with nothing
    /// queued, when the queue is full.
    fn push(&self, frames: &[u8]) -> bool {
        self.busy.store(true, Ordering::Relaxed);
        self.write(frames)
    }

    /// Sends a link heartbeat (not raft traffic: `busy` stays as it is).
    fn heartbeat(&self) {
        self.write(&wire::HEARTBEAT);
    }

    fn write(&self, frames: &[u8]) -> bool {
        let mut out = self.out.lock();
        let waiting = out.queue.len() - out.written;
        if waiting + frames.len() > PEER_QUEUE_BYTES {
            return false;
        }
        let mut rest = frames;
        if waiting == 0 && out.tls.is_none() {
            if let Some(s) = &out.stream {
                // Would-block leaves it all to the link task; an error too (its read side
                // sees the stream broken).
                if let Ok(n) = s.try_write(frames) {
                    rest = &frames[n..];
                }
            }
            if rest.is_empty() {
                return true;
            }
            out.clear();
        }
        out.queue.extend_from_slice(rest);
        // Through TLS: encrypted and written now as far as the socket takes it.
        let sent = out.tls.is_some()
            && out
                .stream
                .clone()
                .is_some_and(|s| matches!(out.flush(&s), Ok(true)));
        drop(out);
        if !sent {
            self.wake.notify_one();
        }
        true
    }

    /// Writes queued frames while the socket takes them: true when none are left.
    fn flush(&self, s: &TcpStream) -> io::Result<bool> {
        self.out.lock().flush(s)
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Outbox {
    /// Writes queued frames (through the TLS session, if any) while the socket takes them:
    /// true when none are left.
    fn flush(&mut self, s: &TcpStream) -> io::Result<bool> {
        let Some(tls) = self.tls.as_mut() else {
            while self.written < self.queue.len() {
                match s.try_write(&self.queue[self.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            self.clear();
            return Ok(true);
        };
        loop {
            while tls.wants_write() {
                match tls.write_tls(&mut TryWrite(s)) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            if self.written == self.queue.len() {
                self.clear();
                return Ok(true);
            }
            let end = self.queue.len().min(self.written + TLS_CHUNK);
            io::Write::write_all(&mut tls.writer(), &self.queue[self.written..end])?;
            self.written = end;
        }
    }

    fn clear(&mut self) {
        if self.queue.capacity() > KEEP_QUEUE_CAPACITY {
            self.queue = Vec::new();
        }
        self.queue.clear();
        self.written = 0;
    }
}

/// A socket as `std::io` sees it, never blocking: rustls writes its records through it.
struct TryWrite<'a>(&'a TcpStream);

impl io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The same, reading: rustls reads records from it.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

pub struct Transport {
    id: u64,
    cluster_id: u64,
    dialer: Dialer,
    runtime: Handle,
    loop_tx: LoopSender<Command>,
    /// The storage snapshots raft's snapshot messages name.
    snapshots: Arc<SnapshotSource>,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Per peer heard from: (since when without a gap, last time).
    activity: Mutex<HashMap<u64, (Instant, Instant)>>,
}

impl Transport {
    pub fn new(
        id: u64,
        cluster_id: u64,
        dialer: Dialer,
        runtime: Handle,
        loop_tx: LoopSender<Command>,
        snapshots: Arc<SnapshotSource>,
    ) -> Self {
        Transport {
            id,
            cluster_id,
            dialer,
            runtime,
            loop_tx,
            snapshots,
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

    /// The peer opened a raft stream to this member: if the link to it is down, it reconnects
    /// now (etcd's peers dial each other's streams as they start, so a restarted member hears
    /// from the leader at once instead of after the leader's next retry).
    pub fn peer_dialed(&self, peer: u64) {
        if let Some(p) = self.peers.lock().get(&peer) {
            // Only a link that is down: a permit left on a connected one would cut the backoff
            // of its next reconnection short for no reason.
            if p.link.out.lock().stream.is_none() {
                p.link.redial.notify_one();
            }
        }
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
            let channel = match self.dialer.channel(&url) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(peer = %format!("{id:x}"), url, error = %e, "bad peer URL");
                    continue;
                }
            };
            let link = Arc::new(Link::default());
            self.runtime.spawn(run_link(
                id,
                wire::preamble(self.cluster_id, self.id),
                self.dialer.clone(),
                url.clone(),
                link.clone(),
                self.loop_tx.clone(),
            ));
            map.insert(id, Peer { url, channel, link });
        }
    }

    /// A channel to a peer, for forwarding client requests to the leader.
    pub fn channel(&self, id: u64) -> Option<Channel> {
        self.peers.lock().get(&id).map(|p| p.channel.clone())
    }

    /// Sends raft's outgoing messages, one write per peer when its socket takes them at once.
    /// Never blocks.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        // Frames per peer, in raft's order (a Ready's messages to one peer are few and mostly
        // to the same two or four peers, so a short list beats a map).
        let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
        let peers = self.peers.lock();
        for m in msgs {
            let to = m.to;
            let Some(p) = peers.get(&to) else {
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.start_snapshot(m, p.channel.clone());
                continue;
            }
            let at = match frames.iter().position(|(id, _)| *id == to) {
                Some(at) => at,
                None => {
                    frames.push((to, Vec::new()));
                    frames.len() - 1
                }
            };
            wire::put_message(&mut frames[at].1, &m);
        }
        for (to, bytes) in frames {
            let sent = peers.get(&to).is_some_and(|p| p.link.push(&bytes));
            if !sent {
                let _ = self.loop_tx.send(Command::Unreachable(to));
            }
        }
    }
}

/// How a connected stream ended.
enum LinkEnd {
    /// Broken, or closed by the peer: reconnect.
    Broken,
    /// The peer refused the stream, saying why (another cluster, say): try again later.
    Refused(String),
    /// The peer removed this member from the cluster (the raft loop is told), or the peer
    /// left the transport: stop.
    Stop,
}

/// Keeps a peer's raft message stream connected while the peer is in the cluster.
async fn run_link(
    id: u64,
    preamble: [u8; wire::PREAMBLE_LEN],
    dialer: Dialer,
    url: String,
    link: Arc<Link>,
    loop_tx: LoopSender<Command>,
) {
    let peer = format!("{id:x}");
    // The last refusal, logged once rather than at every retry.
    let mut refused = String::new();
    // The first connection is made at once, so that the peer learns this member is up (see
    // `Transport::peer_dialed`); later ones wait for traffic, the peer dialing us, or the next
    // link heartbeat.
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::select! {
                _ = link.wake.notified() => {}
                _ = link.redial.notified() => {}
                _ = tokio::time::sleep(LINK_HEARTBEAT) => {}
            }
        }
        if link.closed() {
            return;
        }
        match dialer.raft_stream(&url, &preamble).await {
            Ok((stream, tls)) => {
                let stream = Arc::new(stream);
                {
                    let mut out = link.out.lock();
                    out.stream = Some(stream.clone());
                    out.tls = tls;
                }
                // A leader heartbeats the peer now: one that just restarted learns its leader
                // without waiting for the next heartbeat tick.
                let _ = loop_tx.send(Command::LinkUp(id));
                let end = serve_link(id, &stream, &link, &loop_tx).await;
                let mut out = link.out.lock();
                out.stream = None;
                out.tls = None;
                // A frame may be cut short: what is queued cannot start the next stream.
                out.clear();
                drop(out);
                match end {
                    LinkEnd::Stop => return,
                    LinkEnd::Refused(reason) if reason != refused => {
                        tracing::warn!(peer, %reason, "peer refused the raft stream");
                        refused = reason;
                    }
                    LinkEnd::Refused(_) => {}
                    LinkEnd::Broken => refused.clear(),
                }
            }
            Err(e) => {
                tracing::debug!(peer, url, error = %e, "cannot reach peer");
                // Messages for a peer out of reach are lost (raft sends again), as in etcd; not
                // kept to arrive stale at the next connection.
                link.out.lock().clear();
            }
        }
        if link.closed() {
            return;
        }
        // The stream broke or could not be opened: the peer's process died (the kernel closed
        // its sockets), or the network between us failed.
        let _ = loop_tx.send(Command::LinkLost(id));
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_BACKOFF) => {}
            _ = link.redial.notified() => {}
        }
    }
}

/// Runs a connected stream: writes what the senders queued, heartbeats while idle, and reads
/// the peer's refusal or the end of the stream.
async fn serve_link(
    id: u64,
    stream: &TcpStream,
    link: &Link,
    loop_tx: &LoopSender<Command>,
) -> LinkEnd {
    let peer = format!("{id:x}");
    // One timer for the stream's life (not one per write); a tick with traffic since the
    // previous one sends nothing.
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + LINK_HEARTBEAT, LINK_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answer = Vec::new();
    loop {
        let drained = match link.flush(stream) {
            Ok(drained) => drained,
            Err(e) => {
                // A peer that refused us may have reset the stream after saying why.
                tracing::debug!(peer, error = %e, "peer stream broken");
                return read_answer(&peer, stream, link, &mut answer, loop_tx)
                    .unwrap_or(LinkEnd::Broken);
            }
        };
        if link.closed() {
            return LinkEnd::Stop;
        }
        tokio::select! {
            _ = link.wake.notified() => {}
            r = stream.writable(), if !drained => if r.is_err() {
                return LinkEnd::Broken;
            },
            r = stream.readable() => {
                if r.is_err() {
                    return LinkEnd::Broken;
                }
                if let Some(end) = read_answer(&peer, stream, link, &mut answer, loop_tx) {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if !link.busy.swap(false, Ordering::Relaxed) {
                    link.heartbeat();
                }
            }
        }
    }
}

/// Reads what the peer wrote back, which is only ever a refusal: how the stream ends, or
/// `None` while it goes on (nothing to read, or a refusal not all there yet).
fn read_answer(
    peer: &str,
    stream: &TcpStream,
    link: &Link,
    answer: &mut Vec<u8>,
    loop_tx: &LoopSender<Command>,
) -> Option<LinkEnd> {
    let through_tls = link.out.lock().tls.is_some();
    let ended = if through_tls {
        match link.out.lock().tls.as_mut() {
            Some(tls) => read_tls(peer, stream, tls, answer),
            None => true,
        }
    } else {
        read_plain(peer, stream, answer)
    };
    if answer.len() > MAX_ANSWER {
        // Only a short refusal is ever sent back.
        return Some(LinkEnd::Broken);
    }
    match wire::next_frame(answer) {
        wire::Frame::Whole(reason, _) => {
            let reason = String::from_utf8_lossy(reason);
            if reason == MEMBER_REMOVED {
                let _ = loop_tx.send(Command::Removed);
                return Some(LinkEnd::Stop);
            }
            Some(LinkEnd::Refused(reason.into_owned()))
        }
        wire::Frame::TooLarge(_) => Some(LinkEnd::Broken),
        wire::Frame::Partial if ended => Some(LinkEnd::Broken),
        wire::Frame::Partial => None,
    }
}

/// Reads what the socket has into `answer`: true when the stream ended or broke.
fn read_plain(peer: &str, stream: &TcpStream, answer: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(n) if answer.len() + n > MAX_ANSWER => return false,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer stream broken");
                return true;
            }
        }
    }
}

/// The same through the stream's TLS session (which also takes the peer's post-handshake
/// messages, such as session tickets, here).
fn read_tls(
    peer: &str,
    stream: &TcpStream,
    tls: &mut rustls::ClientConnection,
    answer: &mut Vec<u8>,
) -> bool {
    loop {
        match tls.read_tls(&mut TryRead(stream)) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                tracing::debug!(peer, error = %e, "peer stream broken");
                return true;
            }
        }
        if let Err(e) = tls.process_new_packets() {
            tracing::debug!(peer, error = %e, "peer TLS stream broken");
            return true;
        }
        let mut buf = [0u8; 512];
        loop {
            match io::Read::read(&mut tls.reader(), &mut buf) {
                Ok(0) => return true,
                Ok(n) if answer.len() + n > MAX_ANSWER => return false,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return true,
            }
        }
        if answer.len() > MAX_ANSWER {
            return false;
        }
    }
}

impl Transport {
    /// Starts streaming a snapshot message to its peer, from the storage snapshot its
    /// descriptor names (taken now, on the raft thread, so that a newer capture replacing it
    /// in the slot meanwhile does not matter). Reports failure at once when it is gone.
    fn start_snapshot(&self, m: Message, channel: Channel) {
        let captured = Descriptor::decode_from(&m.get_snapshot().data)
            .ok()
            .and_then(|d| self.snapshots.get(&d));
        let Some(captured) = captured else {
            tracing::warn!(peer = %format!("{:x}", m.to), "snapshot to send is gone; raft will make another");
            let _ = self.loop_tx.send(Command::SnapshotStatus(m.to, false));
            return;
        };
        self.runtime.spawn(send_snapshot(
            m,
            captured,
            self.cluster_id,
            channel,
            self.loop_tx.clone(),
        ));
    }
}

/// How long a leader waits before it tries a snapshot again on a peer that was busy
/// installing another.
const SNAPSHOT_BUSY_PAUSE: Duration = Duration::from_secs(1);

/// Streams one snapshot message to its peer and reports how it went to the raft loop. The
/// state is read on a blocking thread into chunks of bounded size, at most
/// [`SNAPSHOT_CHUNKS_AHEAD`] ahead of what the gRPC stream (its flow control) takes.
async fn send_snapshot(
    m: Message,
    captured: Arc<Captured>,
    cluster_id: u64,
    channel: Channel,
    loop_tx: LoopSender<Command>,
) {
    let to = m.to;
    let peer = format!("{to:x}");
    let Ok(header) = m.write_to_bytes() else {
        let _ = loop_tx.send(Command::SnapshotStatus(to, false));
        return;
    };
    let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
    // The header leaves first; the reader queues behind it.
    let _ = tx.try_send(SnapshotChunk {
        message: header,
        cluster_id,
        ..Default::default()
    });
    let chunk = crate::snapshot::chunk_bytes();
    // Dropped once the gRPC call is over, whether or not it dropped its request stream: a
    // reader waiting to queue a chunk stops then.
    let (over, mut stop) = tokio::sync::watch::channel(());
    let runtime = Handle::current();
    let reader = tokio::task::spawn_blocking(move || {
        let mut queue = |c: SnapshotChunk| {
            runtime.block_on(async {
                tokio::select! {
                    r = tx.send(c) => r.is_ok(),
                    _ = stop.changed() => false,
                }
            })
        };
        let streamed = captured.stream(chunk, |data| {
            queue(SnapshotChunk {
                data,
                cluster_id,
                ..Default::default()
            })
        })?;
        let done = SnapshotChunk {
            cluster_id,
            done: true,
            length: streamed.length,
            sha1: streamed.sha1,
            ..Default::default()
        };
        if !queue(done) {
            return Err(crate::error::Error::Internal(
                "snapshot stream closed".into(),
            ));
        }
        Ok(streamed.length)
    });
    let sent = RaftPeerClient::new(channel)
        .snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    drop(over);
    let read = reader.await;
    let ok = match (sent, read) {
        (Ok(_), Ok(Ok(bytes))) => {
            tracing::info!(peer, bytes, "sent snapshot");
            true
        }
        (Err(e), _) if e.message() == crate::api::peer::SNAPSHOT_BUSY => {
            // The peer still installs an earlier snapshot: raft keeps the peer waiting for
            // a snapshot until it hears, so a pause here paces the next try.
            tracing::info!(peer, "peer busy with another snapshot; trying again later");
            tokio::time::sleep(SNAPSHOT_BUSY_PAUSE).await;
            false
        }
        (Err(e), _) => {
            tracing::warn!(peer, error = %e, "snapshot send failed");
            false
        }
        (_, Ok(Err(e))) => {
            tracing::warn!(peer, error = %e, "snapshot read failed");
            false
        }
        (_, Err(e)) => {
            tracing::warn!(peer, error = %e, "snapshot reader failed");
            false
        }
    };
    let _ = loop_tx.send(Command::SnapshotStatus(to, ok));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Frames pushed from another thread faster than a small socket buffer takes them arrive
    /// whole and in order: partly written frames continue from the queue, never interleaved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushed_frames_arrive_whole_and_in_order_through_a_full_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        socket2::SockRef::from(&client)
            .set_send_buffer_size(4096)
            .unwrap();
        let client = Arc::new(client);
        let link = Arc::new(Link::default());
        link.out.lock().stream = Some(client.clone());
        let (loop_tx, _loop_rx) = std::sync::mpsc::channel();
        let task = {
            let (client, link) = (client.clone(), link.clone());
            tokio::spawn(async move { serve_link(2, &client, &link, &loop_tx).await })
        };

        const N: u64 = 2000;
        let pusher = {
            let link = link.clone();
            std::thread::spawn(move || {
                let mut queued = 0;
                for index in 1..=N {
                    let m = Message {
                        index,
                        context: vec![index as u8; 1000].into(),
                        ..Default::default()
                    };
                    let mut frame = Vec::new();
                    wire::put_message(&mut frame, &m);
                    assert!(link.push(&frame), "queue full at {index}");
                    let out = link.out.lock();
                    queued = queued.max(out.queue.len() - out.written);
                }
                queued
            })
        };

        let mut buf = Vec::new();
        let mut next = 1;
        while next <= N {
            if next % 200 == 0 {
                // A slow reader: the sender's socket fills and frames queue.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), server.read(&mut chunk))
                .await
                .expect("frames keep coming")
                .unwrap();
            assert!(n > 0, "stream closed at frame {next}");
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            while let wire::Frame::Whole(payload, len) = wire::next_frame(&buf[used..]) {
                used += len;
                if payload.is_empty() {
                    continue; // a link heartbeat
                }
                let m = Message::parse_from_bytes(payload).unwrap();
                assert_eq!((m.index, m.context[0]), (next, next as u8));
                next += 1;
            }
            buf.drain(..used);
        }
        let queued = pusher.join().unwrap();
        assert!(
            queued > 100_000,
            "the socket never filled: at most {queued} bytes queued"
        );
        assert!(link.out.lock().queue.is_empty());

        // Dropping the peer ends its link task.
        link.closed.store(true, Ordering::Release);
        link.wake.notify_one();
        let end = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, LinkEnd::Stop));
    }
}
