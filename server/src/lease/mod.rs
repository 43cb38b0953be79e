//! The lessor (etcd's `lease.Lessor`): which leases exist, their TTLs and attached keys, and —
//! on the leader only — when each one expires.
//!
//! Grant, revoke and key attachment change only when the applier applies a raft entry, so every
//! member agrees on them. Expiry deadlines are leader-local: the leader ("primary") re-arms every
//! lease when it takes office and proposes a revoke for each lease that runs out; followers keep
//! leases forever, as etcd does.

use crate::error::Error;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// The largest TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How long the leader waits before proposing the revoke of an expired lease again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Lease {
    ttl: i64,
    expiry: Option<Instant>,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    primary: bool,
    revoking: HashMap<i64, Instant>,
}

pub struct Lessor {
    state: Mutex<State>,
    min_ttl: i64,
}

/// What TimeToLive reports about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub remaining: i64,
    pub granted: i64,
    pub keys: Vec<Vec<u8>>,
}

impl Lessor {
    /// `min_ttl` is etcd's minimum lease TTL: ceil(1.5 x election timeout), in seconds.
    pub fn new(min_ttl: i64) -> Self {
        Lessor {
            state: Mutex::new(State::default()),
            min_ttl,
        }
    }

    /// The TTL a grant of `ttl` seconds gets.
    pub fn effective_ttl(&self, ttl: i64) -> i64 {
        ttl.max(self.min_ttl)
    }

    pub fn exists(&self, id: i64) -> bool {
        self.state.lock().leases.contains_key(&id)
    }

    /// Applies a grant (the caller checked that `id` is free).
    pub fn grant(&self, id: i64, ttl: i64) {
        let mut s = self.state.lock();
        let expiry = s
            .primary
            .then(|| deadline(Instant::now(), Duration::ZERO, ttl));
        s.leases.insert(
            id,
            Lease {
                ttl,
                expiry,
                keys: BTreeSet::new(),
            },
        );
    }

