"""The recorded history of one run: every client operation with its invoke and complete times
(time.monotonic), what it asked and what it got, and the watch events each watcher received.

An operation's `status` is "ok" (a definite answer from the server), "fail" (a definite error
that changed nothing: only reads use it) or "unknown" (a timeout or a broken connection on a
write: it may have taken effect at any time after its invoke, or never).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field

# Operation kinds. Every write carries a unique value, so a value read back names its write.
PUT = "put"                # args: value, lease (0 = none)   result: revision
DELETE = "delete"          # args: -                         result: revision, deleted
GET = "get"                # args: serializable (bool)       result: revision, value, mod_revision
CAS_REV = "cas_rev"        # txn: if mod_revision(key) == args.expect then put(value) else get
CAS_VALUE = "cas_value"    # txn: if value(key) == args.expect then put(value) else get
#                            result: revision, succeeded, and on failure value, mod_revision
LEASE_GRANT = "lease_grant"          # args: ttl            result: lease, ttl
LEASE_KEEPALIVE = "lease_keepalive"  # args: lease          result: ttl (0 = lease not found)
WRITES = (PUT, DELETE, CAS_REV, CAS_VALUE)
KV_KINDS = (PUT, DELETE, GET, CAS_REV, CAS_VALUE)


@dataclass
class Op:
    id: int
    client: str
    face: str          # "grpc" or "http"
    kind: str
    key: str | None
    args: dict
    invoke: float
    complete: float | None = None
    status: str = "unknown"
    result: dict = field(default_factory=dict)
    member: str = ""

    def done(self) -> bool:
        return self.status in ("ok", "fail")


@dataclass
class Event:
    """One watch event as a watcher received it."""
    watcher: str
    revision: int      # the event's kv.mod_revision
    type: str          # "PUT" or "DELETE"
    key: str
    value: str | None
    prev_value: str | None
    prev_mod_revision: int | None
    received: float


@dataclass
class WatchStream:
    """One watcher: the key prefix it watched, the revision it asked to start at, every event
    in arrival order, and its (re)connections as (time, start revision, member)."""
    name: str
    face: str
    prefix: str
    start_revision: int
    prev_kv: bool
    events: list = field(default_factory=list)
    connects: list = field(default_factory=list)
    errors: list = field(default_factory=list)


@dataclass
class Fault:
    name: str
    target: str = ""
    start: float = 0.0
    end: float = 0.0
    affects_leader: bool = False
    notes: str = ""


class History:
    """Thread-safe recorder; `to_json` / `from_json` keep a history for later checking."""

    def __init__(self):
        self.ops: list[Op] = []
        self.watches: list[WatchStream] = []
        self.faults: list[Fault] = []
        self.final: dict | None = None   # {"revision": R, "kvs": {key: [value, mod_revision]}}
        self.meta: dict = {}
        self._lock = threading.Lock()

    def invoke(self, client: str, face: str, kind: str, key: str | None, member: str = "",
               **args) -> Op:
        with self._lock:
            op = Op(len(self.ops), client, face, kind, key, args, time.monotonic(),
                    member=member)
            self.ops.append(op)
        return op

    @staticmethod
    def complete(op: Op, status: str, **result) -> Op:
        op.complete = time.monotonic()
        op.status = status
        op.result = result
        return op

    def watch(self, stream: WatchStream) -> WatchStream:
        with self._lock:
            self.watches.append(stream)
        return stream

    def kv_ops(self) -> list[Op]:
        return [o for o in self.ops if o.kind in KV_KINDS]

    def to_json(self) -> str:
        return json.dumps({
            "meta": self.meta,
            "ops": [asdict(o) for o in self.ops],
            "watches": [asdict(w) for w in self.watches],
            "faults": [asdict(f) for f in self.faults],
            "final": self.final,
        })

    @classmethod
    def from_json(cls, text: str) -> "History":
        d = json.loads(text)
        h = cls()
        h.meta = d.get("meta") or {}
        h.ops = [Op(**o) for o in d["ops"]]
        for w in d.get("watches") or []:
            evs = [Event(**e) for e in w.pop("events")]
            h.watches.append(WatchStream(**w, events=evs))
        h.faults = [Fault(**f) for f in d.get("faults") or []]
        h.final = d.get("final")
        return h
