"""The robustness checkers (compat-tests/jepsen) on hand-made histories and on a recorded real
one (fixtures/pgraftd-partition-leader-seed2.json.gz: pgraftd, 3 members, the leader cut off
both ways for 4 s), with violations injected into it. No servers; runs in a second or two."""

from __future__ import annotations

import copy
import gzip
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jepsen.durability import check_durability  # noqa: E402
from jepsen.history import (CAS_REV, CAS_VALUE, DELETE, GET, LEASE_GRANT, PUT,  # noqa: E402
                            Event, Fault, History, Op, WatchStream)
from jepsen.leasecheck import check_leases  # noqa: E402
from jepsen.lincheck import (check_key, check_linearizable, check_revision_order,  # noqa: E402
                             check_serializable_reads)
from jepsen.runner import check  # noqa: E402
from jepsen.watchcheck import check_watches  # noqa: E402

FIXTURE = Path(__file__).parent / "jepsen" / "fixtures" / "pgraftd-partition-leader-seed2.json.gz"


class H:
    """Builds a hand-made history: op(kind, t0, t1, ...) with t1=None for an unknown outcome."""

    def __init__(self):
        self.ops = []

    def op(self, kind, t0, t1, key="k", status="ok", **kw):
        args = {k: kw.pop(k) for k in ("value", "expect", "serializable", "lease") if k in kw}
        if status == "ok" and t1 is None:
            status = "unknown"
        o = Op(len(self.ops), f"c{len(self.ops)}", "http", kind, key, args, t0, t1, status, kw)
        self.ops.append(o)
        return o

    def put(self, t0, t1, value, rev=None, key="k"):
        return self.op(PUT, t0, t1, key, value=value, **({"revision": rev} if rev else {}))

    def get(self, t0, t1, value, mod_rev, rev=None, key="k", serializable=False):
        o = Op(len(self.ops), f"c{len(self.ops)}", "http", GET, key,
               {"serializable": serializable}, t0, t1, "ok",
               {"revision": rev or max(mod_rev, 1), "value": value, "mod_revision": mod_rev})
        self.ops.append(o)
        return o


def verdict(ops, **kw):
    return check_linearizable(ops, **kw)["verdict"]


# ------------------------------------------------------------------ linearizability
def test_sequential_put_then_read_is_linearizable():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.get(2, 3, "a", 2, rev=2)
    h.put(4, 5, "b", rev=3)
    h.get(6, 7, "b", 3, rev=3)
    assert verdict(h.ops) == "ok"


def test_read_missing_a_completed_write_is_rejected():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.get(2, 3, None, 0, rev=2)
    r = check_linearizable(h.ops)
    assert r["verdict"] == "violation", r
    assert "cannot take effect" in r["details"][0]


def test_stale_read_after_overwrite_is_rejected():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, 3, "b", rev=3)
    h.get(4, 5, "a", 2, rev=3)
    assert verdict(h.ops) == "violation"


def test_concurrent_read_may_see_old_or_new():
    for seen, mod in (("a", 2), ("b", 3)):
        h = H()
        h.put(0, 1, "a", rev=2)
        h.put(2, 6, "b", rev=3)
        h.get(3, 5, seen, mod, rev=mod)
        assert verdict(h.ops) == "ok", seen


def test_reads_must_not_go_back_in_time():
    """Two reads during one slow write: the first sees it, the second, later one does not."""
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, 10, "b", rev=3)
    h.get(3, 4, "b", 3, rev=3)
    h.get(5, 6, "a", 2, rev=3)
    assert verdict(h.ops) == "violation"


def test_unknown_write_may_take_effect_later_or_never():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, None, "x")            # timed out
    h.get(3, 4, "a", 2, rev=2)     # not yet
    h.get(5, 6, "x", 3, rev=3)     # now
    assert verdict(h.ops) == "ok"
    h2 = H()
    h2.put(0, 1, "a", rev=2)
    h2.put(2, None, "x")
    h2.get(5, 6, "a", 2, rev=2)    # never
    assert verdict(h2.ops) == "ok"


def test_unknown_write_cannot_be_undone():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, None, "x")
    h.get(3, 4, "x", 3, rev=3)
    h.get(5, 6, "a", 2, rev=3)
    assert verdict(h.ops) == "violation"


def test_unknown_write_cannot_take_effect_before_its_invoke():
    h = H()
    h.get(0, 1, "x", 2, rev=2)
    h.put(2, None, "x")
    assert verdict(h.ops) == "violation"


def test_compare_and_set_on_revision():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.op(CAS_REV, 2, 3, value="b", expect=2, revision=3, succeeded=True)
    # a second CAS on the same old revision must fail, and its else branch reads b
    h.op(CAS_REV, 4, 5, value="c", expect=2, revision=3, succeeded=False)
    h.ops[-1].result.update(value="b", mod_revision=3)
    assert verdict(h.ops) == "ok"
    h.ops[-1].result = {"revision": 4, "succeeded": True}
    assert verdict(h.ops) == "violation"


