"""The load tool, pgraft-bench, against real etcd and pgraftd: each subcommand completes its
requests without errors and leaves what it wrote where etcdctl sees it, and a server's error
reaches the report's error distribution with etcd's message. The performance comparison
(bench/run-comparison.sh) relies on the tool speaking gRPC to both servers alike."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import reference_only
from harness import REPO_ROOT

KINDS = ["etcd"] if reference_only() else ["etcd", "pgraftd"]


def bench_path() -> Path:
    p = os.environ.get("PGRAFT_BENCH")
    return Path(p) if p else REPO_ROOT / "target" / "debug" / "pgraft-bench"


@pytest.fixture(params=KINDS)
def server(request, server_factory):
    if not os.access(bench_path(), os.X_OK):
        pytest.fail(f"{bench_path()} missing: build it with `cargo build --bins`", pytrace=False)
    return server_factory(request.param)


def bench(server, *args: str) -> dict:
    """Runs pgraft-bench against `server` with --json; its report."""
    argv = [str(bench_path()), "--endpoints", server.endpoint, "--json", *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{argv} failed: {p.stderr}"
    return json.loads(p.stdout)


def key_count(server) -> int:
    rc, out, err = server.etcdctl("get", "", "--from-key", "--keys-only", "-w", "json")
    assert rc == 0, err
    return json.loads(out).get("count", 0)


def test_put_writes_every_key(server):
    # Sequential keys: key n is the varint of n, zero-padded to 8 bytes; 300 keys, 2 rounds.
    r = bench(server, "--conns", "4", "--clients", "8", "--total", "600", "put",
              "--key-size", "8", "--val-size", "64", "--sequential-keys", "--key-space-size", "300")
    assert r["requests"] == 600 and r["errors"] == 0, r
    p = r["percentiles_ms"]
    assert r["requests_per_sec"] > 0 and 0 < p["p50"] <= p["p99"], r
    rc, out, err = server.etcdctl("get", "", "--from-key", "--keys-only", "-w", "json")
    assert rc == 0, err
    got = json.loads(out)
    assert len(got["kvs"]) == 300
    assert all(kv["version"] == 2 for kv in got["kvs"]), "every key written twice"
    # 600 puts on a fresh store: revision 601.
    assert got["header"]["revision"] == 601


def test_range_and_txn_put(server):
    rc, _, err = server.etcdctl("put", "bench-range-key", "v")
    assert rc == 0, err
    for consistency in ("l", "s"):
        r = bench(server, "--conns", "2", "--clients", "4", "--total", "200",
                  "range", "bench-range-key", "--consistency", consistency)
        assert r["requests"] == 200 and r["errors"] == 0, (consistency, r)
    r = bench(server, "--clients", "2", "--total", "50", "txn-put", "--txn-ops", "4",
              "--key-size", "8", "--key-space-size", "1000")
    assert r["requests"] == 50 and r["errors"] == 0, r
    # 50 transactions of 4 distinct keys each, walking the key space in order: 200 keys, and
    # the range benchmark's key.
    assert key_count(server) == 201


def test_errors_reach_the_report(server):
    # Larger than the default --max-request-bytes (1.5 MiB), smaller than gRPC's 2 MiB limit:
    # every put fails, with etcd's error, and the report counts only successes as requests.
    r = bench(server, "--clients", "2", "--total", "4", "put", "--val-size", str(1_800_000))
    assert r["requests"] == 0 and r["errors"] == 4, r
    assert r["error_distribution"] == {
        "InvalidArgument: etcdserver: request is too large": 4
    }, r


def test_watch_latency(server):
    r = bench(server, "--conns", "2", "watch-latency", "--put-total", "20", "--put-rate", "200",
              "--streams", "2", "--watchers-per-stream", "3")
    assert r["put"]["requests"] == 20 and r["put"]["errors"] == 0, r
    # Every put reaches all 6 watchers.
    assert r["watch"]["requests"] == 120 and r["watch"]["errors"] == 0, r
    # 9 watchers over 3 keys, 3 on each: each of 10 puts is seen by its key's 3 watchers (the
    # tool counts events, and one more than the puts asked for is an error).
    r = bench(server, "--conns", "2", "watch-latency", "--put-total", "10", "--put-rate", "200",
              "--streams", "3", "--watchers-per-stream", "3", "--key-space-size", "3")
    assert r["put"]["requests"] == 10 and r["put"]["errors"] == 0, r
    assert r["watch"]["requests"] == 30 and r["watch"]["errors"] == 0, r
    # The same with each watcher on the range [key, key + "\0"): the same events, found
    # through the range index.
    r = bench(server, "--conns", "2", "watch-latency", "--put-total", "10", "--put-rate", "200",
              "--streams", "3", "--watchers-per-stream", "3", "--key-space-size", "3",
              "--watch-ranges")
    assert r["put"]["requests"] == 10 and r["put"]["errors"] == 0, r
    assert r["watch"]["requests"] == 30 and r["watch"]["errors"] == 0, r


@pytest.mark.parametrize("kind", KINDS)
def test_duration_ends_a_steady_load(kind, server_factory):
    """`--duration` stops starting requests after that many seconds whatever `--total` says:
    the scale test's steady load (compat-tests/scale.py) relies on it."""
    if not os.access(bench_path(), os.X_OK):
        pytest.fail(f"{bench_path()} missing: build it with `cargo build --bins`", pytrace=False)
    server = server_factory(kind)
    t0 = time.monotonic()
    r = bench(server, "--clients", "4", "--total", str(10**12), "--duration", "2", "put",
              "--key-space-size", "100")
    elapsed = time.monotonic() - t0
    assert r["errors"] == 0 and r["requests"] > 0, r
    assert 2 <= r["total_secs"] < 10 and elapsed < 30, (r["total_secs"], elapsed)


