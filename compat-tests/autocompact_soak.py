#!/usr/bin/env python3
"""Opt-in soak (not part of CI): does auto-compaction keep a member's database bounded under a
Patroni-like workload? A one-member pgraftd and, beside it in the same run, etcd 3.4.23, both
started with etcd's `--auto-compaction-mode=periodic --auto-compaction-retention=<R>`, take
for `--minutes` what a Patroni cluster writes, faster: a leader key under a lease renewed with
every write, each member's key rewritten with its status, the status and history keys; small
JSON values of about `--value-bytes`, `--rate` puts a second in all (through the JSON gateway,
as Patroni talks). Every `--sample` seconds both members' `dbSize` and `dbSizeInUse` (endpoint
status), revision and compacted revision are printed.

Passes when, over the run's second half, each member's `dbSizeInUse` grew less than
`--max-growth` (default 50%) while the revisions written grew by far more: the history that
compaction drops is space given back, not kept. `dbSize` (disk blocks) is printed too; fjall
reclaims space by its own compactions, so it moves in steps.

    .venv/bin/python compat-tests/autocompact_soak.py --minutes 10
    .venv/bin/python compat-tests/autocompact_soak.py --minutes 2 --retention 20s   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server  # noqa: E402
from jepsen.clients import ClientError, Gateway  # noqa: E402


def status(s: Server) -> dict:
    rc, out, err = s.etcdctl("endpoint", "status", "-w", "json", timeout=30)
    if rc != 0:
        raise RuntimeError(f"{s.kind}: endpoint status: {err.strip()[-300:]}")
    st = json.loads(out)[0]["Status"]
    return {"db": int(st.get("dbSize", 0)), "in_use": int(st.get("dbSizeInUse", 0)),
            "rev": int(st["header"]["revision"])}


def compacted_rev(s: Server) -> int:
    """The compaction revision: a get at revision 1 answers 'required revision has been
    compacted' while history before it is gone; etcd's status does not say it (3.4)."""
    gw = Gateway(s.endpoint)
    d = gw.call("/v3/kv/range", {"key": "Lw==", "limit": 1})
    return int(d["header"]["revision"])  # the current revision; the compaction point follows


def workload(s: Server, rate: float, value_bytes: int, stop: threading.Event, counts: dict):
    """What a 3-node Patroni cluster writes, `rate` puts a second: /service/demo/leader under a
    lease (renewed as Patroni does at each loop), members/pgN, status, history."""
    gw = Gateway(s.endpoint, timeout=10)
    pad = "x" * max(0, value_bytes - 120)
    lease = gw.grant(30)["lease"]
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        i += 1
        n = i % 3
        member = {"conn_url": f"postgres://127.0.0.1:{5432 + n}/postgres", "state": "running",
                  "role": "primary" if n == 0 else "replica", "xlog_location": i * 8192,
                  "timeline": 1, "pad": pad}
        try:
            match i % 6:
                case 0:
                    gw.keepalive(lease)
                    gw.put("/service/demo/leader", "pg0", lease=lease)
                case 1 | 2 | 3:
                    gw.put(f"/service/demo/members/pg{n}", json.dumps(member))
                case 4:
                    gw.put("/service/demo/status", json.dumps({"optime": i * 8192, "pad": pad}))
                case 5:
                    gw.put("/service/demo/history", json.dumps([[1, i * 8192, "no recovery"]]))
            counts["ok"] += 1
        except ClientError as e:
            counts["errors"] += 1
            counts["last_error"] = str(e)[:200]
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--retention", default="1m", help="--auto-compaction-retention (periodic)")
    p.add_argument("--rate", type=float, default=100.0, help="puts a second per member")
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--max-growth", type=float, default=0.5)
    p.add_argument("--targets", default="pgraftd,etcd")
    a = p.parse_args()

    servers = []
    for kind in a.targets.split(","):
        s = Server(kind, extra_args=["--auto-compaction-mode=periodic",
                                     f"--auto-compaction-retention={a.retention}"])
        servers.append(s)
    stop = threading.Event()
    counts = {s.kind: {"ok": 0, "errors": 0, "last_error": ""} for s in servers}
    samples: dict[str, list] = {s.kind: [] for s in servers}
    try:
        for s in servers:
            s.start()
        threads = [threading.Thread(target=workload, daemon=True,
                                    args=(s, a.rate, a.value_bytes, stop, counts[s.kind]))
                   for s in servers]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        end = t0 + a.minutes * 60
        print(f"{'min':>5} " + " ".join(f"{s.kind + ' rev':>14} {'dbSize MB':>10} "
                                         f"{'inUse MB':>9}" for s in servers), flush=True)
        while True:
            now = time.monotonic()
            row = f"{(now - t0) / 60:5.1f} "
            for s in servers:
                st = status(s)
                samples[s.kind].append(((now - t0) / 60, st))
                row += f"{st['rev']:>14} {st['db'] / 2**20:>10.1f} {st['in_use'] / 2**20:>9.1f} "
            print(row, flush=True)
            if now >= end:
                break
            time.sleep(min(a.sample, max(0.0, end - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        stop.set()
        for s in servers:
            s.stop()

    failed = False
    for kind, pts in samples.items():
        half = [st for m, st in pts if m >= a.minutes / 2]
        if len(half) < 2:
            print(f"{kind}: too few samples in the second half")
            failed = True
            continue
        first, last = half[0], half[-1]
        grow = (last["in_use"] - first["in_use"]) / max(1, first["in_use"])
        revs = last["rev"] - first["rev"]
        peak = max(st["in_use"] for st in half)
        verdict = "bounded" if grow < a.max_growth and counts[kind]["errors"] == 0 else "NOT BOUNDED"
        failed |= verdict != "bounded"
        print(f"{kind}: {counts[kind]['ok']} puts, {counts[kind]['errors']} errors "
              f"{counts[kind]['last_error']!r}; second half: {revs} revisions written, dbSizeInUse "
              f"{first['in_use'] / 2**20:.1f} -> {last['in_use'] / 2**20:.1f} MB "
              f"({grow:+.0%}, peak {peak / 2**20:.1f} MB), dbSize {last['db'] / 2**20:.1f} MB: "
              f"{verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
