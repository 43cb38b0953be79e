#!/usr/bin/env bash
# Side-by-side benchmark of a 3-member etcd cluster and a 3-member pgraftd cluster, on one
# machine, with the same load generator (pgraft-bench, a port of etcd's `benchmark` tool).
#
#   bench/run-comparison.sh            # full matrix (a few minutes)
#   QUICK=1 bench/run-comparison.sh    # small smoke run (well under a minute of load)
#   ROUNDS=3 bench/run-comparison.sh   # three rounds, etcd and pgraft alternating; medians
#
# Steps: build pgraftd and pgraft-bench (release); for etcd and pgraftd in turn (see Rounds):
# start 3 members on free 127.0.0.1 ports with data under a temp dir, wait for health, run the
# matrix, let the members settle, read each member's VmRSS, stop them. Prints a Markdown table
# (etcd, pgraft, ratio) with the machine and the exact commands; results and logs go to
# $RESULTS_DIR.
#
# Rounds: on a shared 2-core VM one run can be 10% faster or slower than the next, for both
# servers alike; with ROUNDS=N each round starts fresh clusters (odd rounds etcd first, even
# rounds pgraft first) and the table shows the median of the rounds, with each round's figures.
#
# Knobs (environment): QUICK=1, ROUNDS (default 1), PUT_TOTAL, RANGE_TOTAL, LAT_TOTAL, CONNS,
# WATCHERS (a multiple of 100), WATCH_KEYS, WATCH_PUTS, WATCH_STREAMS, WIDE_CLIENTS and WIDE_CONNS
# (e.g. 1000 and 100 on a many-core machine: put and linearizable range with that many clients),
# SETTLE (seconds before reading RSS), ETCD (etcd binary), PGRAFTD and BENCH (prebuilt
# binaries, with SKIP_BUILD=1), SKIP_BUILD=1, CARGO_JOBS,
# RESULTS_DIR, KEEP_WORK=1 (the temp dir with data and logs is also kept when the script
# fails).
# All traffic stays on 127.0.0.1; every benchmark is bounded by its request count, a
# per-request timeout and `timeout`; all started processes are stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    PUT_TOTAL=${PUT_TOTAL:-2000} RANGE_TOTAL=${RANGE_TOTAL:-2000} LAT_TOTAL=${LAT_TOTAL:-200}
    WATCHERS=${WATCHERS:-1000} WATCH_PUTS=${WATCH_PUTS:-100} WATCH_STREAMS=${WATCH_STREAMS:-1000}
    SETTLE=${SETTLE:-3}
else
    # 100000 puts per run, as etcd's own benchmark guide: at 64 clients 20000 lasted about a
    # second for pgraft, short enough for start-up effects to swing the result by 10%.
    PUT_TOTAL=${PUT_TOTAL:-100000} RANGE_TOTAL=${RANGE_TOTAL:-20000} LAT_TOTAL=${LAT_TOTAL:-2000}
    # Issue 19's watch target: 10,000 watchers on 100 keys.
    WATCHERS=${WATCHERS:-10000} WATCH_PUTS=${WATCH_PUTS:-1000}
    # Many clients watching a key each: 10,000 streams of one watcher, on keys of their own.
    WATCH_STREAMS=${WATCH_STREAMS:-10000}
    SETTLE=${SETTLE:-10}
