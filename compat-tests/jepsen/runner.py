"""One robustness run: a 3-member (or 5-member) cluster (pgraftd or etcd) behind the fault
proxy, clients and watchers recording a history, one fault chosen from the seed, then every
member killed and restarted and a final linearizable read, and every checker over the
history. The history is kept as JSON in the cluster's work dir (`history.json`) for a second
look."""

from __future__ import annotations

import os
import random
import threading
import time

from cluster import Cluster

from .clients import ClientError, Gateway, b64, unb64
from .driver import EtcdctlWatcher, GatewayWatcher, KvWorker, LeaseWorker, _prefix_end
from .durability import check_durability
from .faults import FAULTS, PGRAFTD_ONLY, faketime_env, faults_for
from .history import GET, WRITES, History, Op, WatchStream
from .lincheck import check_linearizable, check_revision_order, check_serializable_reads
from .leasecheck import check_leases
from .watchcheck import check_watches

N_KEYS = 5


def _retry(fn, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except ClientError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {e}")
            time.sleep(0.2)


def final_read(endpoint: str, prefix: str) -> dict:
    d = Gateway(endpoint, timeout=5).call("/v3/kv/range", {
        "key": b64(prefix), "range_end": b64(_prefix_end(prefix))})
    kvs = {}
    for kv in d.get("kvs") or []:
        kvs[unb64(kv["key"])] = [unb64(kv.get("value", "")), int(kv["mod_revision"])]
    return {"revision": int(d["header"]["revision"]), "kvs": kvs}


def final_reads(h: History, kv_keys) -> list:
    """The final read after the restart, as one linearizable get per key, later than all."""
    if h.final is None:
        return []
    t = h.final.get("time") or max((o.complete or o.invoke) for o in h.ops) + 1
    out = []
    for i, key in enumerate(sorted(kv_keys)):
        value, mod = h.final["kvs"].get(key, (None, 0))
        out.append(Op(len(h.ops) + i, "final", "http", GET, key, {"serializable": False}, t,
                      t, "ok", {"revision": h.final["revision"], "value": value,
                                "mod_revision": mod}))
    return out


def check(h: History, election_s: float) -> dict:
    kv_keys = set(h.meta["kv_keys"])
    kv_ops = [o for o in h.ops if o.key in kv_keys] + final_reads(h, kv_keys)
    upto, first = h.meta.get("end_revision"), h.meta.get("first_revision")
    return {
        "linearizable": check_linearizable(kv_ops, h.watches, upto=upto),
        "revision-order": check_revision_order(h.ops),
        "serializable-reads": check_serializable_reads(kv_ops),
        "watch": check_watches(h.watches, h.ops, upto, first),
        "lease": check_leases(h.ops, h.faults, election_s),
        "durability": check_durability(kv_ops, h.final, kv_keys),
    }


def run_once(kind: str, seed: int, fault: str | None = None, duration: float = 4.0,
             election_ms: int = 1000, members: int = 3, log=print) -> dict:
    rng = random.Random(seed)
    fault = fault or rng.choice(faults_for(kind))
    if fault in PGRAFTD_ONLY and kind != "pgraftd":
        raise ValueError(f"fault {fault} needs pgraftd")
    # The slow-disk failpoint is read by the members at their start.
    failpoint = fault.startswith("slow-disk") and "PGRAFT_FAILPOINT_SLOW_DISK" not in os.environ
    if failpoint:
        os.environ["PGRAFT_FAILPOINT_SLOW_DISK"] = "1"
    try:
        return _run(kind, seed, fault, rng, duration, election_ms, members, log)
    finally:
        if failpoint:
            del os.environ["PGRAFT_FAILPOINT_SLOW_DISK"]


def _run(kind: str, seed: int, fault: str, rng: random.Random, duration: float,
         election_ms: int, members: int, log) -> dict:
    c = Cluster(kind, members, proxy=True, election_ms=election_ms, heartbeat_ms=100)
    if fault.startswith("clock-jump"):
        for m in c.members:
            m.env.update(faketime_env(m))
    h = History()
    t_start = time.monotonic()
    try:
        c.start()
        c.wait_leader(timeout=30)
        prefix = f"/jepsen/{seed}-{time.time_ns() % 10**9}/"
        keys = [f"{prefix}kv/{i}" for i in range(N_KEYS)]
        rev0 = _retry(lambda: Gateway(c.members[0].endpoint).get(prefix)["revision"], "start")
        h.meta.update(kind=kind, members=members, seed=seed, fault=fault, prefix=prefix,
                      kv_keys=keys, first_revision=rev0 + 1, election_ms=election_ms)
        stop, watch_stop = threading.Event(), threading.Event()
        targets = c.running
        watchers = []
        for i in range(2):
            s = h.watch(WatchStream(f"watch-http-{i}", "http", prefix, rev0 + 1, True))
            watchers.append(GatewayWatcher(s.name, s, targets, seed * 100 + i, watch_stop))
        s = h.watch(WatchStream("watch-grpc-0", "grpc", prefix, rev0 + 1, True))
        watchers.append(EtcdctlWatcher(s.name, s, lambda: [m.endpoint for m in c.running()],
                                       watch_stop))
        workers = [KvWorker(f"kv-http-{i}", "http", h, targets, seed * 1000 + i, stop, 0.02,
                            keys=keys) for i in range(3)]
        workers.append(KvWorker("kv-grpc-0", "grpc", h, targets, seed * 1000 + 10, stop, 0.0,
                                keys=keys))
        workers += [LeaseWorker(f"lease-{face}", face, h, targets, seed * 1000 + 20 + j, stop,
                                0.1, prefix=f"{prefix}lease/")
                    for j, face in enumerate(("http", "grpc"))]
        for t in watchers + workers:
            t.start()
        time.sleep(duration / 2)
        f = FAULTS[fault](c, rng)
        h.faults.append(f)
        time.sleep(duration / 2)
        stop.set()
        for t in workers:
            t.join(30)
        leader = c.wait_leader(timeout=30)
        upto = _retry(lambda: Gateway(leader.endpoint).get(prefix)["revision"], "end revision")
        h.meta["end_revision"] = upto
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
                max((e.revision for e in w.events), default=0) < upto for w in h.watches):
            time.sleep(0.2)
        watch_stop.set()
        for t in watchers:
            if isinstance(t, EtcdctlWatcher):
                t.close()
            t.join(10)
        # durability: every member down at once, then back
        alive = c.running()
        for m in alive:
            c.kill(m)
        for m in alive:
            c.start_member(m, wait=False)
        for m in alive:
            m.wait_ready(30)
        leader = c.wait_leader(timeout=30)
        t_final = time.monotonic()
        h.final = _retry(lambda: final_read(leader.endpoint, prefix), "final read")
        h.final["time"] = t_final
    finally:
        c.stop(cleanup=True)
    (c.workdir / "history.json").write_text(h.to_json())
    verdicts = check(h, election_ms / 1000)
    report = {
        "kind": kind, "members": members, "seed": seed, "fault": fault,
        "fault_detail": [f.__dict__ for f in h.faults],
        "ops": len(h.ops), "ops_ok": sum(o.status == "ok" for o in h.ops),
        "ops_unknown": sum(o.status == "unknown" for o in h.ops),
        "events": sum(len(w.events) for w in h.watches),
        "longest_write_gap_s": longest_write_gap(h),
        "seconds": round(time.monotonic() - t_start, 1),
        "history": str(c.workdir / "history.json"),
        "verdicts": verdicts,
        "client_bugs": h.meta.get("client_bugs", []),
    }
    log(format_report(report))
    return report