def test_compare_and_set_on_value_and_delete():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.op(CAS_VALUE, 2, 3, value="b", expect="a", revision=3, succeeded=True)
    h.op(DELETE, 4, 5, revision=4, deleted=1)
    h.op(DELETE, 6, 7, revision=4, deleted=0)
    h.get(8, 9, None, 0, rev=4)
    assert verdict(h.ops) == "ok"
    h.ops[3].result["deleted"] = 1   # deleting an absent key cannot delete anything
    assert verdict(h.ops) == "violation"


def test_unknown_cas_branches():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.op(CAS_REV, 2, None, value="b", expect=2)
    h.get(3, 4, "b", 3, rev=3)
    assert verdict(h.ops) == "ok"


def test_unknown_writes_settled_by_the_watch_streams():
    """With streams holding every revision, an unknown write seen in an event took effect at
    that revision, and one never seen did not take effect at all."""
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, None, "x")
    h.put(2, None, "y")
    w = _stream([(2, "PUT", "k", "a"), (3, "PUT", "k", "x")])
    h.get(5, 6, "x", 3, rev=3)
    r = check_linearizable(h.ops, [w], upto=3)
    assert r["verdict"] == "ok", r
    assert (r["stats"]["patched_applied"], r["stats"]["patched_dropped"]) == (1, 1)
    h.ops[-1].result["mod_revision"] = 4          # x is known to be at revision 3
    assert verdict(h.ops, watches=[w], upto=3) == "violation"
    h2 = H()
    h2.put(0, 1, "a", rev=2)
    h2.put(2, None, "y")
    h2.get(5, 6, "y", 3, rev=3)                   # y never took effect: no event carries it
    assert verdict(h2.ops) == "ok"                # without the streams, it may have
    assert verdict(h2.ops, watches=[_stream([(2, "PUT", "k", "a")])], upto=2) == "violation"


def test_search_bound_says_unknown():
    h = H()
    for i in range(12):                 # 12 concurrent unknown puts, then a read of none
        h.put(0, None, f"v{i}")
    h.get(1, 2, "nothing", 7, rev=7)
    r = check_key(h.ops, max_steps=50)
    assert r["verdict"] == "unknown", r


def test_revision_order_across_keys():
    h = H()
    h.put(0, 1, "a", rev=5, key="k1")
    h.get(2, 3, None, 0, rev=4, key="k2")   # a read later than rev 5's ack, at rev 4
    r = check_revision_order(h.ops)
    assert r["verdict"] == "violation", r
    h.ops[-1].result["revision"] = 5
    assert check_revision_order(h.ops)["verdict"] == "ok"


def test_serializable_read_of_a_value_nobody_wrote():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.get(2, 3, "a", 2, serializable=True)
    assert check_serializable_reads(h.ops)["verdict"] == "ok"
    h.get(4, 5, "zzz", 9, serializable=True)
    assert check_serializable_reads(h.ops)["verdict"] == "violation"


# -------------------------------------------------------------------------- watch
def _stream(events, start=2, name="w"):
    w = WatchStream(name, "http", "k", start, True)
    prev = {}
    for rev, typ, key, value in events:
        p = prev.get(key)
        w.events.append(Event(name, rev, typ, key, value, p[0] if p else None,
                              p[1] if p else None, float(rev)))
        prev[key] = (value, rev) if typ == "PUT" else None
    return w


def _watched_history():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, 3, "b", rev=3, key="j")
    h.op(DELETE, 4, 5, revision=4, deleted=1)
    h.put(6, 7, "c", rev=5)
    evs = [(2, "PUT", "k", "a"), (3, "PUT", "j", "b"), (4, "DELETE", "k", None),
           (5, "PUT", "k", "c")]
    return h, evs


def test_watch_complete_stream_passes():
    h, evs = _watched_history()
    r = check_watches([_stream(evs)], h.ops, upto=5, first_revision=2)
    assert r["verdict"] == "ok", r


def test_watch_dropped_event_is_caught():
    h, evs = _watched_history()
    w = _stream(evs)
    del w.events[1]
    r = check_watches([w], h.ops, upto=5, first_revision=2)
    assert r["verdict"] == "violation"
    assert any("missing" in d for d in r["details"]), r


def test_watch_duplicated_and_reordered_events_are_caught():
    h, evs = _watched_history()
    w = _stream(evs)
    w.events.insert(2, copy.copy(w.events[1]))
    r = check_watches([w], h.ops, upto=5, first_revision=2)
    assert any("duplicate" in d for d in r["details"]), r
    w = _stream(evs)
    w.events[1], w.events[2] = w.events[2], w.events[1]
    r = check_watches([w], h.ops, upto=5, first_revision=2)
    assert r["verdict"] == "violation", r


def test_watch_wrong_prev_kv_is_caught():
    h, evs = _watched_history()
    w = _stream(evs)
    w.events[3].prev_value = "a"       # after the delete, there is no previous value
    w.events[3].prev_mod_revision = 2
    r = check_watches([w], h.ops, upto=5, first_revision=2)
    assert any("prev_kv" in d for d in r["details"]), r