    /// Replaces every lease (startup, snapshot install); deadlines re-armed if primary.
    pub fn reset(&self, leases: Vec<(i64, i64)>) {
        let mut s = self.state.lock();
        let primary = s.primary;
        let now = Instant::now();
        s.revoking.clear();
        s.leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                let lease = Lease {
                    ttl,
                    expiry: primary.then(|| deadline(now, Duration::ZERO, ttl)),
                    keys: BTreeSet::new(),
                };
                (id, lease)
            })
            .collect();
    }

    /// Applies a revoke: forgets the lease and returns its keys in sorted order.
    pub fn revoke(&self, id: i64) -> Option<Vec<Vec<u8>>> {
        let mut s = self.state.lock();
        s.revoking.remove(&id);
        s.leases.remove(&id).map(|l| l.keys.into_iter().collect())
    }

    pub fn attach(&self, id: i64, key: &[u8]) {
        if let Some(l) = self.state.lock().leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
        }
    }

    pub fn detach(&self, id: i64, key: &[u8]) {
        if let Some(l) = self.state.lock().leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// A keepalive: pushes the deadline out by the full TTL and returns it. Only the primary
    /// keeps deadlines; anywhere else a renewal would be a success that renewed nothing
    /// (etcd's `ErrNotPrimary`).
    pub fn renew(&self, id: i64) -> Result<i64, Error> {
        let mut s = self.state.lock();
        if !s.primary {
            return Err(Error::NotPrimary);
        }
        let l = s.leases.get_mut(&id).ok_or(Error::LeaseNotFound)?;
        // An already expired lease is being revoked: do not bring it back.
        if l.expiry.is_some_and(|e| e <= Instant::now()) {
            return Err(Error::LeaseNotFound);
        }
        l.expiry = Some(deadline(Instant::now(), Duration::ZERO, l.ttl));
        Ok(l.ttl)
    }

    /// True while this member's lessor keeps deadlines (it is the leader).
    pub fn is_primary(&self) -> bool {
        self.state.lock().primary
    }

    pub fn time_to_live(&self, id: i64) -> Option<LeaseInfo> {
        let s = self.state.lock();
        let l = s.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => {
                let left = e.saturating_duration_since(Instant::now()).as_secs();
                i64::try_from(left).unwrap_or(i64::MAX)
            }
            None => l.ttl,
        };
        Some(LeaseInfo {
            remaining,
            granted: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// The keys attached to a lease (none for an unknown lease).
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        let s = self.state.lock();
        s.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.state.lock().leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Leases past their deadline that need a revoke proposal now (primary only).
    pub fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut s = self.state.lock();
        if !s.primary {
            return Vec::new();
        }
        let due: Vec<i64> = s
            .leases
            .iter()
            .filter(|(_, l)| l.expiry.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter(|id| match s.revoking.get(id) {
                Some(at) if now.duration_since(*at) < REVOKE_RETRY => false,
                _ => {
                    s.revoking.insert(*id, now);
                    true
                }
            })
            .collect()
    }

    /// This member became leader: every lease gets `extend` plus its full TTL, so a leader
    /// change never expires a lease early.
    pub fn promote(&self, extend: Duration) {
        let mut s = self.state.lock();
        s.primary = true;
        s.revoking.clear();
        let now = Instant::now();
        for l in s.leases.values_mut() {
            l.expiry = Some(deadline(now, extend, l.ttl));
        }
    }

    /// This member lost leadership: leases no longer expire here.
    pub fn demote(&self) {
        let mut s = self.state.lock();
        s.primary = false;
        for l in s.leases.values_mut() {
            l.expiry = None;
        }
    }
}

/// `extend` plus `ttl` seconds after `from`. A TTL comes from the log, which the network wrote:
/// the apply step rejects one above [`MAX_LEASE_TTL`], but a lease stored before that check
/// (or any other path) must still not panic here, so the sum saturates. A deadline that
/// `Instant` cannot hold is as good as never: it is pulled in until it fits.
fn deadline(from: Instant, extend: Duration, ttl: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
    let mut after = extend.saturating_add(ttl);
    loop {
        if let Some(at) = from.checked_add(after) {
            return at;
        }
        // Halving reaches zero, which always fits, within 100 steps.
        after /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_attach_revoke() {
        let l = Lessor::new(2);
        assert_eq!(l.effective_ttl(1), 2);
        l.promote(Duration::ZERO);
        l.grant(7, 10);
        l.attach(7, b"b");
        l.attach(7, b"a");
        assert_eq!(l.renew(7), Ok(10));
        assert_eq!(
            l.time_to_live(7).unwrap().keys,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(l.expired().is_empty());
        assert_eq!(l.revoke(7), Some(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(l.renew(7), Err(Error::LeaseNotFound));
    }

    /// A TTL near `i64::MAX` (a forged or corrupt entry) used to overflow `Instant + Duration`
    /// and panic the raft thread on every member replaying the log.
    #[test]
    fn huge_ttls_do_not_overflow_deadlines() {
        let l = Lessor::new(0);
        l.promote(Duration::ZERO);
        l.grant(1, i64::MAX);
        l.grant(2, MAX_LEASE_TTL);
        assert_eq!(l.renew(1), Ok(i64::MAX));
        assert!(l.time_to_live(1).unwrap().remaining > MAX_LEASE_TTL);
        l.demote();
        l.promote(Duration::MAX);
        l.reset(vec![(1, i64::MAX), (3, -5)]);
        assert!(l.expired().contains(&3));
        assert!(!l.expired().contains(&1));
    }

    #[test]
    fn expiry_only_on_primary() {
        let l = Lessor::new(0);
        l.grant(1, 0);
        assert!(l.expired().is_empty());
        l.promote(Duration::ZERO);
        assert_eq!(l.expired(), vec![1]);
        // Not proposed twice within the retry window.
        assert!(l.expired().is_empty());
        l.demote();
        assert!(l.expired().is_empty());
        assert_eq!(l.renew(1), Err(Error::NotPrimary));
    }
}
