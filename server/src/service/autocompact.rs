//! Auto-compaction (`--auto-compaction-mode` / `--auto-compaction-retention`), on etcd's
//! schedule (`server/etcdserver/api/v3compactor`): every member runs it, but only the leader
//! acts (etcd pauses the compactor on followers). It proposes an ordinary Compact through the
//! service layer, so the log carries it to every member and the MVCC compactor does the work.
//!
//! - periodic, retention `P`: samples the current revision every `min(P, 1h) / 10`, keeps the
//!   samples of the last `P`, and once `P` has passed since the start (then every `min(P, 1h)`)
//!   compacts at the oldest sample, the revision of `P` ago; a failure retries at the next
//!   sample.
//! - revision, retention `N`: every 5 minutes compacts at `current - N` when that is positive
//!   and new.

use super::EtcdServer;
use crate::auth::Caller;
use crate::config::AutoCompaction;
use crate::error::Error;
use etcd_proto::etcdserverpb::CompactionRequest;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// etcd's `revInterval`: how often revision mode looks.
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Periodic mode compacts at most this often (etcd's cap on the compaction interval).
const MAX_COMPACT_INTERVAL: Duration = Duration::from_secs(3600);
/// Samples per compaction interval (etcd's `retryDivisor`).
const RETRY_DIVISOR: u32 = 10;

/// Runs auto-compaction until `stop` resolves.
pub async fn run(
    server: Arc<EtcdServer>,
    policy: AutoCompaction,
    revision_interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tracing::info!(policy = ?policy, "auto compaction enabled");
    match policy {
        AutoCompaction::Periodic(period) => {
            tokio::select! {
                _ = periodic(&server, period) => {}
                _ = stop => {}
            }
        }
        AutoCompaction::Revision(retention) => {
            tokio::select! {
                _ = revision(&server, retention, revision_interval) => {}
                _ = stop => {}
            }
        }
    }
}

/// Proposes a compaction at `rev`; a revision already compacted counts as done (as in etcd).
async fn compact(server: &EtcdServer, rev: i64) -> Result<(), Error> {
    let r = CompactionRequest {
        revision: rev,
        physical: false,
    };
    match server.compact(&Caller::Internal, r).await {
        Ok(_) | Err(Error::Compacted) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_leader(server: &EtcdServer) -> bool {
    server.raft.status.is_leader()
}

/// The periodic schedule's intervals for a retention: (compaction interval, sample interval,
/// samples kept).
pub fn periodic_intervals(period: Duration) -> (Duration, Duration, usize) {
    let compact_interval = period.min(MAX_COMPACT_INTERVAL);
    let retry = (compact_interval / RETRY_DIVISOR).max(Duration::from_millis(1));
    let samples = usize::try_from(period.as_nanos() / retry.as_nanos())
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    (compact_interval, retry, samples)
}

async fn periodic(server: &EtcdServer, period: Duration) {
    let (compact_interval, retry, keep) = periodic_intervals(period);
    // Grows by one sample per interval (not allocated up front: a retention of years would
    // ask for millions of samples, of which only those of the time run so far ever exist).
    let mut revs: VecDeque<i64> = VecDeque::new();
    let mut last_success = Instant::now();
    let mut base_interval = period;
    loop {
        revs.push_back(server.store.current_rev());
        if revs.len() > keep {
            revs.pop_front();
        }
        tokio::time::sleep(retry).await;
        if !is_leader(server) || last_success.elapsed() < base_interval {
            continue;
        }
        // The first compaction waits for the whole retention, the next ones for the interval.
        base_interval = compact_interval;
        let Some(&rev) = revs.front() else { continue };
        tracing::info!(revision = rev, compact_period = ?period, "starting auto periodic compaction");
        let started = Instant::now();
        match compact(server, rev).await {
            Ok(()) => {
                tracing::info!(
                    revision = rev,
                    compact_period = ?period,
                    took = ?started.elapsed(),
                    "completed auto periodic compaction"
                );
                last_success = Instant::now();
            }
            Err(e) => tracing::warn!(
                revision = rev,
                compact_period = ?period,
                retry_interval = ?retry,
                error = %e,
                "failed auto periodic compaction"
            ),
        }
    }
}

async fn revision(server: &EtcdServer, retention: i64, interval: Duration) {
    let mut prev = 0;
    loop {
        tokio::time::sleep(interval).await;
        if !is_leader(server) {
            continue;
        }
        let rev = server.store.current_rev().saturating_sub(retention);
        if rev <= 0 || rev == prev {
            continue;
        }
        tracing::info!(
            revision = rev,
            revision_compaction_retention = retention,
            "starting auto revision compaction"
        );
        let started = Instant::now();
        match compact(server, rev).await {
            Ok(()) => {
                prev = rev;
                tracing::info!(
                    revision = rev,
                    revision_compaction_retention = retention,
                    took = ?started.elapsed(),
                    "completed auto revision compaction"
                );
            }
            Err(e) => tracing::warn!(
                revision = rev,
                revision_compaction_retention = retention,
                retry_interval = ?interval,
                error = %e,
                "failed auto revision compaction"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_schedule_is_etcds() {
        // etcd's examples: 1h samples every 6 min, 24h compacts hourly, 5s samples every 0.5s.
        let h = Duration::from_secs(3600);
        assert_eq!(periodic_intervals(h), (h, Duration::from_secs(360), 11));
        assert_eq!(
            periodic_intervals(24 * h),
            (h, Duration::from_secs(360), 241)
        );
        assert_eq!(
            periodic_intervals(Duration::from_secs(5)),
            (Duration::from_secs(5), Duration::from_millis(500), 11)
        );
        let (_, retry, _) = periodic_intervals(Duration::from_nanos(3));
        assert!(retry >= Duration::from_millis(1));
    }
}
