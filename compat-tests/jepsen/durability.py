"""Durability: after every member was killed and restarted, a linearizable read of the run's
prefix still holds every acknowledged write, unless a later write to the same key replaced it
(the acknowledged write with the highest revision decides what each key must show)."""

from __future__ import annotations

from .history import CAS_REV, CAS_VALUE, DELETE, PUT
from .lincheck import _verdict, describe


def check_durability(ops, final: dict | None, keys=None) -> dict:
    if final is None:
        return _verdict("unknown", ["no final read after the restart"])
    kvs = final["kvs"]
    last: dict = {}
    unknown_deletes = set()
    top = 0
    for o in ops:
        if o.kind == DELETE and o.status == "unknown":
            unknown_deletes.add(o.key)
        if o.status != "ok" or o.kind not in (PUT, DELETE, CAS_REV, CAS_VALUE):
            continue
        if o.kind in (CAS_REV, CAS_VALUE) and not o.result.get("succeeded"):
            continue
        if o.kind == DELETE and not o.result.get("deleted"):
            continue
        if keys is not None and o.key not in keys:
            continue
        r = o.result["revision"]
        top = max(top, r)
        if o.key not in last or last[o.key].result["revision"] < r:
            last[o.key] = o
    details = []
    if final["revision"] < top:
        details.append(f"revision after restart {final['revision']} < highest acknowledged "
                       f"write's {top}")
    for key, o in sorted(last.items()):
        got = kvs.get(key)
        r = o.result["revision"]
        if o.kind == DELETE:
            if got is not None and got[1] <= r:
                details.append(f"deleted key is back: {key}={got} after {describe(o)}")
            continue
        if got is None:
            if key not in unknown_deletes:
                details.append(f"acknowledged write lost: {describe(o)}; key absent")
        elif got[1] < r or (got[1] == r and got[0] != o.args["value"]):
            details.append(f"acknowledged write lost: {describe(o)}; key is {got}")
    return _verdict("violation" if details else "ok", details[:10], keys=len(last),
                    final_revision=final["revision"])
