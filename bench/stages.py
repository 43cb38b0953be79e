#!/usr/bin/env python3
"""Where a put's time and CPU go: the difference between two /metrics scrapes of each member.

    bench/stages.py BEFORE_DIR AFTER_DIR REQUESTS

Each directory holds one Prometheus text file per member (`m1.prom`, `m2.prom`, ...), scraped
before and after one benchmark run. Prints one JSON object:
  - `cpu_us_per_request`: all members' CPU (process_cpu_seconds_total) per request, and
    `cpu_us_per_request_by_member` (the leader first);
  - `stages`: for the leader (the member with etcd_server_is_leader 1 after the run), each
    commit-round histogram that moved during the run: count, mean and the p50 and p99 that
    Prometheus's histogram_quantile would give, in milliseconds. etcd and pgraftd share the
    etcd_* series (fsync, backend commit, peer round trip); the pgraft_* ones are pgraftd's
    stages (the fsync again on buckets from 100 µs, as etcd's start at 1 ms; queue,
    append-to-commit, apply batch, proposal-to-answer, raft loop turn, the wait of the
    followers' acknowledgements in the loop's queue);
  - `follower_stages`: the followers' side of the round, their histograms summed: the
    leader's messages' wait in the loop's queue, append to acknowledgement (the entries
    written and fsynced), fsync and loop turn.
"""

import json
import math
import re
import sys
from pathlib import Path

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$")

# The histograms reported, under a short name.
STAGES = {
    "etcd_disk_wal_fsync_duration_seconds": "wal_fsync",
    "pgraft_disk_wal_fsync_duration_seconds": "wal_fsync_fine",
    "etcd_disk_backend_commit_duration_seconds": "backend_commit",
    "etcd_network_peer_round_trip_time_seconds": "peer_rtt",
    "pgraft_raft_proposal_queue_duration_seconds": "proposal_queue",
    "pgraft_raft_proposal_commit_duration_seconds": "append_to_commit",
    "pgraft_server_apply_duration_seconds": "apply_batch",
    "pgraft_server_proposal_duration_seconds": "proposal_to_answer",
    "pgraft_raft_loop_turn_duration_seconds": "raft_loop_turn",
    "pgraft_raft_peer_message_queue_duration_seconds": "peer_message_queue",
}

# The followers' side of the round, over all followers together.
FOLLOWER_STAGES = {
    "pgraft_raft_peer_message_queue_duration_seconds": "peer_message_queue",
    "pgraft_raft_append_ack_duration_seconds": "append_to_ack",
    "etcd_disk_wal_fsync_duration_seconds": "wal_fsync",
    "pgraft_disk_wal_fsync_duration_seconds": "wal_fsync_fine",
    "pgraft_raft_loop_turn_duration_seconds": "raft_loop_turn",
}


def parse(text: str) -> dict:
    """{(name, labels-without-le): value}, plus histogram buckets under (name, labels, le)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SERIES.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(3) or "", m.group(4)
        try:
            v = float(value)
        except ValueError:
            continue
        pairs = [p for p in labels.split(",") if p]
        le = None
        rest = []
        for p in pairs:
            if p.startswith("le="):
                le = p[3:].strip('"')
            else:
                rest.append(p)
        key = (name, ",".join(rest)) if le is None else (name, ",".join(rest), le)
        out[key] = v
    return out


def quantile(q: float, buckets: list) -> float | None:
    """histogram_quantile over [(upper bound, cumulative count)] sorted by bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def merged(scrapes: list) -> dict:
    """Several members' parsed scrapes as one: each series summed over the members."""
    out = {}
    for scrape in scrapes:
        for key, v in scrape.items():
            out[key] = out.get(key, 0.0) + v
    return out


def histogram_delta(before: dict, after: dict, name: str) -> dict | None:
    """The histogram `name` over all its label sets (peers summed), after minus before."""
    counts, sums, buckets = 0.0, 0.0, {}
    for key, v in after.items():
        if key[0] == name + "_count" and len(key) == 2:
            counts += v - before.get(key, 0.0)
        elif key[0] == name + "_sum" and len(key) == 2:
            sums += v - before.get(key, 0.0)
        elif key[0] == name + "_bucket" and len(key) == 3:
            bound = math.inf if key[2] == "+Inf" else float(key[2])
            buckets[bound] = buckets.get(bound, 0.0) + v - before.get(key, 0.0)
    if counts <= 0:
        return None
    cum = sorted(buckets.items())
    ms = lambda s: None if s is None else round(s * 1000, 3)  # noqa: E731
    return {
        "count": int(counts),
        "mean_ms": ms(sums / counts),
        "p50_ms": ms(quantile(0.5, cum)),
        "p99_ms": ms(quantile(0.99, cum)),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    before_dir, after_dir, requests = Path(argv[1]), Path(argv[2]), int(argv[3])
    members = []
    for after_file in sorted(after_dir.glob("*.prom")):
        before_file = before_dir / after_file.name
        if not before_file.exists():
            continue
        members.append(
            (after_file.stem, parse(before_file.read_text()), parse(after_file.read_text()))
        )
    if not members or requests <= 0:
        print(json.dumps({"error": "no scrapes or no requests"}))
        return 1
    leader = next(
        (m for m in members if m[2].get(("etcd_server_is_leader", ""), 0.0) == 1.0), members[0]
    )
    members.sort(key=lambda m: m is not leader)
    cpu = {}
    for name, before, after in members:
        key = ("process_cpu_seconds_total", "")
        if key in after and key in before:
            cpu[name] = round((after[key] - before[key]) * 1e6 / requests, 1)
    stages = {}
    for series, short in STAGES.items():
        d = histogram_delta(leader[1], leader[2], series)
        if d is not None:
            stages[short] = d
    followers = [m for m in members if m is not leader]
    follower_stages = {}
    for series, short in FOLLOWER_STAGES.items():
        before = merged([m[1] for m in followers])
        after = merged([m[2] for m in followers])
        d = histogram_delta(before, after, series)
        if d is not None:
            follower_stages[short] = d
    print(
        json.dumps(
            {
                "leader": leader[0],
                "requests": requests,
                "cpu_us_per_request": round(sum(cpu.values()), 1) if cpu else None,
                "cpu_us_per_request_by_member": cpu,
                "stages": stages,
                "follower_stages": follower_stages,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
