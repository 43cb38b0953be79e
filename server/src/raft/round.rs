//! Where a write's time goes in the commit round, measured by the raft loop for the metrics
//! (`pgraft_raft_proposal_commit_duration_seconds`, `etcd_network_peer_round_trip_time_seconds`):
//! how long a leader's entries wait for a quorum, and how long a peer takes to answer a
//! heartbeat. A follower times its side of the round
//! (`pgraft_raft_append_ack_duration_seconds`): from the arrival of the leader's entries to its
//! acknowledgement leaving, once they are written and fsynced. With the fsync, queue, apply and
//! end-to-end histograms beside them they say which stage of append, fsync, replicate,
//! acknowledge, apply and answer a busy cluster waits on.
//!
//! Bounded: at most [`MAX_TRACKED`] uncommitted entries are timed (past that, entries go
//! untimed until the oldest commit), one outstanding heartbeat per peer, and one arrival of
//! entries not yet acknowledged.

use crate::metrics;
use raft::eraftpb::{Message, MessageType};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Entries timed at once: far more than commit together in any round.
const MAX_TRACKED: usize = 16 * 1024;

/// A heartbeat unanswered this long (the top round-trip bucket) was lost with its peer: the
/// next one starts a new round trip, so an outage is not counted as one.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(3277);

#[derive(Default)]
pub struct RoundTimer {
    /// Entries appended by this leader and not yet committed, in log order: (index, when).
    appended: VecDeque<(u64, Instant)>,
    /// Per peer, when the oldest heartbeat it has not answered yet left.
    heartbeats: HashMap<u64, Instant>,
    /// On a follower: when the oldest append carrying entries that this member has not
    /// acknowledged yet arrived.
    append_arrived: Option<Instant>,
}

impl RoundTimer {
    /// This leader appended its entries up to `index` now.
    pub fn appended(&mut self, index: u64) {
        if self.appended.len() < MAX_TRACKED
            && self.appended.back().is_none_or(|(last, _)| *last < index)
        {
            self.appended.push_back((index, Instant::now()));
        }
    }

    /// Entries up to `index` are committed (seen now, before they are applied).
    pub fn committed(&mut self, index: u64) {
        while let Some(&(i, at)) = self.appended.front() {
            if i > index {
                break;
            }
            metrics::PROPOSAL_COMMIT.since(at);
            self.appended.pop_front();
        }
    }

    /// Messages leaving now: heartbeats are timed until their answer.
    pub fn sent(&mut self, msgs: &[Message]) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                let now = Instant::now();
                let sent = self.heartbeats.entry(m.to).or_insert(now);
                if now.duration_since(*sent) > MAX_ROUND_TRIP {
                    *sent = now;
                }
            }
        }
    }

    /// A message from a peer, arrived at `arrived`: a heartbeat's answer ends its round trip;
    /// entries from the leader start this follower's side of the round.
    pub fn received(&mut self, m: &Message, arrived: Instant) {
        match m.get_msg_type() {
            MessageType::MsgHeartbeatResponse => {
                if let Some(sent) = self.heartbeats.remove(&m.from) {
                    metrics::peer_round_trip(m.from, sent.elapsed());
                }
            }
            MessageType::MsgAppend if !m.entries.is_empty() => {
                self.append_arrived.get_or_insert(arrived);
            }
            _ => {}
        }
    }

    /// Messages that leave once their Ready is durable: when they acknowledge appends, the
    /// arrival of the oldest of them, to be observed as they leave ([`observe_ack`]). A Ready
    /// answers every message stepped before it was taken.
    pub fn acknowledging(&mut self, msgs: &[Message]) -> Option<Instant> {
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
        {
            self.append_arrived.take()
        } else {
            None
        }
    }

    /// Not the leader (any more): what the leader's side timed belongs to another term.
    pub fn not_leading(&mut self) {
        self.appended.clear();
        self.heartbeats.clear();
    }

    /// Leadership was lost or gained: everything timed belongs to another term or role.
    pub fn clear(&mut self) {
        self.not_leading();
        self.append_arrived = None;
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.appended.len()
    }
}

/// The acknowledgement of entries that arrived at `arrived` left now.
pub fn observe_ack(arrived: Option<Instant>) {
    if let Some(at) = arrived {
        metrics::APPEND_ACK.since(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_timed_until_their_commit_and_the_queue_is_bounded() {
        let mut t = RoundTimer::default();
        let before = metrics::PROPOSAL_COMMIT.count();
        t.appended(5);
        t.appended(5); // nothing new appended: not timed twice
        t.appended(7);
        assert_eq!(t.tracked(), 2);
        t.committed(6);
        assert_eq!(t.tracked(), 1);
        t.committed(7);
        assert_eq!(t.tracked(), 0);
        assert!(metrics::PROPOSAL_COMMIT.count() >= before + 2);
        for i in 0..(MAX_TRACKED as u64 + 10) {
            t.appended(100 + i);
        }
        assert_eq!(t.tracked(), MAX_TRACKED);
        t.clear();
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn a_follower_times_entries_from_the_oldest_arrival_to_their_acknowledgement() {
        let mut t = RoundTimer::default();
        let msg = |ty, entries: usize| {
            let mut m = Message::default();
            m.set_msg_type(ty);
            m.entries = vec![Default::default(); entries].into();
            m
        };
        let first = Instant::now();
        let later = first + Duration::from_millis(1);
        // A heartbeat-like append (commit index only) starts nothing.
        t.received(&msg(MessageType::MsgAppend, 0), first);
        assert_eq!(
            t.acknowledging(&[msg(MessageType::MsgAppendResponse, 0)]),
            None
        );
        t.received(&msg(MessageType::MsgAppend, 2), first);
        t.received(&msg(MessageType::MsgAppend, 1), later);
        // Committed entries applied on a follower in the same Ready do not end its timing.
        t.not_leading();
        // A Ready with no acknowledgement keeps the arrival.
        assert_eq!(
            t.acknowledging(&[msg(MessageType::MsgHeartbeatResponse, 0)]),
            None
        );
        let acks = [msg(MessageType::MsgAppendResponse, 0)];
        assert_eq!(
            t.acknowledging(&acks),
            Some(first),
            "the oldest arrival counts"
        );
        assert_eq!(t.acknowledging(&acks), None, "timed once");
        let before = metrics::APPEND_ACK.count();
        observe_ack(Some(first));
        observe_ack(None);
        assert!(metrics::APPEND_ACK.count() > before);
    }

    #[test]
    fn a_heartbeat_is_timed_from_the_first_unanswered_one() {
        let mut t = RoundTimer::default();
        let hb = |to| {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.to = to;
            m
        };
        t.sent(&[hb(2), hb(3)]);
        let first = t.heartbeats[&2];
        t.sent(&[hb(2)]);
        assert_eq!(t.heartbeats[&2], first, "the oldest unanswered one counts");
        let mut resp = Message::default();
        resp.set_msg_type(MessageType::MsgHeartbeatResponse);
        resp.from = 2;
        t.received(&resp, Instant::now());
        assert!(!t.heartbeats.contains_key(&2));
        assert!(t.heartbeats.contains_key(&3));
    }
}