def longest_write_gap(h: History) -> float:
    """Seconds of the longest stretch without an acknowledged write while clients ran (a
    liveness figure, not a checker: it shows how long a fault kept the cluster from
    writing)."""
    t = sorted(o.complete for o in h.ops if o.status == "ok" and o.kind in WRITES)
    if len(t) < 2:
        return 0.0
    return round(max(b - a for a, b in zip(t, t[1:])), 2)


def format_report(r: dict) -> str:
    lines = [f"run {r['kind']} x{r['members']} seed={r['seed']} fault={r['fault']} "
             f"({'; '.join(f.get('notes') or f.get('target', '') for f in r['fault_detail'])})"
             f": {r['ops']} ops ({r['ops_ok']} ok, {r['ops_unknown']} unknown), "
             f"{r['events']} watch events, longest time without a write "
             f"{r['longest_write_gap_s']} s, {r['seconds']} s; history {r['history']}"]
    for name, v in r["verdicts"].items():
        lines.append(f"  {name:20s} {v['verdict'].upper():10s} {v['stats']}")
        lines += [f"      {d}" for d in v["details"][:8]]
    if r["client_bugs"]:
        lines.append(f"  client errors: {r['client_bugs'][:5]}")
    return "\n".join(lines)


def failed(r: dict) -> list[str]:
    """The checkers that did not say ok."""
    return [n for n, v in r["verdicts"].items() if v["verdict"] != "ok"]
