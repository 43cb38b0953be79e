//! The process's Prometheus metrics, under etcd's names where a series means the same thing here,
//! so dashboards and alerts written for etcd keep working. Like etcd's registry, it is one per
//! process: instrumented code calls the statics below with one line; values that already live in
//! the server (leader, indexes, sizes) are read when `/metrics` is scraped ([`ServerGauges`]).
//!
//! The text format is Prometheus exposition format 0.0.4.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Self::new()
    }
}

/// etcd's disk latency buckets: `prometheus.ExponentialBuckets(0.001, 2, 14)`, 1 ms to 8.192 s.
pub const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// etcd's peer round-trip buckets, `prometheus.ExponentialBuckets(0.0001, 2, 16)`: 100 µs to
/// 3.3 s. The commit round's stages (a fraction of a millisecond each on a fast disk) use them
/// too: the disk buckets start at 1 ms.
pub const ROUND_BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];

const MAX_BUCKETS: usize = 16;

/// A latency histogram over a fixed set of upper bounds (per-bucket counts; cumulated when
/// rendered).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: [AtomicU64; MAX_BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Over [`DISK_BUCKETS`].
    pub const fn new() -> Self {
        Self::with_buckets(&DISK_BUCKETS)
    }

    pub const fn with_buckets(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observes the time since `start`.
    pub fn since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// `etcd_server_leader_changes_seen_total`.
pub static LEADER_CHANGES: Counter = Counter::new();
/// `etcd_server_proposals_pending`.
pub static PROPOSALS_PENDING: Gauge = Gauge::new();
/// `etcd_server_proposals_failed_total`.
pub static PROPOSALS_FAILED: Counter = Counter::new();
/// `etcd_disk_wal_fsync_duration_seconds`: the synced raft log appends.
pub static WAL_FSYNC: Histogram = Histogram::new();
/// `pgraft_disk_wal_fsync_duration_seconds`: the same fsyncs on the commit round's buckets,
/// from 100 µs (a fast disk puts every fsync in etcd's first bucket, below 1 ms).
pub static WAL_FSYNC_FINE: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `etcd_disk_backend_commit_duration_seconds`: the applier's batch commits.
pub static BACKEND_COMMIT: Histogram = Histogram::new();

// The commit round, stage by stage (where a write's time goes between its arrival and its
// answer; see `raft::round`). The fsync and the backend commit above are two of its stages.
/// `pgraft_server_proposal_duration_seconds`: a write proposed by this member, from its
/// proposal to its answer (applied here).
pub static PROPOSAL_DURATION: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_raft_proposal_queue_duration_seconds`: a proposal's wait in the raft loop's queue.
pub static PROPOSAL_QUEUE: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_raft_proposal_commit_duration_seconds`: on the leader, an entry's time from its
/// append to the log to its commit by a quorum.
pub static PROPOSAL_COMMIT: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_raft_append_ack_duration_seconds`: on a follower, from the arrival of the leader's
/// entries to the acknowledgement leaving (written and fsynced here).
pub static APPEND_ACK: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_raft_peer_message_queue_duration_seconds`: a peer's message's wait in the raft
/// loop's queue, from its arrival on the peer stream to raft taking it.
pub static PEER_MESSAGE_QUEUE: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_server_apply_duration_seconds`: one batch of committed entries applied.
pub static APPLY_BATCH: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);
/// `pgraft_server_applied_entries_total`: entries applied in those batches.
pub static APPLIED_ENTRIES: Counter = Counter::new();
/// `pgraft_raft_loop_turn_duration_seconds`: the raft loop's turns.
pub static RAFT_LOOP_TURN: Histogram = Histogram::with_buckets(&ROUND_BUCKETS);

/// `etcd_network_peer_round_trip_time_seconds`, per peer: measured on the leader from a
/// heartbeat to its answer (etcd probes with a request of its own; this round trip also holds
/// both raft loops' turns, which is what a commit waits for).
static PEER_RTT: Mutex<BTreeMap<u64, Histogram>> = Mutex::new(BTreeMap::new());

/// Observes a round trip to peer `id`.
pub fn peer_round_trip(id: u64, d: Duration) {
    PEER_RTT
        .lock()
        .entry(id)
        .or_insert_with(|| Histogram::with_buckets(&ROUND_BUCKETS))
        .observe(d);
}

/// Keeps the round-trip series of these peers only (the others left the cluster).
pub fn retain_peers(ids: &[u64]) {
    PEER_RTT.lock().retain(|id, _| ids.contains(id));
}
/// `etcd_server_health_success` / `etcd_server_health_failures` (the `/health` endpoint).
pub static HEALTH_SUCCESS: Counter = Counter::new();
pub static HEALTH_FAILURES: Counter = Counter::new();

/// A disk write on the raft thread slower than this is logged (etcd warns when an apply takes
/// over its expected 100 ms): a stall there delays every request and, long enough, elections.
pub const SLOW_WRITE: Duration = Duration::from_millis(100);

/// Logs a write that began at `start` if it took longer than [`SLOW_WRITE`]. fjall makes a
/// writer sleep while its worker is behind on flushes (4 sealed memtables) or compactions.
pub fn warn_if_slow(what: &'static str, start: Instant) {
    let took = start.elapsed();
    if took > SLOW_WRITE {
        tracing::warn!(what, took = ?took, "slow disk write on the raft path");
    }
}

/// Counts a leader change the way etcd does: whenever the known leader becomes a different,
/// non-empty member. Called by the raft loop with the previous and the current leader.
pub fn leader_seen(prev: u64, now: u64) {
    if is_new_leader(prev, now) {
        LEADER_CHANGES.inc();
    }
}

fn is_new_leader(prev: u64, now: u64) -> bool {
    now != 0 && now != prev
}

/// Marks one proposal in flight (`etcd_server_proposals_pending`) until dropped.
pub struct PendingProposal(());

impl PendingProposal {
    pub fn start() -> Self {
        PROPOSALS_PENDING.inc();
        PendingProposal(())
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        PROPOSALS_PENDING.dec();
    }
}

/// One gRPC method, as labelled by go-grpc-prometheus.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrpcMethod {
    pub grpc_type: &'static str,
    pub service: String,
    pub method: String,
}

impl GrpcMethod {
    pub fn new(service: &str, method: &str) -> GrpcMethod {
        GrpcMethod {
            grpc_type: grpc_type(service, method),
            service: service.to_string(),
            method: method.to_string(),
        }
    }

    /// The labels of a call to `/<service>/<method>` (`None` for a path of another shape).
    pub fn from_path(path: &str) -> Option<GrpcMethod> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(GrpcMethod::new(service, method))
    }
}

/// go-grpc-prometheus's `grpc_type` of a method of etcd's services.
pub fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot")
        | ("v3electionpb.Election", "Observe")
        | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

#[derive(Default)]
struct GrpcCounts {
    started: u64,
    handled: BTreeMap<&'static str, u64>,
}

static GRPC: Mutex<BTreeMap<GrpcMethod, GrpcCounts>> = Mutex::new(BTreeMap::new());

/// One gRPC call (or gateway call, which etcd serves as a gRPC call): counted in
/// `grpc_server_started_total` when created and in `grpc_server_handled_total` at [`done`]; a
/// call dropped before that (the client went away) ends as `Canceled`.
///
/// [`done`]: GrpcCall::done
pub struct GrpcCall(Option<GrpcMethod>);

impl GrpcCall {
    pub fn start(m: GrpcMethod) -> Self {
        GRPC.lock().entry(m.clone()).or_default().started += 1;
        GrpcCall(Some(m))
    }

    /// The call ended with gRPC status `code` (only the first end counts).
    pub fn done(&mut self, code: tonic::Code) {
        if let Some(m) = self.0.take() {
            grpc_handled(&m, code);
        }
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        self.done(tonic::Code::Cancelled);
    }
}

fn grpc_handled(m: &GrpcMethod, code: tonic::Code) {
    *GRPC
        .lock()
        .entry(m.clone())
        .or_default()
        .handled
        .entry(code_name(code))
        .or_default() += 1;
}

/// The code names grpc-go prints (`codes.Code.String()`), which go-grpc-prometheus uses.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// Values the server already keeps, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct ServerGauges {
    pub has_leader: bool,
    pub is_leader: bool,
    pub committed_index: u64,
    pub applied_index: u64,
    pub db_size: u64,
    pub db_size_in_use: u64,
    pub keys: i64,
    pub current_rev: i64,
    pub compact_rev: i64,
    pub server_version: &'static str,
}

/// The whole exposition: the statics above, `s`, and the process's memory.
pub fn render(s: &ServerGauges) -> String {
    let mut out = String::with_capacity(8192);
    let o = &mut out;
    let b = |v: bool| if v { 1 } else { 0 };
    histogram(
        o,
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &BACKEND_COMMIT,
    );
    histogram(
        o,
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &WAL_FSYNC,
    );
    histogram(
        o,
        "pgraft_disk_wal_fsync_duration_seconds",
        "The WAL fsyncs above, on buckets from 100 µs.",
        &WAL_FSYNC_FINE,
    );
    header(
        o,
        "etcd_network_peer_round_trip_time_seconds",
        "histogram",
        "Round-Trip-Time histogram between peers",
    );
    for (id, h) in PEER_RTT.lock().iter() {
        series(
            o,
            "etcd_network_peer_round_trip_time_seconds",
            &format!("To=\"{id:x}\""),
            h,
        );
    }
    histogram(
        o,
        "pgraft_raft_append_ack_duration_seconds",
        "On a follower, from the arrival of the leader's entries to the acknowledgement leaving (written and fsynced).",
        &APPEND_ACK,
    );
    histogram(
        o,
        "pgraft_raft_loop_turn_duration_seconds",
        "The raft loop's turns, from waking to waiting again.",
        &RAFT_LOOP_TURN,
    );
    histogram(
        o,
        "pgraft_raft_proposal_commit_duration_seconds",
        "On the leader, an entry's time from its append to its commit by a quorum.",
        &PROPOSAL_COMMIT,
    );
    histogram(
        o,
        "pgraft_raft_peer_message_queue_duration_seconds",
        "A peer's message's wait in the raft loop's queue, from its arrival to raft taking it.",
        &PEER_MESSAGE_QUEUE,
    );
    histogram(
        o,
        "pgraft_raft_proposal_queue_duration_seconds",
        "A proposal's wait in the raft loop's queue before raft takes it.",
        &PROPOSAL_QUEUE,
    );
    histogram(
        o,
        "pgraft_server_apply_duration_seconds",
        "The time to apply one batch of committed entries to the state machine.",
        &APPLY_BATCH,
    );
    simple(
        o,
        "pgraft_server_applied_entries_total",
        "counter",
        "Committed entries applied to the state machine (in the batches above).",
        APPLIED_ENTRIES.get(),
    );
    histogram(
        o,
        "pgraft_server_proposal_duration_seconds",
        "A write proposed by this member, from its proposal to its answer.",
        &PROPOSAL_DURATION,
    );
    simple(
        o,
        "etcd_debugging_mvcc_compact_revision",
        "gauge",
        "The revision of the last compaction in store.",
        s.compact_rev,
    );
    simple(
        o,
        "etcd_debugging_mvcc_current_revision",
        "gauge",
        "The current revision of store.",
        s.current_rev,
    );
    simple(
        o,
        "etcd_debugging_mvcc_keys_total",
        "gauge",
        "Total number of keys.",
        s.keys,
    );
    simple(
        o,
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        s.db_size,
    );
    simple(
        o,
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "gauge",
        "Total size of the underlying database logically in use in bytes.",
        s.db_size_in_use,
    );
    simple(
        o,
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        b(s.has_leader),
    );
    simple(
        o,
        "etcd_server_health_failures",
        "counter",
        "The total number of failed health checks",
        HEALTH_FAILURES.get(),
    );
    simple(
        o,
        "etcd_server_health_success",
        "counter",
        "The total number of successful health checks",
        HEALTH_SUCCESS.get(),
    );
    simple(
        o,
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        b(s.is_leader),
    );
    simple(
        o,
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        LEADER_CHANGES.get(),
    );
    simple(
        o,
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        s.applied_index,
    );
    simple(
        o,
        "etcd_server_proposals_committed_total",
        "gauge",
        "The total number of consensus proposals committed.",
        s.committed_index,
    );
    simple(
        o,
        "etcd_server_proposals_failed_total",
        "counter",
        "The total number of failed proposals seen.",
        PROPOSALS_FAILED.get(),
    );
    simple(
        o,
        "etcd_server_proposals_pending",
        "gauge",
        "The current number of pending proposals to commit.",
        PROPOSALS_PENDING.get().max(0),
    );
    header(
        o,
        "etcd_server_version",
        "gauge",
        "Which version is running. 1 for 'server_version' label with current version.",
    );
    let _ = writeln!(
        o,
        "etcd_server_version{{server_version=\"{}\"}} 1",
        s.server_version
    );
    grpc(o);
    if let Some(cpu) = process_cpu_seconds() {
        simple(
            o,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
    if let Some((vsz, rss)) = process_memory() {
        simple(
            o,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
        simple(
            o,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsz,
        );
    }
    out
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(o: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    header(o, name, kind, help);
    let _ = writeln!(o, "{name} {v}");
}

fn histogram(o: &mut String, name: &str, help: &str, h: &Histogram) {
    header(o, name, "histogram", help);
    series(o, name, "", h);
}

/// One histogram's series; `labels` (`a="b"`, or empty) go before `le`.
fn series(o: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    // Read the count first: buckets observed later can only make the cumulated buckets larger,
    // so `+Inf` (the count) is taken as the largest of the two.
    let mut cum = 0;
    for (i, le) in h.bounds.iter().enumerate() {
        cum += h.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
    }
    let count = h.count().max(cum);
    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(o, "{name}_sum{labels} {sum}\n{name}_count{labels} {count}");
}

fn grpc(o: &mut String) {
    let calls = GRPC.lock();
    header(
        o,
        "grpc_server_handled_total",
        "counter",
        "Total number of RPCs completed on the server, regardless of success or failure.",
    );
    for (m, c) in calls.iter() {
        for (code, n) in &c.handled {
            let _ = writeln!(
                o,
                "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {n}",
                m.method, m.service, m.grpc_type
            );
        }
    }
    header(
        o,
        "grpc_server_started_total",
        "counter",
        "Total number of RPCs started on the server.",
    );
    for (m, c) in calls.iter() {
        let _ = writeln!(
            o,
            "grpc_server_started_total{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
            m.method, m.service, m.grpc_type, c.started
        );
    }
}

/// User plus system CPU time of this process, from `/proc/self/stat` (fields 14 and 15, in
/// clock ticks), as Prometheus's process collector reports it.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}

/// (virtual, resident) bytes of this process, from `/proc/self/statm`.
fn process_memory() -> Option<(u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (vsz, rss) = (pages.next()??, pages.next()??);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    Some((vsz * page, rss * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_series_put_their_labels_before_le() {
        let h = Histogram::with_buckets(&ROUND_BUCKETS);
        h.observe(Duration::from_micros(150));
        let mut o = String::new();
        series(&mut o, "rtt", "To=\"a\"", &h);
        assert!(o.contains("rtt_bucket{To=\"a\",le=\"0.0001\"} 0\n"), "{o}");
        assert!(o.contains("rtt_bucket{To=\"a\",le=\"0.0002\"} 1\n"), "{o}");
        assert!(o.contains("rtt_bucket{To=\"a\",le=\"3.2768\"} 1\n"), "{o}");
        assert!(o.contains("rtt_count{To=\"a\"} 1\n"), "{o}");
    }

    #[test]
    fn cpu_time_is_read() {
        let cpu = process_cpu_seconds().expect("cpu time");
        assert!(cpu >= 0.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut o = String::new();
        histogram(&mut o, "x", "h", &h);
        assert!(o.contains("x_bucket{le=\"0.001\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.002\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"0.004\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"8.192\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count 3\n"), "{o}");
        assert!(o.contains("x_sum 20.0035\n"), "{o}");
    }

    #[test]
    fn grpc_method_labels() {
        let m = GrpcMethod::from_path("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!(
            (m.grpc_type, m.service.as_str(), m.method.as_str()),
            ("bidi_stream", "etcdserverpb.Watch", "Watch")
        );
        assert_eq!(
            GrpcMethod::from_path("/etcdserverpb.KV/Range")
                .unwrap()
                .grpc_type,
            "unary"
        );
        assert!(GrpcMethod::from_path("/v3/kv/range").is_none());
        assert!(GrpcMethod::from_path("/x").is_none());
    }

    #[test]
    fn leader_changes_count_only_new_leaders() {
        assert!(!is_new_leader(0, 0));
        assert!(!is_new_leader(5, 0));
        assert!(!is_new_leader(5, 5));
        assert!(is_new_leader(0, 5));
        assert!(is_new_leader(4, 5));
    }

    #[test]
    fn memory_is_read() {
        let (vsz, rss) = process_memory().unwrap();
        assert!(rss > 0 && vsz >= rss, "{vsz} {rss}");
    }
}
