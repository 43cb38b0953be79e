"""Lease guarantees: a key put with a lease is gone once the lease's TTL has passed since its
last renewal (plus an election timeout, the time a new leader may need to take over the
expiry), and is not gone before the TTL since a renewal that was acknowledged.

The last renewal is the latest acknowledged grant or keepalive; a keepalive with unknown
outcome may have been processed later (a paused member may pass it on when it resumes), so its
time counts up to the end of any fault it overlapped. A fault during the TTL window adds its
duration, one more TTL and election timeout: a new leader restarts every lease's TTL when it
takes over, as etcd does. `slack` covers timer granularity and a busy machine.
"""

from __future__ import annotations

from .history import GET, LEASE_GRANT, LEASE_KEEPALIVE, PUT
from .lincheck import _verdict, describe


def check_leases(ops, faults, election_s: float, slack: float = 1.0,
                 early_slack: float = 0.1) -> dict:
    grants = {o.result["lease"]: o for o in ops
              if o.kind == LEASE_GRANT and o.status == "ok"}
    keepalives: dict = {}
    for o in ops:
        if o.kind == LEASE_KEEPALIVE:
            keepalives.setdefault(o.args["lease"], []).append(o)
    reads: dict = {}
    for o in ops:
        if o.kind == GET and o.status == "ok" and not o.args.get("serializable"):
            reads.setdefault(o.key, []).append(o)
    details, checked, expired_seen = [], 0, 0
    for put in ops:
        lease = put.args.get("lease") if put.kind == PUT else None
        if not lease or put.status != "ok" or lease not in grants:
            continue
        grant = grants[lease]
        ttl = grant.result["ttl"]
        kas = keepalives.get(lease, [])
        renewed_ok = [grant] + [k for k in kas if k.status == "ok" and k.result.get("ttl", 0) > 0]
        last = max(k.complete for k in renewed_ok)
        for k in kas:
            if k.status == "unknown":
                t = k.complete or k.invoke
                for f in faults:
                    if f.start <= t and f.end >= k.invoke:
                        t = max(t, f.end)
                last = max(last, t)
        deadline = last + ttl + election_s + slack
        for f in faults:
            if f.start <= deadline and f.end >= last:
                deadline += (f.end - f.start) + ttl + election_s
        checked += 1
        for r in reads.get(put.key, []):
            present = r.result.get("value") == put.args["value"]
            if present and r.invoke > deadline:
                details.append(f"key outlived its lease {lease:x} (TTL {ttl}s, last renewal at "
                               f"{last:.3f}, deadline {deadline:.3f}): {describe(r)}")
            if not present and r.invoke > put.complete:
                expired_seen += 1
                floor = max((k.invoke for k in renewed_ok if k.invoke < r.complete),
                            default=None)
                if floor is not None and r.complete < floor + ttl - early_slack:
                    details.append(f"lease {lease:x} (TTL {ttl}s) expired early: renewed at "
                                   f"{floor:.3f}, key gone for {describe(r)}")
    return _verdict("violation" if details else "ok", details[:10], leased_keys=checked,
                    expiries_observed=expired_seen)
