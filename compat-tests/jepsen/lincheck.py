"""Linearizability of the KV operations, checked per key (a key's register is independent of the
others in etcd's model, so the history splits by key: P-compositionality), with a Wing-Gong /
Lowe search as porcupine does it: linearize a pending call whose invoke is before every
pending return, backtrack at a return that was not linearized yet, and memoise each visited
(set of linearized operations, state) so no state is explored twice. The search stops after
`max_steps` and says "unknown" rather than hanging.

Operations whose outcome is unknown return at infinity: they may take effect at any point after
their invoke, or never (linearized at the very end, where nothing observes them). Before the
search, `patch_unknown_writes` uses the watch streams, which carry every revision of the run's
prefix, to settle them as etcd's robustness tests do: a write whose unique value shows up in an
event took effect at that event's revision; one whose value never shows up, when the streams
hold every revision, never took effect and is dropped.

The state of a key is (value or None, mod_revision): 0 when absent, -1 when not known (after a
write with unknown outcome, until a read shows it). Also here: `check_revision_order` (header
revisions never go back across real time, and every write moves the revision) and
`check_serializable_reads` (a serializable read returns some value the key really had).
"""

from __future__ import annotations

import math
from collections import defaultdict

from .history import CAS_REV, CAS_VALUE, DELETE, GET, PUT, WRITES, Op

UNKNOWN_REV = -1


def _verdict(verdict: str, details=None, **stats) -> dict:
    return {"verdict": verdict, "details": list(details or []), "stats": stats}


def describe(op: Op) -> str:
    t1 = "inf" if op.complete is None else f"{op.complete:.3f}"
    return (f"#{op.id} {op.client}/{op.face}@{op.member or '?'} {op.kind}({op.key!r}, "
            f"{op.args}) [{op.invoke:.3f}, {t1}] {op.status} {op.result}")


# ------------------------------------------------------------------------------- model
def _cond(state, op: Op) -> set:
    """The possible truth values of a CAS op's compare in `state`."""
    value, rev = state
    if op.kind == CAS_REV:
        if rev == UNKNOWN_REV and value is not None:
            return {True, False}
        return {rev == op.args["expect"]}
    return {value is not None and value == op.args["expect"]}


def _newer(state, revision) -> bool:
    """A write at `revision` can follow `state` (per key, mod revisions only grow)."""
    return state[1] == UNKNOWN_REV or state[1] < revision


def step(state, op: Op) -> list:
    """The states `op` may leave behind when it takes effect in `state`; [] if it cannot."""
    value, rev = state
    res = op.result
    known = op.status == "ok" or res.get("patched")
    if op.kind == PUT:
        if not known:
            return [(op.args["value"], UNKNOWN_REV)]
        r = res["revision"]
        return [(op.args["value"], r)] if _newer(state, r) else []
    if op.kind == DELETE:
        if op.status != "ok":
            return [(None, 0)]
        if value is None:
            return [state] if res.get("deleted") == 0 else []
        return [(None, 0)] if res.get("deleted") == 1 and _newer(state, res["revision"]) else []
    if op.kind == GET:
        got_v, got_rev = res.get("value"), res.get("mod_revision") or 0
        if got_v != value:
            return []
        if rev == UNKNOWN_REV:
            return [(value, got_rev)]
        return [state] if rev == got_rev else []
    if op.kind in (CAS_REV, CAS_VALUE):
        conds = _cond(state, op)
        if not known:
            out = []
            if True in conds:
                out.append((op.args["value"], UNKNOWN_REV))
            if False in conds:
                out.append(state)
            return out
        if res.get("succeeded"):
            if True not in conds or not _newer(state, res["revision"]):
                return []
            return [(op.args["value"], res["revision"])]
        if False not in conds:
            return []
        # the else branch read the key
        got_v, got_rev = res.get("value"), res.get("mod_revision") or 0
        if got_v != value or (rev != UNKNOWN_REV and rev != got_rev):
            return []
        if op.kind == CAS_REV and got_rev == op.args["expect"]:
            return []
        return [(value, got_rev)]
    raise ValueError(f"not a KV op: {op.kind}")


