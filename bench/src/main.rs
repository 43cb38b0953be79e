//! `pgraft-bench`: a load generator for etcd v3 compatible servers (etcd, pgraftd), mirroring
//! etcd's `benchmark` tool so the same commands can be run against both.
//!
//! ```text
//! pgraft-bench --endpoints 127.0.0.1:2379 --conns 16 --clients 64 --total 20000 \
//!     put --key-size 8 --val-size 256 --sequential-keys
//! pgraft-bench --endpoints a:2379,b:2379,c:2379 --clients 64 range foo --consistency s
//! ```
//!
//! Every run is bounded: `--total` requests (or `--put-total` puts), each under
//! `--request-timeout`. Output is etcd's text report, or one JSON object with `--json`.

/// The load generator shares the machine with the servers it measures: every microsecond it
/// spends is taken from them. mimalloc rather than glibc's malloc, as in pgraftd: 3-4 µs less
/// CPU per put at 64 clients (about 15% of the tool's own CPU).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod conn;
mod runner;
mod stats;
mod unary;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "pgraft-bench",
    version,
    about = "A benchmark tool for etcd v3 compatible servers"
)]
struct Cli {
    /// gRPC endpoints, comma separated; connections are spread over them round-robin.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Number of gRPC connections (HTTP/2 channels); clients are spread over them.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent request loops.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10000)]
    total: u64,
    /// Send every request to the Raft leader (found with Maintenance.Status).
    #[arg(long, global = true)]
    target_leader: bool,
    /// Print a machine-readable JSON summary instead of the text report.
    #[arg(long, global = true)]
    json: bool,
    /// Print latencies with microsecond digits.
    #[arg(long, global = true)]
    precise: bool,
    /// Stop starting requests after this many seconds (0: run until --total); put, range and
    /// txn-put. With it, --total only caps the count (a steady load of fixed length).
    #[arg(long, global = true, default_value_t = 0.0)]
    duration: f64,
    /// Per-request timeout (seconds); also the dial timeout.
    #[arg(long, global = true, default_value_t = 10.0)]
    request_timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Benchmark Put.
    Put {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        /// Number of distinct keys.
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Write keys in order instead of at random.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Benchmark Range on <key> (or [key, end)).
    Range {
        key: String,
        end: Option<String>,
        /// Read consistency: l (linearizable) or s (serializable).
        #[arg(long, default_value = "l", value_parser = ["l", "s"])]
        consistency: String,
        /// Maximum number of keys returned (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    /// Benchmark Txn with put operations.
    TxnPut {
        /// Puts per transaction.
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
    },
    /// Benchmark the latency from a put to its watch events.
    WatchLatency {
        #[arg(long, default_value_t = 1000)]
        put_total: u64,
        /// Puts per second.
        #[arg(long, default_value_t = 100.0)]
        put_rate: f64,
        /// Watch streams (spread over the connections).
        #[arg(long, default_value_t = 10)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        watchers_per_stream: usize,
        #[arg(long, default_value_t = 32)]
        key_size: usize,
        #[arg(long, default_value_t = 32)]
        val_size: usize,
        /// Keys watched and put: watcher i watches key i mod N, put j goes to key j mod N
        /// (1: every watcher sees every put, as etcd's tool).
        #[arg(long, default_value_t = 1)]
        key_space_size: usize,
        /// Each watcher watches the range [key, key + "\0"), which holds only its key, instead
        /// of the key itself: the same events, found through the servers' range index (etcd's
        /// interval tree) rather than their key map.
        #[arg(long)]
        watch_ranges: bool,
    },
}

async fn run(cli: Cli) -> Result<Vec<stats::Report>, String> {
    let timeout = Duration::from_secs_f64(cli.request_timeout.max(0.001));
    let urls = conn::resolve(&cli.endpoints, cli.target_leader, timeout).await?;
    let ctx = cmd::Ctx {
        urls,
        conns: cli.conns,
        clients: cli.clients,
        total: cli.total,
        duration: (cli.duration > 0.0).then(|| Duration::from_secs_f64(cli.duration)),
        timeout,
    };
    Ok(match cli.cmd {
        Cmd::Put {
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => vec![cmd::put(&ctx, key_size, val_size, key_space_size, sequential_keys).await?],
        Cmd::Range {
            key,
            end,
            consistency,
            limit,
        } => vec![cmd::range(&ctx, &key, end.as_deref(), consistency == "s", limit).await?],
        Cmd::TxnPut {
            txn_ops,
            key_size,
            val_size,
            key_space_size,
        } => vec![cmd::txn_put(&ctx, txn_ops, key_size, val_size, key_space_size).await?],
        Cmd::WatchLatency {
            put_total,
            put_rate,
            streams,
            watchers_per_stream,
            key_size,
            val_size,
            key_space_size,
            watch_ranges,
        } => {
            let w = cmd::WatchLatency {
                put_total,
                put_rate,
                streams,
                watchers_per_stream,
                key_size,
                val_size,
                key_space_size,
                watch_ranges,
            };
            let (put, watch) = cmd::watch_latency(&ctx, &w).await?;
            vec![put, watch]
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (json, precise) = (cli.json, cli.precise);
    // One thread runs every request loop and connection task: a loop that sends a request
    // wakes its connection's task, which runs only after the other loops that were woken by
    // the same read sent theirs, so their requests leave in one write (see `unary.rs`). With a
    // worker pool the woken connection task runs at once, one write per request.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(reports) => {
            if json {
                // One report: its object; watch-latency: {"put": {...}, "watch": {...}}.
                let out = match reports.as_slice() {
                    [one] => one.to_json(),
                    many => many.iter().map(|r| (r.name.clone(), r.to_json())).collect(),
                };
                println!("{out}");
            } else {
                for r in &reports {
                    print!("{}", r.to_text(precise));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgraft-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
