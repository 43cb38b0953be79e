//! The benchmark subcommands, each a port of the etcd `benchmark` command of the same name:
//! `put`, `range`, `txn-put` and `watch-latency`.

use std::time::{Duration, Instant};

use etcd_proto::etcdserverpb::{
    request_op, watch_client::WatchClient, watch_request, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::conn;
use crate::runner::{run_kv, status_message, Stop};
use crate::stats::Report;
use crate::unary::UnaryConn;

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";

/// Common settings handed to every subcommand.
pub struct Ctx {
    /// The endpoints to connect to (only the leader's with `--target-leader`).
    pub urls: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub total: u64,
    /// `--duration`: stop starting requests after this long (unary subcommands).
    pub duration: Option<Duration>,
    pub timeout: Duration,
}

impl Ctx {
    fn stop(&self) -> Stop {
        Stop {
            total: self.total,
            duration: self.duration,
        }
    }

    /// `--conns` connections for request loops.
    async fn unary_conns(&self) -> Result<Vec<UnaryConn>, String> {
        conn::unary(&self.urls, self.conns, self.timeout).await
    }
}

/// A benchmark key as etcd's tool makes it: `key_size` bytes starting with the zig-zag
/// varint of `n` (Go's `binary.PutVarint`), zero-padded, cut at `key_size`.
pub fn bench_key(n: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0u8; key_size];
    let mut x = n << 1;
    for b in key.iter_mut() {
        *b = (x & 0x7f) as u8;
        x >>= 7;
        if x == 0 {
            break;
        }
        *b |= 0x80;
    }
    key
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

/// `put`: one Put per request, keys sequential or uniformly random in the key space.
pub async fn put(
    ctx: &Ctx,
    key_size: usize,
    val_size: usize,
    key_space: u64,
    sequential: bool,
) -> Result<Report, String> {
    let value = random_bytes(val_size);
    let key_space = key_space.max(1);
    Ok(run_kv(
        "put",
        &ctx.unary_conns().await?,
        ctx.clients,
        ctx.stop(),
        ctx.timeout,
        move |conn, i| {
            let n = if sequential {
                i % key_space
            } else {
                rand::rng().random_range(0..key_space)
            };
            let req = PutRequest {
                key: bench_key(n, key_size),
                value: value.clone(),
                ..Default::default()
            };
            async move { conn.call::<_, PutResponse>(PUT, &req).await.map(drop) }
        },
    )
    .await)
}

/// `range <key> [end]`: linearizable (`l`) or serializable (`s`) reads.
pub async fn range(
    ctx: &Ctx,
    key: &str,
    end: Option<&str>,
    serializable: bool,
    limit: i64,
) -> Result<Report, String> {
    let req = RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: end.map(|e| e.as_bytes().to_vec()).unwrap_or_default(),
        serializable,
        limit,
        ..Default::default()
    };
    Ok(run_kv(
        "range",
        &ctx.unary_conns().await?,
        ctx.clients,
        ctx.stop(),
        ctx.timeout,
        move |conn, _| {
            let req = req.clone();
            async move { conn.call::<_, RangeResponse>(RANGE, &req).await.map(drop) }
        },
    )
    .await)
}

/// `txn-put`: transactions of `txn_ops` puts, keys walking the key space in order.
pub async fn txn_put(
    ctx: &Ctx,
    txn_ops: usize,
    key_size: usize,
    val_size: usize,
    key_space: u64,
) -> Result<Report, String> {
    let value = random_bytes(val_size);
    let key_space = key_space.max(1);
    Ok(run_kv(
        "txn-put",
        &ctx.unary_conns().await?,
        ctx.clients,
        ctx.stop(),
        ctx.timeout,
        move |conn, i| {
            let success = (0..txn_ops as u64)
                .map(|j| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: bench_key((i * txn_ops as u64 + j) % key_space, key_size),
                        value: value.clone(),
                        ..Default::default()
                    })),
                })
                .collect();
            let req = TxnRequest {
                success,
                ..Default::default()
            };
            async move { conn.call::<_, TxnResponse>(TXN, &req).await.map(drop) }
        },
    )
    .await)
}

/// Settings of `watch-latency`.
pub struct WatchLatency {
    pub put_total: u64,
    pub put_rate: f64,
    pub streams: usize,
    pub watchers_per_stream: usize,
    pub key_size: usize,
    pub val_size: usize,
    /// Distinct keys, watched and put round-robin.
    pub key_space_size: usize,
    /// Watch `[key, key + "\0")` rather than the key.
    pub watch_ranges: bool,
}

