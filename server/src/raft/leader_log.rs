//! A short memory of leadership changes seen by this member (the admin API's "recent leader
//! changes", the dashboard's timeline). The counters in `metrics` say how many; this says
//! when, in which term, and from whom to whom.
//!
//! The raft loop records a change only when the leader it sees differs from the last one (a
//! few times per election at most), under a lock that readers hold only to copy at most
//! [`LEADER_LOG_LEN`] small entries: neither side waits on anything else while holding it.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

/// Changes kept; older ones are dropped.
pub const LEADER_LOG_LEN: usize = 64;

/// One change of the leader this member sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderChange {
    /// Wall-clock time of the change on this member, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The raft term the new view belongs to.
    pub term: u64,
    /// The leader before (0: none known).
    pub from: u64,
    /// The leader now (0: none, an election is under way or the leader was lost).
    pub to: u64,
}

/// The bounded ring of [`LeaderChange`]s, oldest first.
#[derive(Debug, Default)]
pub struct LeaderLog {
    changes: Mutex<VecDeque<LeaderChange>>,
}

impl LeaderLog {
    /// Records `from -> to` in `term`, if it is a change.
    pub fn record(&self, from: u64, to: u64, term: u64) {
        if from == to {
            return;
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut c = self.changes.lock();
        if c.len() == LEADER_LOG_LEN {
            c.pop_front();
        }
        c.push_back(LeaderChange {
            at_ms,
            term,
            from,
            to,
        });
    }

    /// A copy of the changes kept, oldest first.
    pub fn recent(&self) -> Vec<LeaderChange> {
        self.changes.lock().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_changes_and_only_the_last_ones() {
        let log = LeaderLog::default();
        log.record(0, 0, 1);
        log.record(0, 7, 1);
        log.record(7, 7, 1);
        assert_eq!(log.recent().len(), 1);
        for i in 0..(LEADER_LOG_LEN as u64 + 10) {
            log.record(i, i + 1, i + 2);
        }
        let r = log.recent();
        assert_eq!(r.len(), LEADER_LOG_LEN);
        assert_eq!(r.last().unwrap().to, LEADER_LOG_LEN as u64 + 10);
        assert!(r.windows(2).all(|w| w[0].term < w[1].term));
    }
}