fi
CONNS=${CONNS:-16}
WIDE_CLIENTS=${WIDE_CLIENTS:-0}
WIDE_CONNS=${WIDE_CONNS:-100}
WATCH_KEYS=${WATCH_KEYS:-100}
ROUNDS=${ROUNDS:-1}
((WATCHERS >= 100 && WATCHERS % 100 == 0)) || { echo "WATCHERS must be a multiple of 100" >&2; exit 2; }
[[ $WATCH_STREAMS =~ ^[1-9][0-9]*$ ]] || { echo "WATCH_STREAMS must be a positive integer" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
ETCD=${ETCD:-/usr/bin/etcd}
PGRAFTD=${PGRAFTD:-$ROOT/target/release/pgraftd}
BENCH=${BENCH:-$ROOT/target/release/pgraft-bench}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
BENCH_TIMEOUT=600 # seconds, per benchmark invocation
RANGE_KEY=bench-range-key

log() { echo "[run-comparison] $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites and build
command -v jq >/dev/null || die "jq is required (apt-get install jq)"
if [[ ! -x $ETCD ]] || ! command -v etcdctl >/dev/null; then
    log "installing etcd-server and etcd-client"
    [[ $(id -u) == 0 ]] || die "etcd not found at $ETCD; install etcd-server and etcd-client"
    apt-get install -y etcd-server etcd-client >/dev/null
fi
export ETCDCTL_API=3
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building pgraftd and pgraft-bench (release)"
    (cd "$ROOT" && cargo build --release -j "${CARGO_JOBS:-2}" \
        -p pgraft-server --bin pgraftd -p pgraft-bench --bin pgraft-bench)
fi
[[ -x $PGRAFTD && -x $BENCH ]] || die "missing $PGRAFTD or $BENCH"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgraft-bench.XXXXXX")
mkdir -p "$RESULTS_DIR"
PIDS=()

stop_members() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    local rc=$?
    stop_members
    if [[ ${KEEP_WORK:-0} == 1 || $rc != 0 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Prints N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------- one cluster
check_alive() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "$1 member $pid exited; see $WORK/$1 (KEEP_WORK=1 keeps it)"
    done
}

# start_cluster KIND BINARY: starts 3 members, sets ENDPOINTS; PIDS holds their pids.
start_cluster() {
    local kind=$1 bin=$2 ports i cluster=""
    read -ra ports <<<"$(free_ports 6)"
    for i in 0 1 2; do
        cluster+="${cluster:+,}m$((i + 1))=http://127.0.0.1:${ports[i + 3]}"
    done
    ENDPOINTS=""
    for i in 0 1 2; do
        local name=m$((i + 1)) cport=${ports[i]} pport=${ports[i + 3]}
        ENDPOINTS+="${ENDPOINTS:+,}127.0.0.1:$cport"
        mkdir -p "$WORK/$kind"
        "$bin" --name "$name" --data-dir "$WORK/$kind/$name.data" \
            --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$cluster" --initial-cluster-token "$kind-bench" \
            --initial-cluster-state new >"$WORK/$kind/$name.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 120); do
        if etcdctl --endpoints="$ENDPOINTS" --command-timeout=2s endpoint health >/dev/null 2>&1; then
            # Make sure these endpoints are our members, not some other server on a reused port.
            local members
            members=$(etcdctl --endpoints="$ENDPOINTS" member list) || die "$kind: member list failed"
            for i in 3 4 5; do
                grep -q "http://127.0.0.1:${ports[i]}" <<<"$members" ||
                    die "$kind: peer port ${ports[i]} is not in the member list: $members"
            done
            check_alive "$kind"
            return 0
        fi
        check_alive "$kind"
        sleep 0.5
    done
    die "$kind cluster did not become healthy within 60 s"
}

# bench KIND TEST ARGS...: runs pgraft-bench with --json, keeps the result and the command.
bench() {
    local kind=$1 test=$2
    shift 2
    local out="$ROUND_DIR/$kind-$test.json"
    log "$kind: $test (round $ROUND)"
    if [[ $ROUND == 1 ]]; then
        echo "pgraft-bench --endpoints \$ENDPOINTS $*" >>"$WORK/commands-$kind"
    fi
    timeout "$BENCH_TIMEOUT" "$BENCH" --endpoints "$ENDPOINTS" --json "$@" >"$out" ||
        die "$kind $test failed (pgraft-bench exit $?)"
    check_alive "$kind"
    jq -c '{requests, errors, requests_per_sec, p50: .percentiles_ms.p50, p99: .percentiles_ms.p99}' "$out" >&2
}

# scrape DIR: every member's /metrics into DIR/m1.prom, m2.prom, ...
scrape() {
    mkdir -p "$1"
    python3 - "$1" "$ENDPOINTS" <<'EOF'
import sys, urllib.request
for i, ep in enumerate(sys.argv[2].split(","), 1):
    with urllib.request.urlopen(f"http://{ep}/metrics", timeout=10) as r:
        open(f"{sys.argv[1]}/m{i}.prom", "wb").write(r.read())
EOF
}

# staged KIND TEST ARGS...: bench, with every member's /metrics scraped before and after; the
# members' CPU per request and the leader's commit-round stages (bench/stages.py) are kept in
# stages-KIND-TEST.json.
staged() {
    local kind=$1 test=$2 dir="$ROUND_DIR/metrics/$1-$2"
    # A failed scrape or stage report costs its rows ("n/a"), not the run.
    scrape "$dir/before" || log "$kind $test: /metrics scrape failed"
    bench "$@"
    scrape "$dir/after" || log "$kind $test: /metrics scrape failed"
    python3 "$ROOT/bench/stages.py" "$dir/before" "$dir/after" \
        "$(jq '.requests // 0' "$ROUND_DIR/$kind-$test.json")" >"$ROUND_DIR/stages-$kind-$test.json" ||
        log "$kind $test: no stage report"
    jq -c '{cpu_us_per_request, stages: ((.stages // {}) | map_values(.mean_ms))}' \
        "$ROUND_DIR/stages-$kind-$test.json" >&2 || true
}

# The members' resident memory, KiB, summed.
rss_sum() {
    local pid sum=0 kib
    for pid in "${PIDS[@]}"; do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || kib=0
        sum=$((sum + ${kib:-0}))
    done
    echo "$sum"
}

# watch_run KIND TEST STREAMS PER_STREAM KEYS [WATCH-LATENCY OPTIONS]: STREAMS streams (over the
# members) of PER_STREAM watchers on KEYS keys, put to in turn at 100/s: put-to-event latency; the
# members' RSS,
# sampled every 0.2 s while they hold the watchers, gives the memory per watcher ((peak -
# before) / watchers, with what the puts and the streams' buffers take).
watch_run() {
    local kind=$1 test=$2 streams=$3 per_stream=$4 keys=$5 before peak now pid
    local watchers=$((streams * per_stream))
    shift 5
    before=$(rss_sum)
    peak=$before
    bench "$kind" "$test" --conns "$CONNS" watch-latency --put-total "$WATCH_PUTS" --put-rate 100 \
        --streams "$streams" --watchers-per-stream "$per_stream" --key-space-size "$keys" "$@" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        now=$(rss_sum)
        ((now > peak)) && peak=$now
        sleep 0.2
    done
    wait "$pid" || die "$kind $test failed"
    echo $(((peak - before) * 1024 / watchers)) >"$ROUND_DIR/$kind-$test-bytes-per-watcher"
    log "$kind: $test: memory per watcher $(cat "$ROUND_DIR/$kind-$test-bytes-per-watcher") bytes"
}

run_matrix() {
    local kind=$1 bin=$2 pid i
    log "starting 3-member $kind cluster (round $ROUND)"
    rm -rf "${WORK:?}/$kind"
    start_cluster "$kind" "$bin"
    # First, on fresh members: memory the put runs left behind (a Go heap keeps what it grew
    # to) would hold the watchers without growing, and hide what they cost.
    watch_run "$kind" watch $((WATCHERS / 100)) 100 "$WATCH_KEYS"
    watch_run "$kind" watch-streams "$WATCH_STREAMS" 1 "$WATCH_STREAMS"
    # The same, each watcher on a range ([key, key + "\0")): found through the range index.
    watch_run "$kind" watch-ranges "$WATCH_STREAMS" 1 "$WATCH_STREAMS" --watch-ranges
    local put=(put --key-size 8 --val-size 256 --sequential-keys --key-space-size "$PUT_TOTAL")
    staged "$kind" put16 --target-leader --conns "$CONNS" --clients 16 --total "$PUT_TOTAL" "${put[@]}"
    staged "$kind" put64 --target-leader --conns "$CONNS" --clients 64 --total "$PUT_TOTAL" "${put[@]}"
    if ((WIDE_CLIENTS > 0)); then
        staged "$kind" putwide --target-leader --conns "$WIDE_CONNS" --clients "$WIDE_CLIENTS" \
            --total "$PUT_TOTAL" "${put[@]}"
    fi
    bench "$kind" put1 --target-leader --conns 1 --clients 1 --total "$LAT_TOTAL" "${put[@]}"
    etcdctl --endpoints="$ENDPOINTS" put "$RANGE_KEY" "$(printf 'v%.0s' $(seq 256))" >/dev/null
    bench "$kind" range-l --conns "$CONNS" --clients 64 --total "$RANGE_TOTAL" range "$RANGE_KEY" --consistency l
    bench "$kind" range-s --conns "$CONNS" --clients 64 --total "$RANGE_TOTAL" range "$RANGE_KEY" --consistency s
    if ((WIDE_CLIENTS > 0)); then
        bench "$kind" range-lwide --conns "$WIDE_CONNS" --clients "$WIDE_CLIENTS" --total "$RANGE_TOTAL" \
            range "$RANGE_KEY" --consistency l
    fi
    log "$kind: idle for ${SETTLE}s before reading RSS"
    sleep "$SETTLE"
    : >"$ROUND_DIR/$kind-rss-kib"
    for pid in "${PIDS[@]}"; do
        awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" >>"$ROUND_DIR/$kind-rss-kib"
    done
    # WARN/ERROR lines: pgraftd logs JSON ("level":"WARN"), etcd 3.4 capnslog ("W | ...").
    cat "$WORK/$kind"/m?.log | grep -ciE '"level":"(warn|error)"| [WE] \| ' \
        >"$ROUND_DIR/$kind-log-warnings" || true
    stop_members
    # Flush this cluster's dirty pages now, so that their writeback does not compete with the
    # next cluster's fsyncs.
    sync
    for i in 1 2 3; do cp "$WORK/$kind/m$i.log" "$ROUND_DIR/$kind-m$i.log" 2>/dev/null || true; done
}

sync
for ROUND in $(seq "$ROUNDS"); do
    ROUND_DIR=$RESULTS_DIR/round$ROUND
    mkdir -p "$ROUND_DIR"
    if ((ROUND % 2 == 1)); then
        run_matrix etcd "$ETCD"
        run_matrix pgraft "$PGRAFTD"
    else
        run_matrix pgraft "$PGRAFTD"
        run_matrix etcd "$ETCD"
    fi
done

# ---------------------------------------------------------------- report
# j RUN FIELD: the median over the rounds; each RUN FIELD: every round's value, in order.
j() {
    jq -s "map($2) | sort | if length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end" "$RESULTS_DIR"/round*/"$1.json"
}
each() { jq -s -r "map($2 | round) | map(tostring) | join(\", \")" "$RESULTS_DIR"/round*/"$1.json"; }
rss() { cat "$RESULTS_DIR"/round*/"$1-rss-kib" | awk -v f="$2" '{s += $1; if ($1 > m) m = $1} END {printf "%.1f", (f == "max" ? m : s / NR) / 1024}'; }
errors() {
    local f files=()
    for f in "$RESULTS_DIR"/round*/"$1"-{put16,put64,putwide,put1,range-l,range-s,range-lwide,watch,watch-streams,watch-ranges}.json; do
        [[ -f $f ]] && files+=("$f")
    done
    cat "${files[@]}" |
        jq -s 'map(if has("watch") then .put.errors + .watch.errors else .errors end) | add'
}
# per_watcher KIND TEST: the median over the rounds.
per_watcher() { sort -n "$RESULTS_DIR"/round*/"$1-$2-bytes-per-watcher" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
warnings() { cat "$RESULTS_DIR"/round*/"$1-log-warnings" | awk '{s += $1} END {print s}'; }
row() { # row LABEL ETCD PGRAFT
    local ratio
    ratio=$(awk -v a="$2" -v b="$3" 'BEGIN {if (a > 0) printf "%.2f", b / a; else print "n/a"}')
    printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$ratio"
}
fmt() { awk -v x="$1" -v d="$2" 'BEGIN {printf "%.*f", d, x}'; }
# stage KIND STAGE FIELD: the median over the rounds of a stage at 64 clients, or n/a. STAGE
# is the leader's (wal_fsync) or the followers' (follower_stages.append_to_ack).
stage() {
    local v path=$2
    [[ $path == *.* ]] || path="stages.$path"
    v=$(j "stages-$1-put64" ".$path.$3 // empty" 2>/dev/null)
    if [[ -z $v || $v == null ]]; then echo "n/a"; else fmt "$v" 3; fi
}
stages_table() {
    echo "Where a put's time goes at 64 clients, on the leader and on the followers (mean / p99,"
    echo "ms; medians of the rounds; from /metrics before and after the run, \`bench/stages.py\`):"
    echo
    echo "| stage | etcd | pgraft |"
    echo "|---|---:|---:|"
    local s
    for s in wal_fsync:"WAL fsync" backend_commit:"backend commit" peer_rtt:"peer round trip" \
        proposal_queue:"proposal in the raft loop's queue" append_to_commit:"append to commit" \
        apply_batch:"apply, one batch" proposal_to_answer:"proposal to answer" \
        raft_loop_turn:"raft loop turn" \
        peer_message_queue:"a peer's message (mostly acknowledgements) in the raft loop's queue" \
        follower_stages.peer_message_queue:"followers: a peer's message (mostly the leader's) in the raft loop's queue" \
        follower_stages.append_to_ack:"followers: append to acknowledgement (written, fsynced)" \
        follower_stages.wal_fsync:"followers: WAL fsync"; do
        local key=${s%%:*} label=${s#*:}
        printf '| %s | %s / %s | %s / %s |\n' "$label" \
            "$(stage etcd "$key" mean_ms)" "$(stage etcd "$key" p99_ms)" \
            "$(stage pgraft "$key" mean_ms)" "$(stage pgraft "$key" p99_ms)"
    done
}
report() {
    echo "## pgraft vs etcd: 3-member clusters on one machine"
    echo
    echo "| metric | etcd | pgraft | pgraft / etcd |"
    echo "|---|---:|---:|---:|"
    row "put, 16 clients, to leader (req/s, higher is better)" \
        "$(fmt "$(j etcd-put16 .requests_per_sec)" 0)" "$(fmt "$(j pgraft-put16 .requests_per_sec)" 0)"
    row "put, 64 clients, to leader (req/s, higher is better)" \
        "$(fmt "$(j etcd-put64 .requests_per_sec)" 0)" "$(fmt "$(j pgraft-put64 .requests_per_sec)" 0)"
    row "put, 16 clients, p99 latency (ms, lower is better)" \
        "$(fmt "$(j etcd-put16 .percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-put16 .percentiles_ms.p99)" 2)"
    row "put, 64 clients, p99 latency (ms, lower is better)" \
        "$(fmt "$(j etcd-put64 .percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-put64 .percentiles_ms.p99)" 2)"
    if ((WIDE_CLIENTS > 0)); then
        row "put, $WIDE_CLIENTS clients over $WIDE_CONNS connections (req/s, higher is better)" \
            "$(fmt "$(j etcd-putwide .requests_per_sec)" 0)" "$(fmt "$(j pgraft-putwide .requests_per_sec)" 0)"
        row "put, $WIDE_CLIENTS clients, p99 latency (ms, lower is better)" \
            "$(fmt "$(j etcd-putwide .percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-putwide .percentiles_ms.p99)" 2)"
    fi
    row "put, 1 client, p50 latency (ms, lower is better)" \
        "$(fmt "$(j etcd-put1 .percentiles_ms.p50)" 2)" "$(fmt "$(j pgraft-put1 .percentiles_ms.p50)" 2)"
    row "put, 1 client, p99 latency (ms, lower is better)" \
        "$(fmt "$(j etcd-put1 .percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-put1 .percentiles_ms.p99)" 2)"
    row "linearizable range, 64 clients (req/s, higher is better)" \
        "$(fmt "$(j etcd-range-l .requests_per_sec)" 0)" "$(fmt "$(j pgraft-range-l .requests_per_sec)" 0)"
    row "serializable range, 64 clients (req/s, higher is better)" \
        "$(fmt "$(j etcd-range-s .requests_per_sec)" 0)" "$(fmt "$(j pgraft-range-s .requests_per_sec)" 0)"
    if ((WIDE_CLIENTS > 0)); then
        row "linearizable range, $WIDE_CLIENTS clients (req/s, higher is better)" \
            "$(fmt "$(j etcd-range-lwide .requests_per_sec)" 0)" "$(fmt "$(j pgraft-range-lwide .requests_per_sec)" 0)"
    fi
    row "put, 16 clients, CPU of all members per put (µs, lower is better)" \
        "$(fmt "$(j stages-etcd-put16 .cpu_us_per_request)" 1)" "$(fmt "$(j stages-pgraft-put16 .cpu_us_per_request)" 1)"
    row "put, 64 clients, CPU of all members per put (µs, lower is better)" \
        "$(fmt "$(j stages-etcd-put64 .cpu_us_per_request)" 1)" "$(fmt "$(j stages-pgraft-put64 .cpu_us_per_request)" 1)"
    row "watch, $WATCHERS watchers on $WATCH_KEYS keys: put to event, p50 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch .watch.percentiles_ms.p50)" 2)" "$(fmt "$(j pgraft-watch .watch.percentiles_ms.p50)" 2)"
    row "watch, $WATCHERS watchers on $WATCH_KEYS keys: put to event, p99 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch .watch.percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-watch .watch.percentiles_ms.p99)" 2)"
    row "watch: memory per watcher, all members (bytes, lower is better)" \
        "$(per_watcher etcd watch)" "$(per_watcher pgraft watch)"
    row "watch, $WATCH_STREAMS streams of one watcher, a key each: put to event, p50 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch-streams .watch.percentiles_ms.p50)" 2)" "$(fmt "$(j pgraft-watch-streams .watch.percentiles_ms.p50)" 2)"
    row "watch, $WATCH_STREAMS streams of one watcher, a key each: put to event, p99 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch-streams .watch.percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-watch-streams .watch.percentiles_ms.p99)" 2)"
    row "watch, $WATCH_STREAMS streams: memory per watcher, all members (bytes, lower is better)" \
        "$(per_watcher etcd watch-streams)" "$(per_watcher pgraft watch-streams)"
    row "watch, $WATCH_STREAMS streams of one range watcher: put to event, p50 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch-ranges .watch.percentiles_ms.p50)" 2)" "$(fmt "$(j pgraft-watch-ranges .watch.percentiles_ms.p50)" 2)"
    row "watch, $WATCH_STREAMS streams of one range watcher: put to event, p99 (ms, lower is better)" \
        "$(fmt "$(j etcd-watch-ranges .watch.percentiles_ms.p99)" 2)" "$(fmt "$(j pgraft-watch-ranges .watch.percentiles_ms.p99)" 2)"
    row "idle RSS per member, mean (MiB, lower is better)" "$(rss etcd mean)" "$(rss pgraft mean)"
    row "idle RSS per member, max (MiB, lower is better)" "$(rss etcd max)" "$(rss pgraft max)"
    row "failed requests, all runs (lower is better)" "$(errors etcd)" "$(errors pgraft)"
    row "WARN/ERROR log lines, 3 members" "$(warnings etcd)" "$(warnings pgraft)"
    echo
    stages_table
    echo
    if ((ROUNDS > 1)); then
        echo "Medians of $ROUNDS rounds (fresh clusters each round, etcd and pgraft alternating first)."
        echo "Each round, req/s: put 16 clients etcd $(each etcd-put16 .requests_per_sec), pgraft" \
            "$(each pgraft-put16 .requests_per_sec); put 64 clients etcd" \
            "$(each etcd-put64 .requests_per_sec), pgraft $(each pgraft-put64 .requests_per_sec)."
        echo
    fi
    echo "Machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
        "$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, Linux $(uname -r)."
    echo "etcd $("$ETCD" --version | awk '/^etcd Version/ {print $3}') vs pgraft" \
        "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
        "($("$PGRAFTD" --version | sed -n 1p)); clients, servers and all three members of each" \
        "cluster share this machine; data dirs on $(df -P "$WORK" | awk 'NR == 2 {print $1}')."
    echo
    echo "Command: \`$(env | grep -E '^(QUICK|ROUNDS|PUT_TOTAL|RANGE_TOTAL|LAT_TOTAL|CONNS|SETTLE|WATCHERS|WATCH_KEYS|WATCH_PUTS|WATCH_STREAMS|WIDE_CLIENTS|WIDE_CONNS)=' | sort | tr '\n' ' ')bench/run-comparison.sh\`" \
        "(ROUNDS=$ROUNDS PUT_TOTAL=$PUT_TOTAL RANGE_TOTAL=$RANGE_TOTAL LAT_TOTAL=$LAT_TOTAL CONNS=$CONNS SETTLE=$SETTLE WATCHERS=$WATCHERS WATCH_KEYS=$WATCH_KEYS WATCH_PUTS=$WATCH_PUTS WATCH_STREAMS=$WATCH_STREAMS)."
    echo "Benchmarks run against each cluster (\$ENDPOINTS: its three client URLs):"
    echo '```'
    cat "$WORK/commands-etcd"
    echo '```'
    local f errs
    errs=$(for f in "$RESULTS_DIR"/round*/{etcd,pgraft}-*.json; do
        jq -r --arg run "$(basename "$(dirname "$f")")/$(basename "$f" .json)" \
            '[.error_distribution, .put.error_distribution, .watch.error_distribution]
                | map(. // {}) | add | to_entries[] | "- \($run): \(.value) × `\(.key)`"' "$f"
    done)
    if [[ -n $errs ]]; then
        echo
        echo "Failed requests:"
        printf '%s\n' "$errs"
    fi
}
report | tee "$RESULTS_DIR/table.md"
log "results, JSON and member logs in $RESULTS_DIR"
