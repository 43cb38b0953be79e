//! The closed-loop load driver: `--clients` tasks, spread over the channels, each issuing
//! one request at a time until `--total` requests have been started or `--duration` passed. Each request is timed
//! with `Instant` from just before it is sent to its response, and bounded by a timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::stats::Report;
use crate::unary::UnaryConn;

/// How a failed request is counted in the error distribution.
pub fn status_message(st: &tonic::Status) -> String {
    format!("{:?}: {}", st.code(), st.message())
}

/// When a run stops starting requests: after `total` of them, or once `duration` (if set) has
/// passed since it began. A duration makes a steady load of fixed length whatever the rate (the
/// scale test runs one while it issues other requests).
#[derive(Clone, Copy, Debug)]
pub struct Stop {
    pub total: u64,
    pub duration: Option<Duration>,
}

/// Runs calls of `op(connection, request_index)` from `clients` concurrent loops, spread over
/// `conns` round-robin, until `stop`.
pub async fn run_kv<F, Fut>(
    name: &str,
    conns: &[UnaryConn],
    clients: usize,
    stop: Stop,
    timeout: Duration,
    op: F,
) -> Report
where
    F: Fn(UnaryConn, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = stop.duration.map(|d| start + d);
    let total = stop.total;
    let mut tasks = JoinSet::new();
    for c in 0..clients.max(1) {
        let conn = conns[c % conns.len()].clone();
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut lats = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let t0 = Instant::now();
                match tokio::time::timeout(timeout, op(conn.clone(), i)).await {
                    Ok(Ok(())) => lats.push(t0.elapsed()),
                    Ok(Err(st)) => *errors.entry(status_message(&st)).or_default() += 1,
                    Err(_) => *errors.entry("request timed out".into()).or_default() += 1,
                }
            }
            (lats, errors)
        });
    }
    // `total` may be "unbounded" (u64::MAX) under a duration.
    let mut lats = Vec::with_capacity(total.min(1 << 20) as usize);
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(res) = tasks.join_next().await {
        let (l, e) = res.expect("client loop panicked");
        lats.extend(l);
        for (msg, n) in e {
            *errors.entry(msg).or_default() += n;
        }
    }
    Report::new(name, lats, errors, start.elapsed())
}