def test_watch_that_stopped_short_is_caught():
    h, evs = _watched_history()
    r = check_watches([_stream(evs[:3])], h.ops, upto=5, first_revision=2)
    assert any("stopped at revision 4" in d for d in r["details"]), r


# ------------------------------------------------------------------ lease, durability
def _lease_history(read_at):
    h = H()
    h.op(LEASE_GRANT, 0, 0.1, key=None, lease=0, ttl=2)
    h.ops[-1].result = {"lease": 7, "ttl": 2}
    h.op(PUT, 0.2, 0.3, value="lv", lease=7, revision=2)
    h.get(read_at, read_at + 0.1, "lv", 2, rev=2)
    return h


def test_lease_key_outliving_its_ttl_is_caught():
    assert check_leases(_lease_history(1.5).ops, [], 1.0)["verdict"] == "ok"
    r = check_leases(_lease_history(6.0).ops, [], 1.0)
    assert r["verdict"] == "violation" and "outlived" in r["details"][0], r
    # a fault during the TTL gives a new leader time to take the expiry over
    f = Fault("pause-leader", "m1", 0.5, 3.5, True)
    assert check_leases(_lease_history(6.0).ops, [f], 1.0)["verdict"] == "ok"


def test_lease_expiring_early_is_caught():
    h = _lease_history(1.0)
    h.ops[-1].result.update(value=None, mod_revision=0)
    r = check_leases(h.ops, [], 1.0)
    assert r["verdict"] == "violation" and "early" in r["details"][0], r


def test_durability():
    h = H()
    h.put(0, 1, "a", rev=2)
    h.put(2, 3, "b", rev=3, key="j")
    h.op(DELETE, 4, 5, key="j", revision=4, deleted=1)
    final = {"revision": 4, "kvs": {"k": ["a", 2]}}
    assert check_durability(h.ops, final)["verdict"] == "ok"
    lost = {"revision": 4, "kvs": {}}
    assert check_durability(h.ops, lost)["verdict"] == "violation"
    back = {"revision": 4, "kvs": {"k": ["a", 2], "j": ["b", 3]}}
    assert check_durability(h.ops, back)["verdict"] == "violation"


# ------------------------------------------------------- a recorded real history
@pytest.fixture
def real() -> History:
    """A fresh copy per test (the tests change it)."""
    return History.from_json(gzip.decompress(FIXTURE.read_bytes()).decode())


def test_recorded_history_passes(real):
    v = check(real, real.meta["election_ms"] / 1000)
    assert all(x["verdict"] == "ok" for x in v.values()), v
    assert v["linearizable"]["stats"]["ops"] > 500


def test_recorded_history_with_a_stale_read_is_caught(real):
    """Flip one linearizable read to an older value of its key, as a follower serving reads
    from its own state would: the write the read saw had completed before the read began."""
    h = real
    kv = set(h.meta["kv_keys"])
    writes = {}
    for o in h.ops:
        if o.key in kv and o.status == "ok" and o.kind in (PUT, CAS_REV, CAS_VALUE) and (
                o.kind == PUT or o.result.get("succeeded")):
            writes[(o.key, o.result["revision"])] = o
    for r in h.ops:
        if r.kind != GET or r.status != "ok" or r.args.get("serializable") or r.key not in kv:
            continue
        w = writes.get((r.key, r.result["mod_revision"]))
        older = [x for (k, rev), x in writes.items()
                 if k == r.key and rev < r.result["mod_revision"]]
        if w is not None and w.complete < r.invoke and older:
            stale = max(older, key=lambda x: x.result["revision"])
            r.result.update(value=stale.args["value"], mod_revision=stale.result["revision"])
            break
    else:
        pytest.fail("no read to flip in the fixture")
    v = check(h, 1.0)
    assert v["linearizable"]["verdict"] == "violation", v["linearizable"]
    assert f"#{r.id} " in "\n".join(v["linearizable"]["details"])


def test_recorded_history_with_a_dropped_watch_event_is_caught(real):
    h = real
    del h.watches[0].events[len(h.watches[0].events) // 2]
    assert check(h, 1.0)["watch"]["verdict"] == "violation"


def test_recorded_history_with_a_lost_write_is_caught(real):
    h = real
    acked_puts = {(o.key, o.result["revision"]) for o in h.ops
                  if o.kind == PUT and o.status == "ok"}
    unsure = {o.key for o in h.ops if o.kind == DELETE and o.status != "ok"}
    key = next(k for k in sorted(h.meta["kv_keys"]) if k in h.final["kvs"] and k not in unsure
               and (k, h.final["kvs"][k][1]) in acked_puts)
    del h.final["kvs"][key]
    v = check(h, 1.0)
    assert v["durability"]["verdict"] == "violation", v["durability"]
    assert key in v["durability"]["details"][0]
    # the final read is also part of the linearizability check
    assert v["linearizable"]["verdict"] == "violation", v["linearizable"]
