#!/usr/bin/env python3
"""Robustness runs on demand (issue 17): `python compat-tests/robustness.py --runs N --seed S
--target pgraftd|etcd [--fault F]`. Run i uses seed S+i, which picks the fault unless --fault
names one. Each run prints its history size, the fault and every checker's verdict; the exit
status is 1 if any checker found a violation (2 if one could only say unknown)."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jepsen.faults import FAULTS  # noqa: E402
from jepsen.runner import run_once  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target", choices=("pgraftd", "etcd"), default="pgraftd")
    p.add_argument("--fault", choices=sorted(FAULTS))
    p.add_argument("--duration", type=float, default=6.0,
                   help="seconds of load around the fault (half before, half after)")
    p.add_argument("--election-ms", type=int, default=1000)
    p.add_argument("--members", type=int, choices=(3, 5), default=3)
    p.add_argument("--json-out", help="append each run's report as one JSON line to this file")
    a = p.parse_args()
    worst = 0
    totals = {"runs": 0, "ops": 0, "violations": 0, "unknown": 0}
    for i in range(a.runs):
        r = run_once(a.target, a.seed + i, a.fault, a.duration, a.election_ms, a.members)
        if a.json_out:
            with open(a.json_out, "a") as f:
                f.write(json.dumps(r, default=str) + "\n")
        totals["runs"] += 1
        totals["ops"] += r["ops"]
        for v in r["verdicts"].values():
            if v["verdict"] == "violation":
                totals["violations"] += 1
                worst = 1
            elif v["verdict"] == "unknown":
                totals["unknown"] += 1
                worst = worst or 2
        sys.stdout.flush()
    print(f"TOTAL {totals}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
