//! The bytes of proposals waiting in the raft loop's command queue, bounded. The queue itself
//! is unbounded (peer messages and reads share it, and the loop must never block a sender), so
//! proposals are counted on the way in and refused with etcd's `too many requests` once the
//! loop has more than [`MAX_QUEUED_PROPOSAL_BYTES`] of them to take: a busy loop then sheds
//! load instead of letting clients pile up memory behind it.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Proposal bytes the loop may have queued (about 40 max-size requests).
pub const MAX_QUEUED_PROPOSAL_BYTES: usize = 64 << 20;

/// The count shared by every handle and the loop.
#[derive(Clone)]
pub struct ProposalQueue {
    bytes: Arc<AtomicUsize>,
    max: usize,
}

/// One queued proposal's share; given back when the loop drops it (after handing the entry to
/// raft, or when the proposal is refused).
pub struct Queued {
    bytes: Arc<AtomicUsize>,
    n: usize,
    /// When it was queued (`pgraft_raft_proposal_queue_duration_seconds`).
    pub at: Instant,
}

impl ProposalQueue {
    pub fn new(max: usize) -> Self {
        ProposalQueue {
            bytes: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Counts `n` more bytes in, or refuses them when the queue would pass its bound. A
    /// proposal larger than the bound still enters an empty queue.
    pub fn admit(&self, n: usize) -> Result<Queued> {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        let share = Queued {
            bytes: self.bytes.clone(),
            n,
            at: Instant::now(),
        };
        if before > 0 && before + n > self.max {
            return Err(Error::TooManyRequests);
        }
        Ok(share)
    }

    /// Bytes queued now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.bytes.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_past_the_byte_bound_are_refused_until_the_loop_takes_some() {
        let q = ProposalQueue::new(1000);
        let first = q.admit(600).unwrap();
        let second = q.admit(400).unwrap();
        assert_eq!(q.admit(1).err(), Some(Error::TooManyRequests));
        assert_eq!(q.bytes(), 1000, "a refused proposal leaves nothing counted");
        drop(first);
        let third = q.admit(500).unwrap();
        drop((second, third));
        assert_eq!(q.bytes(), 0);
        // Larger than the bound, into an empty queue: admitted alone.
        let big = q.admit(5000).unwrap();
        assert!(q.admit(1).is_err());
        drop(big);
        assert!(q.admit(1).is_ok());
    }
}
