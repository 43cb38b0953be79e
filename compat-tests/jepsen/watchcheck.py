"""Watch guarantees over the recorded streams. Every stream watches the run's whole key prefix
from a revision before the run's first write, and every write of the run lands in that prefix,
so each stream must carry every revision from its start on, exactly once and in order. Checked
per stream: order, no duplicate, no hole (also across its reconnects, which resume from the
last revision seen), every acknowledged write present with its key and value, no event for a
value nobody wrote, `prev_kv` equal to the key's previous event in the stream, and that the
stream caught up to the run's last revision. Across streams: the same revision carries the same
events everywhere.
"""

from __future__ import annotations

from .history import CAS_REV, CAS_VALUE, DELETE, PUT
from .lincheck import _verdict, describe


def _acked_writes(ops) -> dict:
    """{revision: (type, key, value, op)} of writes the server acknowledged with a revision."""
    out = {}
    for o in ops:
        if o.status != "ok":
            continue
        if o.kind == PUT or (o.kind in (CAS_REV, CAS_VALUE) and o.result.get("succeeded")):
            out[o.result["revision"]] = ("PUT", o.key, o.args["value"], o)
        elif o.kind == DELETE and o.result.get("deleted", 0) > 0:
            out[o.result["revision"]] = ("DELETE", o.key, None, o)
    return out


def check_stream(w, ops, upto: int | None, first_revision: int | None) -> list[str]:
    problems = []
    written = {}
    for o in ops:
        if o.kind in (PUT, CAS_REV, CAS_VALUE):
            written[(o.key, o.args["value"])] = o
    seen = set()
    last_rev = None
    last_by_key: dict = {}
    whole = first_revision is not None and w.start_revision <= first_revision
    for e in w.events:
        if last_rev is not None and e.revision < last_rev:
            problems.append(f"{w.name}: revision {e.revision} ({e.key}) after {last_rev}")
        if (e.revision, e.key) in seen:
            problems.append(f"{w.name}: duplicate event {e.type} {e.key} at {e.revision}")
        seen.add((e.revision, e.key))
        if e.type == "PUT":
            op = written.get((e.key, e.value))
            if op is None:
                problems.append(f"{w.name}: event for a value nobody wrote: {e.key}={e.value!r} "
                                f"at {e.revision}")
            elif op.status == "ok" and op.result.get("revision") not in (None, e.revision) and \
                    (op.kind == PUT or op.result.get("succeeded")):
                problems.append(f"{w.name}: {e.key}={e.value!r} at {e.revision}, but the write "
                                f"was acknowledged at {op.result['revision']}: {describe(op)}")
        if w.prev_kv and whole:
            prev = last_by_key.get(e.key)
            want = (prev.value, prev.revision) if prev is not None and prev.type == "PUT" \
                else (None, None)
            got = (e.prev_value, e.prev_mod_revision)
            if got != want:
                problems.append(f"{w.name}: prev_kv of {e.type} {e.key} at {e.revision} is "
                                f"{got}, the key's previous event says {want}")
        last_by_key[e.key] = e
        last_rev = max(e.revision, last_rev or 0)
    revs = {e.revision for e in w.events}
    top = max(revs) if revs else w.start_revision - 1
    holes = [r for r in range(w.start_revision, top + 1) if r not in revs]
    if holes:
        problems.append(f"{w.name}: {len(holes)} revisions missing between {w.start_revision} "
                        f"and {top}: {holes[:10]}")
    if upto is not None and top < upto:
        problems.append(f"{w.name}: stopped at revision {top}, the run ended at {upto}")
    for rev, (typ, key, value, op) in _acked_writes(ops).items():
        if w.start_revision <= rev <= top and (rev, key) not in seen:
            problems.append(f"{w.name}: acknowledged write missing: {describe(op)}")
    return problems


def check_watches(watches, ops, upto: int | None = None,
                  first_revision: int | None = None) -> dict:
    details = []
    for w in watches:
        details += check_stream(w, ops, upto, first_revision)
    agreed: dict = {}
    for w in watches:
        for e in w.events:
            k = (e.revision, e.key)
            v = (e.type, e.value)
            if k in agreed and agreed[k][0] != v:
                details.append(f"{w.name} and {agreed[k][1]} disagree on {e.key} at "
                               f"{e.revision}: {v} vs {agreed[k][0]}")
            agreed.setdefault(k, (v, w.name))
    events = sum(len(w.events) for w in watches)
    return _verdict("violation" if details else "ok", details[:20], streams=len(watches),
                    events=events, reconnects=sum(max(0, len(w.connects) - 1)
                                                  for w in watches))