# ------------------------------------------------------------------- history patching
def revision_truth(watches, upto: int | None = None) -> tuple[dict, bool]:
    """({revision: {key: (type, value)}}, complete) from all watch streams. `complete` when
    some stream's revisions run without a hole from its start to `upto` (default: the highest
    revision any stream saw). The streams watch the run's whole prefix, where every revision
    of the run lands, so a complete stream saw every write that took effect."""
    truth: dict = {}
    for w in watches:
        for e in w.events:
            truth.setdefault(e.revision, {})[e.key] = (e.type, e.value)
    top = upto if upto is not None else (max(truth) if truth else 0)
    complete = False
    for w in watches:
        revs = {e.revision for e in w.events}
        if revs and all(r in revs for r in range(w.start_revision, top + 1)):
            complete = True
    return truth, complete


def patch_unknown_writes(ops: list, watches, upto: int | None = None) -> tuple[list, dict]:
    """Returns (ops to check, stats): unknown puts/CAS settled from the watch streams."""
    truth, complete = revision_truth(watches, upto)
    by_value = {}
    for rev, evs in truth.items():
        for key, (typ, value) in evs.items():
            if typ == "PUT" and value is not None:
                by_value[(key, value)] = rev
    stats = {"unknown_writes": 0, "patched_applied": 0, "patched_dropped": 0,
             "watch_truth_complete": complete}
    out = []
    for op in ops:
        if op.status == "unknown" and op.kind in (PUT, CAS_REV, CAS_VALUE):
            stats["unknown_writes"] += 1
            rev = by_value.get((op.key, op.args["value"]))
            if rev is not None:
                op = Op(**{**op.__dict__, "result": {"revision": rev, "succeeded": True,
                                                      "patched": True}})
                stats["patched_applied"] += 1
            elif complete:
                stats["patched_dropped"] += 1
                continue
        out.append(op)
    return out, stats


# ---------------------------------------------------------------------------- search
class _Node:
    __slots__ = ("op", "bit", "call", "match", "prev", "next")

    def __init__(self, op, bit, call):
        self.op, self.bit, self.call = op, bit, call
        self.match = self.prev = self.next = None


def _lift(n: _Node) -> None:
    n.prev.next = n.next
    if n.next is not None:
        n.next.prev = n.prev
    m = n.match
    m.prev.next = m.next
    if m.next is not None:
        m.next.prev = m.prev


def _unlift(n: _Node) -> None:
    m = n.match
    m.prev.next = m
    if m.next is not None:
        m.next.prev = m
    n.prev.next = n
    if n.next is not None:
        n.next.prev = n


