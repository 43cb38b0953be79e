"""The short robustness run (issue 17): 3-member clusters (and one of 5) under load from gRPC
(etcdctl) and JSON-gateway clients and watchers, one fault per run, every member killed and restarted at the
end, and every checker of compat-tests/jepsen over the recorded history (see
compat-tests/README.md, "Robustness runs"). Fixed seeds; several fault kinds against pgraftd
and one run against etcd 3.4.23 as the control; and one run of a pgraftd with a deliberately
broken read path, which the checkers must catch. About 20 s a run on 2 cores."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import report  # noqa: E402
from conftest import candidate_kind, reference_only  # noqa: E402
from jepsen.runner import failed, run_once  # noqa: E402

# (server, seed, fault, members)
RUNS = [
    ("pgraftd", 11, "kill-leader", 3),
    ("pgraftd", 12, "pause-follower", 3),
    ("pgraftd", 13, "partition-leader", 3),
    ("pgraftd", 14, "oneway-leader", 3),
    ("pgraftd", 15, "member-replace", 3),
    ("pgraftd", 17, "slow-disk-leader", 3),
    ("pgraftd", 18, "clock-jump-leader", 3),
    # Five members: the leader cut off leaves four, which elect one of them.
    ("pgraftd", 19, "partition-leader", 5),
    ("etcd", 16, "kill-follower", 3),
]


def _run_id(kind, fault, members):
    return f"{kind}-{fault}" + (f"-{members}members" if members != 3 else "")


@pytest.mark.parametrize("kind,seed,fault,members", RUNS,
                         ids=[_run_id(k, f, n) for k, _, f, n in RUNS])
def test_robustness(kind, seed, fault, members):
    """With COMPAT_REFERENCE_ONLY=1, etcd runs the pgraftd runs too (checks the harness)."""
    kind = candidate_kind() if kind == "pgraftd" else kind
    r = run_once(kind, seed, fault, duration=4.0, members=members)
    report(f"robustness[{_run_id(kind, fault, members)}]", seed=seed, ops=r["ops"],
           unknown=r["ops_unknown"], events=r["events"], seconds=r["seconds"],
           verdicts={n: v["verdict"] for n, v in r["verdicts"].items()})
    assert not r["client_bugs"], r["client_bugs"]
    assert r["fault_detail"] and r["fault_detail"][0]["end"] > r["fault_detail"][0]["start"]
    assert r["ops_ok"] >= 100, f"too little load to show anything: {r['ops_ok']} ops"
    if fault.startswith("slow-disk"):
        notes = r["fault_detail"][0]["notes"]
        assert " 0 slow journal fsyncs" not in notes, f"the failpoint did not slow the disk: {notes}"
    if fault.startswith("clock-jump"):
        notes = r["fault_detail"][0]["notes"]
        assert "header +3599s" in notes or "header +3600s" in notes, \
            f"the member's wall clock did not move: {notes}"
    assert r["verdicts"]["watch"]["stats"]["events"] >= 50
    bad = failed(r)
    assert not bad, "checkers did not pass: " + ", ".join(
        f"{n}: {r['verdicts'][n]['verdict']} {r['verdicts'][n]['details'][:3]}" for n in bad)


def test_checker_catches_a_stale_read_path(monkeypatch):
    """pgraftd with its local-reads failpoint (PGRAFT_FAILPOINT_LOCAL_READS=1: linearizable
    reads answered from the member's own state, no ReadIndex) and a follower cut off: the
    checkers must report the stale reads it serves."""
    if reference_only():
        pytest.skip("COMPAT_REFERENCE_ONLY=1: pgraftd not tested")
    monkeypatch.setenv("PGRAFT_FAILPOINT_LOCAL_READS", "1")
    r = run_once("pgraftd", 7, "partition-follower", duration=4.0)
    v = r["verdicts"]
    assert v["linearizable"]["verdict"] == "violation", v["linearizable"]
    assert v["revision-order"]["verdict"] == "violation", v["revision-order"]
    assert v["durability"]["verdict"] == "ok", v["durability"]
