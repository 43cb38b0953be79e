//! The closed-loop load driver: `--clients` tasks, spread over the channels, each issuing
//! one request at a time until `--total` requests have been started. Each request is timed
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

/// Runs `total` calls of `op(connection, request_index)` from `clients` concurrent loops,
/// spread over `conns` round-robin.
pub async fn run_kv<F, Fut>(
    name: &str,
    conns: &[UnaryConn],
    clients: usize,
    total: u64,
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
    let mut tasks = JoinSet::new();
    for c in 0..clients.max(1) {
        let conn = conns[c % conns.len()].clone();
        let (op, next) = (op.clone(), next.clone());
        tasks.spawn(async move {
            let mut lats = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
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
    let mut lats = Vec::with_capacity(total as usize);
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
