"""The CI-sized scale test (issue 13): `scale.py` against a 3-member pgraftd cluster with about
100k keys and a short load. While 16 clients put, a full keys-only range, a physical
compaction of all history, a snapshot to a 4th member and a watcher that never reads must
cost no failed request, no leader change and no unbounded memory, and the new member must end
with the leader's keys; then a backup of the leader, restored into a new member, must serve the
leader's keys.

Sizes by environment: SCALE_CI_KEYS (default 100000), SCALE_CI_LOAD_SECS (30),
SCALE_CI_WATCH_SECS (20), SCALE_CI_RSS_GROWTH_MB (the most a member's peak RSS may exceed its
RSS after the initial load; default 128), SCALE_CI_ETCD=1 to measure etcd the same way too
(then the slowest-put and peak-RSS comparisons of the full test apply as well). The full-size
run with etcd beside it is `compat-tests/scale.py` (see bench/README.md)."""

from __future__ import annotations

import os

import pytest

import cluster
import scale


def ci_params() -> scale.Params:
    env = os.environ.get
    targets = ("pgraftd", "etcd") if env("SCALE_CI_ETCD", "") not in ("", "0") else ("pgraftd",)
    return scale.Params(keys=int(env("SCALE_CI_KEYS", "100000")),
                        load_secs=float(env("SCALE_CI_LOAD_SECS", "30")),
                        clients=16,
                        watch_secs=float(env("SCALE_CI_WATCH_SECS", "20")),
                        targets=targets,
                        load_ops=100,
                        # The smallest useful: the log is compacted after about 2000 entries,
                        # so the 4th member must take a snapshot.
                        snapshot_count=1000,
                        step_timeout=120.0)


def test_scale_ci_sized():
    if not os.access(scale.bench_path(), os.X_OK):
        pytest.fail(f"{scale.bench_path()} missing: build it with `cargo build --bins`",
                    pytrace=False)
    p = ci_params()
    growth_bound_kb = int(os.environ.get("SCALE_CI_RSS_GROWTH_MB", "128")) * 1024
    results = {kind: scale.run_target(kind, p) for kind in p.targets}
    text = scale.report(results, p)
    print(text)
    r = results["pgraftd"]
    cluster.report("test_scale_ci_sized", keys=p.keys, puts=r.put.get("requests"),
                   errors=r.put_errors(), p99_ms=r.p99_ms(), slowest_ms=r.slowest_put_ms(),
                   leader_changes=r.total_leader_changes(), range_s=r.range_secs,
                   compact_s=r.compact_secs, catchup_s=r.catchup_secs,
                   restore_s=r.restore_secs, restored_ready_s=r.restored_ready_secs,
                   peak_rss_mb={n: v // 1024 for n, v in r.peak_rss_kb.items() if v})

    problems = list(scale.verdicts(results)["pgraftd"])
    if r.same_keys is not True:
        problems.append(f"new member's keys not the leader's: {r.new_member_keys} vs "
                        f"{r.leader_keys}")
    if r.new_member_snapshot is not True:
        problems.append("the new member's log shows no installed snapshot (it caught up "
                        "through the log, or not at all): the test did not cover a snapshot")
    for name, start in r.rss_start_kb.items():
        peak = r.peak_rss_kb.get(name)
        if start and peak and peak - start > growth_bound_kb:
            problems.append(f"{name}: peak RSS {peak // 1024} MiB, {(peak - start) // 1024} MiB "
                            f"over its {start // 1024} MiB after the load (bound "
                            f"{growth_bound_kb // 1024} MiB) with a slow watcher open")
    assert not problems, "\n".join(problems) + "\n\n" + text