/// Opens one watch stream with a watcher on each of `keys`, waits until all are created, and
/// forwards the arrival time of every event to `events`. With `ranges`, each watcher watches
/// the range `[key, key + "\0")`, which holds the key alone.
async fn open_watch_stream(
    ch: Channel,
    keys: Vec<Vec<u8>>,
    ranges: bool,
    events: mpsc::UnboundedSender<Instant>,
    timeout: Duration,
) -> Result<(), String> {
    let watchers = keys.len();
    let (req_tx, req_rx) = mpsc::channel(watchers.max(1));
    for key in keys {
        let range_end = if ranges {
            [key.as_slice(), &[0]].concat()
        } else {
            Vec::new()
        };
        let create = WatchCreateRequest {
            key,
            range_end,
            ..Default::default()
        };
        let req = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        };
        req_tx.try_send(req).map_err(|e| e.to_string())?;
    }
    let mut stream = WatchClient::new(ch)
        .watch(ReceiverStream::new(req_rx))
        .await
        .map_err(|s| status_message(&s))?
        .into_inner();
    let mut created = 0;
    while created < watchers {
        match tokio::time::timeout(timeout, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.created => created += 1,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => return Err("watch stream closed before watchers were created".into()),
            Ok(Err(s)) => return Err(status_message(&s)),
            Err(_) => return Err("timed out creating watchers".into()),
        }
    }
    tokio::spawn(async move {
        let _keep_open = req_tx;
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for _ in &resp.events {
                if events.send(now).is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

/// `watch-latency`: puts at `put_rate`, one at a time, to the keys in turn; for each put
/// measures the put latency and, for every watcher of its key, the time from sending the put to
/// receiving its event. Returns the put report and the watch report.
pub async fn watch_latency(ctx: &Ctx, w: &WatchLatency) -> Result<(Report, Report), String> {
    let keys: Vec<Vec<u8>> = (0..w.key_space_size.max(1))
        .map(|_| random_bytes(w.key_size))
        .collect();
    let value = random_bytes(w.val_size);
    let channels = conn::channels(&ctx.urls, ctx.conns, ctx.timeout).await?;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    // Watchers per key, watcher i on key i mod N.
    let mut watching = vec![0usize; keys.len()];
    for s in 0..w.streams {
        let ch = channels[s % channels.len()].clone();
        let first = s * w.watchers_per_stream;
        let mine: Vec<Vec<u8>> = (first..first + w.watchers_per_stream)
            .map(|i| {
                watching[i % keys.len()] += 1;
                keys[i % keys.len()].clone()
            })
            .collect();
        open_watch_stream(ch, mine, w.watch_ranges, ev_tx.clone(), ctx.timeout).await?;
    }
    drop(ev_tx);

    // Puts go through a connection of their own, as in `put`.
    let kv = UnaryConn::connect(&ctx.urls[0], ctx.timeout).await?;
    let period = Duration::from_secs_f64(1.0 / w.put_rate.max(0.001));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut put_lats, mut watch_lats) = (Vec::new(), Vec::new());
    let (mut put_errs, mut watch_errs) = (Default::default(), Default::default());
    let start = Instant::now();
    'puts: for n in 0..w.put_total {
        tick.tick().await;
        let k = n as usize % keys.len();
        let req = PutRequest {
            key: keys[k].clone(),
            value: value.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        match tokio::time::timeout(ctx.timeout, kv.call::<_, PutResponse>(PUT, &req)).await {
            Ok(Ok(_)) => put_lats.push(t0.elapsed()),
            Ok(Err(s)) => {
                count(&mut put_errs, status_message(&s));
                continue;
            }
            Err(_) => {
                // The put may still apply later and confuse the event count: stop here.
                count(&mut put_errs, "request timed out".into());
                break;
            }
        }
        for _ in 0..watching[k] {
            match tokio::time::timeout(ctx.timeout, ev_rx.recv()).await {
                Ok(Some(at)) => watch_lats.push(at.saturating_duration_since(t0)),
                _ => {
                    count(&mut watch_errs, "timed out waiting for watch events".into());
                    break 'puts;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    // Each put waited for as many events as its key has watchers (events are counted, not
    // matched to keys): one more now is an event no put asked for, a duplicate or a surplus.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), ev_rx.recv()).await {
        count(&mut watch_errs, "unexpected watch event".into());
    }
    Ok((
        Report::new("put", put_lats, put_errs, elapsed),
        Report::new("watch", watch_lats, watch_errs, elapsed),
    ))
}

fn count(errors: &mut std::collections::BTreeMap<String, usize>, msg: String) {
    *errors.entry(msg).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::bench_key;

    #[test]
    fn keys_are_go_varints() {
        assert_eq!(bench_key(0, 8), vec![0; 8]);
        assert_eq!(bench_key(1, 4), vec![2, 0, 0, 0]);
        assert_eq!(bench_key(64, 4), vec![0x80, 0x01, 0, 0]);
        assert_eq!(bench_key(300, 3), vec![0xd8, 0x04, 0]);
        assert_eq!(bench_key(u64::MAX >> 2, 2).len(), 2);
        assert_ne!(bench_key(5, 8), bench_key(6, 8));
    }
}