def scrape(server, into: Path) -> None:
    import urllib.request
    into.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(f"http://{server.endpoint}/metrics", timeout=10) as r:
        (into / "m1.prom").write_bytes(r.read())


def test_stage_report_from_two_scrapes(server, tmp_path):
    """bench/stages.py (run-comparison's CPU per put and stage table) reads what both servers
    export: CPU per request and the leader's fsync and backend commit; pgraftd also its own
    commit-round stages, each counted once per put or more."""
    scrape(server, tmp_path / "before")
    r = bench(server, "--conns", "2", "--clients", "4", "--total", "400", "put",
              "--key-size", "8", "--val-size", "64", "--key-space-size", "100")
    assert r["errors"] == 0, r
    # etcd commits its backend in batches every 100 ms: let the last batch of the run land, so
    # that a run shorter than one batch interval still shows a backend commit.
    time.sleep(0.5)
    scrape(server, tmp_path / "after")
    p = subprocess.run(["python3", str(REPO_ROOT / "bench" / "stages.py"), str(tmp_path / "before"),
                        str(tmp_path / "after"), "400"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["leader"] == "m1"
    assert st["cpu_us_per_request"] > 0, st
    stages = st["stages"]
    for name in ["wal_fsync", "backend_commit"]:
        assert stages[name]["count"] >= 1 and stages[name]["mean_ms"] > 0, st
    if server.kind == "pgraftd":
        for name in ["proposal_queue", "append_to_commit", "proposal_to_answer"]:
            assert stages[name]["count"] >= 400, st
            s = stages[name]
            assert 0 <= s["p50_ms"] <= s["p99_ms"] <= 3276.8, st
        assert stages["apply_batch"]["count"] >= 1, st
        assert stages["raft_loop_turn"]["count"] >= 1, st


def test_follower_stages_summed_over_the_followers(tmp_path):
    """The followers' side of the round (append to acknowledgement, their fsync) is reported
    over the followers together, apart from the leader's stages."""
    def prom(leader: bool, acks: int, ack_secs: float) -> str:
        return (f"etcd_server_is_leader {int(leader)}\n"
                f"process_cpu_seconds_total {acks * 0.001}\n"
                f'pgraft_raft_append_ack_duration_seconds_bucket{{le="0.0008"}} {acks}\n'
                f'pgraft_raft_append_ack_duration_seconds_bucket{{le="+Inf"}} {acks}\n'
                f"pgraft_raft_append_ack_duration_seconds_sum {ack_secs}\n"
                f"pgraft_raft_append_ack_duration_seconds_count {acks}\n")
    for d, n, secs in [("before", 0, 0.0), ("after", 10, 0.005)]:
        (tmp_path / d).mkdir()
        (tmp_path / d / "m1.prom").write_text(prom(False, n, secs))
        (tmp_path / d / "m2.prom").write_text(prom(True, 0, 0.0))
        (tmp_path / d / "m3.prom").write_text(prom(False, 2 * n, 2 * secs))
    p = subprocess.run(["python3", str(REPO_ROOT / "bench" / "stages.py"), str(tmp_path / "before"),
                        str(tmp_path / "after"), "10"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    assert st["leader"] == "m2", st
    assert "append_to_ack" not in st["stages"], st
    ack = st["follower_stages"]["append_to_ack"]
    assert ack["count"] == 30 and ack["mean_ms"] == 0.5 and ack["p99_ms"] <= 0.8, st


def test_stage_quantiles_as_prometheus():
    """histogram_quantile's linear interpolation within a bucket, over cumulative counts."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("stages", REPO_ROOT / "bench" / "stages.py")
    stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages)
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.004, 100.0), (float("inf"), 100.0)]
    assert stages.quantile(0.5, buckets) == 0.001
    assert abs(stages.quantile(0.7, buckets) - 0.0015) < 1e-12
    assert abs(stages.quantile(0.95, buckets) - 0.003) < 1e-12
    assert stages.quantile(0.5, []) is None
    before = stages.parse('x_bucket{To="a",le="0.001"} 1\nx_bucket{To="a",le="+Inf"} 2\n'
                          'x_sum{To="a"} 0.5\nx_count{To="a"} 2\n')
    after = stages.parse('x_bucket{To="a",le="0.001"} 3\nx_bucket{To="a",le="+Inf"} 4\n'
                         'x_sum{To="a"} 0.502\nx_count{To="a"} 4\n'
                         'x_bucket{To="b",le="0.001"} 1\nx_bucket{To="b",le="+Inf"} 1\n'
                         'x_sum{To="b"} 0.001\nx_count{To="b"} 1\n')
    d = stages.histogram_delta(before, after, "x")
    # Peers summed: 3 new observations, 3 ms in all, every one within 1 ms.
    assert d["count"] == 3 and d["mean_ms"] == 1.0 and d["p99_ms"] <= 1.0, d