def check_key(ops: list, init=(None, 0), max_steps: int = 200_000) -> dict:
    """Wing-Gong search over one key's operations."""
    events = []
    for i, op in enumerate(ops):
        call, ret = _Node(op, 1 << i, True), _Node(op, 1 << i, False)
        call.match = ret
        ret.match = call
        t1 = math.inf if op.complete is None or op.status != "ok" else op.complete
        events.append((op.invoke, 0, i, call))
        events.append((t1, 1, i, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Node(None, 0, False)
    prev = head
    for _, _, _, n in events:
        prev.next = n
        n.prev = prev
        prev = n
    state, linearized = init, 0
    stack: list = []
    cache = set()
    steps = 0
    best = (-1, None, [], init)  # (depth, op that could not go next, ops before it, state)
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            return _verdict("unknown", [f"search gave up after {max_steps} steps"],
                            ops=len(ops), steps=steps)
        if entry.call:
            alts = step(state, entry.op)
            if not _try(entry, alts, 0, state, linearized, cache, stack):
                entry = entry.next
                continue
            state, linearized = stack[-1][4], linearized | entry.bit
            entry = head.next
            continue
        # a return whose call is not linearized yet: backtrack
        if len(stack) > best[0]:
            best = (len(stack), entry.op, [s[0].op for s in stack[-6:]], state)
        if not stack:
            _, op, before, st = best
            return _verdict("violation", [
                f"no linearization: at most {best[0]} of {len(ops)} ops ordered; "
                f"then {describe(op)} cannot take effect in state {st}",
                *[f"  after {describe(o)}" for o in before]], ops=len(ops), steps=steps)
        # undo the last linearized call; try its next possible outcome, else move past it
        e, st, alts, i, _ = stack.pop()
        linearized &= ~e.bit
        _unlift(e)
        state = st
        if _try(e, alts, i + 1, st, linearized, cache, stack):
            state, linearized = stack[-1][4], linearized | e.bit
            entry = head.next
        else:
            entry = e.next
    return _verdict("ok", ops=len(ops), steps=steps)


def _try(entry, alts, start, state, linearized, cache, stack) -> bool:
    lin = linearized | entry.bit
    for j in range(start, len(alts)):
        key = (lin, alts[j])
        if key in cache:
            continue
        cache.add(key)
        stack.append((entry, state, alts, j, alts[j]))
        _lift(entry)
        return True
    return False


def check_linearizable(ops: list, watches=(), max_steps: int = 200_000,
                       upto: int | None = None) -> dict:
    """Linearizability of every key's history (linearizable gets and writes; serializable
    gets and failed reads are left out)."""
    kv = [o for o in ops if (o.kind in WRITES and o.status != "fail")
          or (o.kind == GET and o.status == "ok" and not o.args.get("serializable"))]
    kv, pstats = patch_unknown_writes(kv, watches, upto)
    per_key = defaultdict(list)
    for o in kv:
        per_key[o.key].append(o)
    details, unknown, steps = [], [], 0
    for key in sorted(per_key):
        r = check_key(per_key[key], max_steps=max_steps)
        steps += r["stats"].get("steps", 0)
        if r["verdict"] == "violation":
            details.append(f"key {key!r}: " + "\n".join(r["details"]))
        elif r["verdict"] == "unknown":
            unknown.append(key)
    verdict = "violation" if details else ("unknown" if unknown else "ok")
    if unknown:
        details.append(f"search bound hit for keys {unknown}")
    return _verdict(verdict, details, ops=len(kv), keys=len(per_key), steps=steps, **pstats)


# --------------------------------------------------------------- cross-key, cheap checks
def _moves_revision(op: Op) -> bool:
    if op.kind == PUT:
        return True
    if op.kind == DELETE:
        return op.result.get("deleted", 0) > 0
    if op.kind in (CAS_REV, CAS_VALUE):
        return bool(op.result.get("succeeded"))
    return False


def check_revision_order(ops: list) -> dict:
    """Across all keys: if A completed before B was invoked, B's header revision is at least
    A's, and more than A's when B wrote something (linearizable ops only)."""
    done = [o for o in ops if o.status == "ok" and o.kind in (PUT, DELETE, GET, CAS_REV,
                                                               CAS_VALUE)
            and not o.args.get("serializable") and "revision" in o.result]
    by_invoke = sorted(done, key=lambda o: o.invoke)
    by_complete = sorted(done, key=lambda o: o.complete)
    details = []
    best_rev, best_op, j = 0, None, 0
    for b in by_invoke:
        while j < len(by_complete) and by_complete[j].complete < b.invoke:
            a = by_complete[j]
            if a.result["revision"] > best_rev:
                best_rev, best_op = a.result["revision"], a
            j += 1
        r = b.result["revision"]
        if r < best_rev or (_moves_revision(b) and r == best_rev):
            details.append(f"revision went back: {describe(b)} began after {describe(best_op)}"
                           f" had completed")
    writes = [o.result["revision"] for o in done if _moves_revision(o)]
    dup = len(writes) - len(set(writes))
    if dup:
        details.append(f"{dup} writes share a revision with another write")
    return _verdict("violation" if details else "ok", details[:10], ops=len(done))


def check_serializable_reads(ops: list) -> dict:
    """A serializable read may be stale, but what it returns must be a value some write put
    there (invoked before the read completed), at that write's revision when it is known."""
    writes = {}
    for o in ops:
        if o.kind in (PUT, CAS_REV, CAS_VALUE):
            writes[(o.key, o.args["value"])] = o
    details, n = [], 0
    for o in ops:
        if o.kind != GET or o.status != "ok" or not o.args.get("serializable"):
            continue
        n += 1
        v = o.result.get("value")
        if v is None:
            continue
        w = writes.get((o.key, v))
        if w is None or w.invoke > o.complete:
            details.append(f"read a value nobody wrote (yet): {describe(o)}")
        elif w.status == "ok" and "revision" in w.result and (
                not _is_cas_fail(w)) and w.result["revision"] != o.result.get("mod_revision"):
            details.append(f"read {v!r} at mod_revision {o.result.get('mod_revision')}, written "
                           f"at {w.result['revision']}: {describe(o)}")
    return _verdict("violation" if details else "ok", details[:10], reads=n)


def _is_cas_fail(w: Op) -> bool:
    return w.kind in (CAS_REV, CAS_VALUE) and not w.result.get("succeeded")


__all__ = ["check_linearizable", "check_key", "check_revision_order",
           "check_serializable_reads", "patch_unknown_writes", "revision_truth", "step",
           "describe"]
