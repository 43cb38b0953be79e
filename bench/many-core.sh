#!/usr/bin/env bash
# Issue 19's figures on a many-core machine that has no toolchain and no package registries
# (the workplace's device machines): everything it runs comes prebuilt in one tarball, and each
# part fits in one call of under 10 minutes.
#
#   bench/many-core.sh pack             # here: build, strip and pack pgraftd, pgraft-bench, etcd,
#                                       # etcdctl and jq (with its libraries) into .mc/bin.tar.gz
#   bench/many-core.sh run matrix       # there: the etcd-vs-pgraft matrix (bench/run-comparison.sh,
#                                       # one round, put and linearizable range at 1000 clients too)
#   bench/many-core.sh run scale        # there: 1M keys (compat-tests/scale.py, load and watch
#                                       # shortened): restart of a member, catch-up, compaction
#
# With the device tool: carry ".mc", command "bench/many-core.sh run matrix" (then "... run
# scale"), timeout_s 590. Reports land in $OUT (matrix.md, scale.txt, and a tarball of the raw
# results); without $OUT, in target/many-core.
#
# Knobs (environment): MC_DIR (.mc), ROUNDS (1), WIDE_CLIENTS (1000), WIDE_CONNS (100),
# SCALE_KEYS (1000000), SCALE_LOAD_SECS (20), SCALE_WATCH_SECS (10), SKIP_BUILD=1 (pack the
# release binaries already built), QUICK=1 (a smoke run of both parts, here).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MC_DIR=${MC_DIR:-$ROOT/.mc}
log() { echo "[many-core] $*" >&2; }
die() { log "error: $*"; exit 1; }

pack() {
    if [[ ${SKIP_BUILD:-0} != 1 ]]; then
        (cd "$ROOT" && cargo build --release -p pgraft-server --bin pgraftd -p pgraft-bench --bin pgraft-bench)
    fi
    local stage etcd etcdctl jq lib
    etcd=${ETCD:-/usr/bin/etcd}
    etcdctl=$(command -v etcdctl) || die "etcdctl not found (apt-get install etcd-client)"
    jq=$(command -v jq) || die "jq not found (apt-get install jq)"
    [[ -x $etcd ]] || die "etcd not found at $etcd (apt-get install etcd-server)"
    stage=$(mktemp -d)
    mkdir -p "$stage/bin/lib" "$MC_DIR"
    strip -o "$stage/bin/pgraftd" "$ROOT/target/release/pgraftd"
    strip -o "$stage/bin/pgraft-bench" "$ROOT/target/release/pgraft-bench"
    cp "$etcd" "$etcdctl" "$jq" "$stage/bin/"
    # jq's own libraries (libjq, libonig); the C library is the machine's.
    for lib in $(ldd "$jq" | awk '/=>/ {print $3}'); do
        case $(basename "$lib") in libjq* | libonig*) cp "$lib" "$stage/bin/lib/" ;; esac
    done
    tar czf "$MC_DIR/bin.tar.gz" -C "$stage" bin
    rm -rf "$stage"
    log "packed $(du -h "$MC_DIR/bin.tar.gz" | cut -f1) into $MC_DIR/bin.tar.gz"
}

run() {
    local part=$1 out=${OUT:-$ROOT/target/many-core} bin work
    [[ -f $MC_DIR/bin.tar.gz ]] || die "no $MC_DIR/bin.tar.gz: run '$0 pack' first (and carry it)"
    mkdir -p "$out"
    work=$(mktemp -d)
    tar xzf "$MC_DIR/bin.tar.gz" -C "$work"
    bin=$work/bin
    export PATH=$bin:$PATH LD_LIBRARY_PATH=$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export ETCDCTL_API=3
    log "$(nproc) CPUs; $("$bin/pgraftd" --version 2>&1 | head -1); etcd $("$bin/etcd" --version | awk '/^etcd Version/ {print $3}')"
    case $part in
    matrix)
        # The raw results stay in $work (the device returns at most 8 files): one tarball of them.
        SKIP_BUILD=1 PGRAFTD=$bin/pgraftd BENCH=$bin/pgraft-bench ETCD=$bin/etcd \
            ROUNDS=${ROUNDS:-1} WIDE_CLIENTS=${WIDE_CLIENTS:-1000} WIDE_CONNS=${WIDE_CONNS:-100} \
            RESULTS_DIR=$work/results "$ROOT/bench/run-comparison.sh" 2>"$out/matrix.log" |
            tee "$out/matrix.md"
        tar czf "$out/matrix-results.tar.gz" -C "$work" results
        ;;
    scale)
        local keys=${SCALE_KEYS:-1000000} load=${SCALE_LOAD_SECS:-20} watch=${SCALE_WATCH_SECS:-10}
        if [[ ${QUICK:-0} == 1 ]]; then keys=20000 load=5 watch=3; fi
        PGRAFTD=$bin/pgraftd PGRAFT_BENCH=$bin/pgraft-bench ETCD=$bin/etcd ETCDCTL=$bin/etcdctl \
            PYTHONUNBUFFERED=1 python3 "$ROOT/compat-tests/scale.py" --keys "$keys" \
            --load-secs "$load" --watch-secs "$watch" 2>&1 | tee "$out/scale.txt"
        ;;
    *) die "run what? matrix or scale" ;;
    esac
    rm -rf "$work"
}

case ${1:-} in
pack) pack ;;
run) run "${2:-}" ;;
*) die "usage: $0 pack | run matrix | run scale" ;;
esac
