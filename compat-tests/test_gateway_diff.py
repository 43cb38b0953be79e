"""Differential test of the HTTP/JSON gateway and the plain HTTP endpoints: one scripted
session of raw HTTP/1.1 requests (every shape Patroni sends, the shapes of etcd's own gateway
docs, errors, streams) runs against real etcd 3.4.23 (the reference) and against pgraftd, each
on a fresh data dir. Every step's answer is recorded (status, a few headers, the body as JSON
or text; for streams every chunk and whether each chunk is exactly one JSON line), masked (IDs,
raft term and index, URLs, db size, remaining TTLs), and compared exactly, except for the
differences listed in KNOWN below: each is intended, explained there, and applied only to the
steps that name it. One pytest item per step.

COMPAT_REFERENCE_ONLY=1 runs etcd as the candidate too (checks the script and the masking);
the KNOWN allowances then do not apply.
"""

from __future__ import annotations

import base64
import difflib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from conftest import candidate_kind, session_cache
from harness import Server

TTL_TOLERANCE = 2  # seconds
IO_TIMEOUT = 10.0


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# --------------------------------------------------------------------------- raw HTTP/1.1
@dataclass
class Answer:
    status: int
    headers: dict            # lower-case name -> value
    body: bytes = b""        # unary: the whole body
    chunks: list = field(default_factory=list)  # streams: each chunk's payload
    ended: bool = True       # a stream ended by the server (not cut by us)


class Conn:
    """One HTTP/1.1 request on its own connection, reading the response framing by hand."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, method: str, path: str, body: bytes | None, headers: dict | None = None):
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1", "Connection: close"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not data:
            raise EOFError("connection closed")
        self.buf += data
        return True

    def _until(self, delim: bytes, deadline: float) -> bytes | None:
        while delim not in self.buf:
            if not self._fill(deadline):
                return None
        i = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def head(self, deadline: float) -> tuple[int, dict]:
        raw = self._until(b"\r\n\r\n", deadline)
        if raw is None:
            raise TimeoutError("no response head")
        lines = raw.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return status, headers

    def chunk(self, deadline: float) -> bytes | None:
        """The next chunk's payload; b"" for the last chunk; None if none came in time."""
        line = self._until(b"\r\n", deadline)
        if line is None:
            return None
        size = int(line.strip().split(b";")[0], 16)
        while len(self.buf) < size + 2:
            if not self._fill(deadline):
                raise TimeoutError("chunk cut short")
        data, self.buf = self.buf[:size], self.buf[size + 2:]
        return data

    def body(self, headers: dict, deadline: float) -> bytes:
        if headers.get("transfer-encoding") == "chunked":
            out = b""
            while True:
                c = self.chunk(deadline)
                if c is None:
                    raise TimeoutError("chunked body not finished")
                if c == b"":
                    return out
                out += c
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise TimeoutError("body cut short")
        return self.buf[:n]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def encode_body(body) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, (bytes, str)):
        return body if isinstance(body, bytes) else body.encode()
    return json.dumps(body).encode()


def request(port, method, path, body=None, headers=None) -> Answer:
    c = Conn(port)
    try:
        c.send(method, path, encode_body(body), {"Content-Type": "application/json", **(headers or {})})
        deadline = time.monotonic() + IO_TIMEOUT
        status, h = c.head(deadline)
        return Answer(status, h, c.body(h, deadline))
    finally:
        c.close()


# --------------------------------------------------------------------------- the session DSL
@dataclass
class Step:
    name: str
    method: str = "POST"
    path: str = ""
    body: object = None                 # dict/list (JSON), str/bytes (raw), or callable(vars)
    stream: bool = False                # read the answer chunk by chunk
    lines: int | None = None            # stream: stop after this many chunks (else: its end)
    during: Callable | None = None      # stream: run(port, vars) after the first chunk
    capture: Callable | None = None     # capture(json_body, vars)
    known: tuple = ()                   # names of KNOWN differences that apply to this step
    expect_status: int = 200            # the reference's status (checks the script itself)


STEPS: list[Step] = []


def step(name, path, body=None, **kw):
    assert all(s.name != name for s in STEPS), name
    STEPS.append(Step(name, path=path, body=body, **kw))


def cap(var, path):
    """capture: vars[var] = the value at `path` (a list of keys/indexes) of the JSON answer."""
    def c(obj, vars):
        for p in path:
            obj = obj[p]
        vars[var] = obj
    return c


def V(f):
    """A body computed from captured variables when the step runs."""
    return f


# ---- version, discovery -------------------------------------------------------------------------
# Patroni's GET /version carries a `{}` body.
step("version_get_with_body", "/version", {}, method="GET", known=("version",))
step("version_post", "/version", {}, expect_status=405)
step("member_list", "/v3/cluster/member/list", {})

# ---- KV -------------------------------------------------------------------------------------------
step("put_foo", "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")})
step("put_foo_prev_kv", "/v3/kv/put", {"key": b64("foo"), "value": b64("baz"), "prev_kv": True})
step("range_foo", "/v3/kv/range", {"key": b64("foo")})
step("range_all_count_only", "/v3/kv/range", {"key": "AA==", "range_end": "AA==", "count_only": True})
step("range_missing", "/v3/kv/range", {"key": b64("none")})
step("range_empty_body", "/v3/kv/range", b"", expect_status=400)
step("range_empty_object", "/v3/kv/range", {}, expect_status=400)
step("range_camel_case", "/v3/kv/range", {"key": "AA==", "rangeEnd": "AA==", "keysOnly": True})
step("range_int64_as_numbers", "/v3/kv/range", {"key": b64("foo"), "limit": 1, "revision": 2})
step("range_future_rev", "/v3/kv/range", {"key": b64("foo"), "revision": "100"}, expect_status=400)
step("range_truncated_json", "/v3/kv/range", '{"key":', expect_status=400)
step("range_wrong_type", "/v3/kv/range", '{"key":5}', expect_status=400,
     known=("decoder_message",))
step("range_unknown_field", "/v3/kv/range", {"key": b64("foo"), "no_such_field": [1, {"a": 2}]})
step("range_trailing_garbage", "/v3/kv/range", json.dumps({"key": b64("foo")}) + " trailing")
step("put_a1", "/v3/kv/put", {"key": b64("a/1"), "value": b64("1")})
step("put_a2", "/v3/kv/put", {"key": b64("a/2"), "value": b64("")})
step("put_a3", "/v3/kv/put", {"key": b64("a/3"), "value": b64("3")})
step("range_sorted_limited", "/v3/kv/range",
     {"key": b64("a/"), "range_end": b64("a0"), "sort_order": "DESCEND", "sort_target": "MOD",
      "limit": "1"})
step("range_prefix_keys_only", "/v3/kv/range",
     {"key": b64("a/"), "range_end": b64("a0"), "keys_only": True})
step("put_ignore_value_missing", "/v3/kv/put", {"key": b64("nokey"), "ignore_value": True},
     expect_status=400)
step("deleterange_one", "/v3/kv/deleterange", {"key": b64("a/3"), "prev_kv": True})
step("deleterange_nothing", "/v3/kv/deleterange", {"key": b64("a/3")})

# ---- leases (Patroni: grant with a numeric TTL, keepalive with the ID string) ------------------------
step("lease_grant_number_ttl", "/v3/lease/grant", {"TTL": 30}, capture=cap("l1", ["ID"]))
step("lease_grant_fixed_id", "/v3/lease/grant", {"TTL": "60", "ID": "1000"})
step("lease_grant_existing_id", "/v3/lease/grant", {"TTL": "60", "ID": "1000"},
     expect_status=412, known=("failed_precondition_412",))
step("lease_grant_too_large", "/v3/lease/grant", {"TTL": "9000000001"}, expect_status=400)
step("lease_grant_min_ttl", "/v3/lease/grant", {"TTL": 1}, capture=cap("l2", ["ID"]))
step("lease_revoke_min_ttl", "/v3/lease/revoke", V(lambda v: {"ID": v["l2"]}))
step("put_member_with_lease", "/v3/kv/put",
     V(lambda v: {"key": b64("/service/batman/members/pg1"), "value": b64('{"role":"primary"}'),
                  "lease": v["l1"]}))
step("range_member_serializable", "/v3/kv/range",
     {"key": b64("/service/batman/members/pg1"), "serializable": True})
step("put_unknown_lease", "/v3/kv/put",
     {"key": b64("/service/batman/leader"), "value": b64("pg1"), "lease": "7587862329134716179"},
     expect_status=404)
step("keepalive_live", "/v3/lease/keepalive", V(lambda v: {"ID": v["l1"]}), stream=True)
step("keepalive_two_in_one_body", "/v3/lease/keepalive",
     V(lambda v: json.dumps({"ID": v["l1"]}) + "\n" + json.dumps({"ID": "1000"})), stream=True)
step("keepalive_unknown", "/v3/lease/keepalive", {"ID": "4242"}, stream=True)
step("keepalive_truncated_json", "/v3/lease/keepalive", '{"ID":', expect_status=500)
step("timetolive_keys", "/v3/kv/lease/timetolive", V(lambda v: {"ID": v["l1"], "keys": True}))
step("timetolive_unknown", "/v3/lease/timetolive", {"ID": "12345"})
step("lease_leases", "/v3/lease/leases", {})
step("lease_revoke_unknown", "/v3/lease/revoke", {"ID": "12345"}, expect_status=404)
step("lease_revoke_fixed", "/v3/kv/lease/revoke", {"ID": "1000"})

# ---- Patroni's four transaction shapes ----------------------------------------------------------------
LEADER = b64("/service/batman/leader")
CONFIG = b64("/service/batman/config")


def create_leader(v):
    return {"compare": [{"target": "CREATE", "create_revision": "0", "key": LEADER}],
            "success": [{"request_put": {"key": LEADER, "value": b64("pg1"), "lease": v["l1"]}}]}


step("txn1_create_if_absent", "/v3/kv/txn", V(create_leader))
step("txn1_create_if_absent_again", "/v3/kv/txn", V(create_leader))
step("put_config", "/v3/kv/put", {"key": CONFIG, "value": b64('{"ttl":30}')},
     capture=cap("config_rev", ["header", "revision"]))
step("txn2_cas_stale", "/v3/kv/txn",
     {"compare": [{"target": "MOD", "mod_revision": "2", "key": CONFIG}],
      "success": [{"request_put": {"key": CONFIG, "value": b64("stale")}}]})
step("txn2_cas", "/v3/kv/txn",
     V(lambda v: {"compare": [{"target": "MOD", "mod_revision": v["config_rev"], "key": CONFIG}],
                  "success": [{"request_put": {"key": CONFIG, "value": b64('{"ttl":20}')}}]}),
     capture=cap("config_rev2", ["header", "revision"]))
step("txn2b_delete_on_mod", "/v3/kv/txn",
     V(lambda v: {"compare": [{"target": "MOD", "mod_revision": v["config_rev2"], "key": CONFIG}],
                  "success": [{"request_delete_range": {"key": CONFIG}}]}))
step("lease_grant_second", "/v3/lease/grant", {"TTL": 30}, capture=cap("l3", ["ID"]))


def update_leader(name):
    def body(v):
        put = {"request_put": {"key": LEADER, "value": b64(name), "lease": v["l3"]}}
        return {"compare": [{"key": LEADER, "target": "VALUE", "value": b64(name)}],
                "success": [put],
                "failure": [{"request_txn": {
                    "compare": [{"key": LEADER, "target": "CREATE", "create_revision": "0"}],
                    "success": [put]}}]}
    return body


step("txn3_update_leader_value_holds", "/v3/kv/txn", V(update_leader("pg1")))
step("range_leader_moved_lease", "/v3/kv/range", {"key": LEADER})
step("txn3_both_fail", "/v3/kv/txn", V(update_leader("pg2")))
step("txn4_delete_leader", "/v3/kv/txn",
     {"compare": [{"key": LEADER, "target": "VALUE", "value": b64("pg1")}],
      "success": [{"request_delete_range": {"key": LEADER}}]})
step("txn3_nested_create", "/v3/kv/txn", V(update_leader("pg2")))
step("txn_read_only_failure_range", "/v3/kv/txn",
     {"compare": [{"key": LEADER, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
      "success": [{"request_put": {"key": LEADER, "value": b64("x")}}],
      "failure": [{"request_range": {"key": LEADER}}]})
step("txn_duplicate_keys", "/v3/kv/txn",
     {"success": [{"request_put": {"key": b64("d"), "value": b64("1")}},
                  {"request_put": {"key": b64("d"), "value": b64("2")}}]}, expect_status=400)
step("txn_too_many_ops", "/v3/kv/txn",
     {"success": [{"request_put": {"key": b64(f"t{i}"), "value": b64("x")}} for i in range(129)]},
     expect_status=400)

# ---- watch ----------------------------------------------------------------------------------------------
step("range_prefix_for_watch", "/v3/kv/range",
     {"key": b64("/service/batman/"), "range_end": b64("/service/batman0"), "serializable": True},
     capture=cap("watch_rev", ["header", "revision"]))


def writes(*ops):
    """during: writes on other connections, spaced so each revision is its own message."""
    def run(port, vars):
        # Let a watcher that starts in the past catch up first, so no write joins its batch.
        time.sleep(0.3)
        for op, key, *val in ops:
            if op == "put":
                request(port, "POST", "/v3/kv/put", {"key": b64(key), "value": b64(val[0])})
            else:
                request(port, "POST", "/v3/kv/deleterange", {"key": b64(key)})
            time.sleep(0.15)
    return run


# Exactly Patroni's watch: from the range's header revision (inclusive), empty filters.
step("watch_patroni_prefix", "/v3/watch",
     V(lambda v: {"create_request": {"key": b64("/service/batman/"),
                                     "range_end": b64("/service/batman0"),
                                     "start_revision": v["watch_rev"], "filters": []}}),
     stream=True, lines=5,
     during=writes(("put", "/service/batman/status", "s1"), ("put", "/service/other", "x"),
                   ("delete", "/service/batman/leader"), ("put", "/service/batman/sync", "")))
step("watch_noput_prev_kv_id", "/v3/watch",
     {"create_request": {"key": b64("foo"), "prev_kv": True, "watch_id": "7",
                         "filters": ["NOPUT"]}},
     stream=True, lines=2, during=writes(("put", "foo", "qux"), ("delete", "foo")))
step("watch_empty_range", "/v3/watch",
     {"create_request": {"key": b64("foo"), "range_end": b64("a")}}, stream=True, lines=1)
step("watch_progress_request", "/v3/watch", {"progress_request": {}}, stream=True, lines=1)
step("watch_create_then_cancel", "/v3/watch",
     json.dumps({"create_request": {"key": b64("foo"), "watch_id": "3"}})
     + json.dumps({"cancel_request": {"watch_id": "3"}}), stream=True, lines=2)
step("watch_truncated_json", "/v3/watch", '{"create_request":', expect_status=500)
step("put_before_compact", "/v3/kv/put", {"key": b64("cmp"), "value": b64("1")},
     capture=cap("cmp_rev", ["header", "revision"]))
step("put_cmp_2", "/v3/kv/put", {"key": b64("cmp"), "value": b64("2")},
     capture=cap("cmp_rev2", ["header", "revision"]))
step("compaction", "/v3/kv/compaction", V(lambda v: {"revision": v["cmp_rev2"]}))
step("range_compacted_rev", "/v3/kv/range", V(lambda v: {"key": b64("cmp"), "revision": v["cmp_rev"]}),
     expect_status=400)
step("watch_compacted_start", "/v3/watch",
     V(lambda v: {"create_request": {"key": b64("cmp"), "start_revision": v["cmp_rev"]}}),
     stream=True, lines=2)

# ---- prefixes, aliases, cluster and maintenance ---------------------------------------------------------
step("v3beta_range", "/v3beta/kv/range", {"key": b64("foo")})
step("keepalive_after_revoke", "/v3/lease/keepalive", {"ID": "1000"}, stream=True)
step("maintenance_status", "/v3/maintenance/status", {}, known=("status_version",))
step("maintenance_alarm_get", "/v3/maintenance/alarm", {"action": "GET"},
     known=("alarm_header",))
step("maintenance_defragment", "/v3/maintenance/defragment", {})
step("auth_authenticate_disabled", "/v3/auth/authenticate", {"name": "u", "password": "p"},
     expect_status=412, known=("failed_precondition_412",))
step("auth_role_list", "/v3/auth/role/list", {})
# With auth disabled, a token sent in `Authorization` is still checked: an unknown one is 401
# "etcdserver: invalid auth token", on etcd as on pgraftd.
step("authorization_header_checked", "/v3/kv/range", {"key": b64("foo")},  # header: see below
     expect_status=401)

# ---- routing and methods ----------------------------------------------------------------------------
step("gateway_route_get", "/v3/kv/range", None, method="GET", expect_status=405)
step("gateway_unknown_route", "/v3/kv/nothing", {}, expect_status=404)
step("v3alpha_prefix", "/v3alpha/kv/range", {"key": b64("foo")}, expect_status=404)
step("unknown_path", "/nothing", None, method="GET", expect_status=404)
step("options_preflight", "/v3/kv/put", None, method="OPTIONS")

# ---- health, metrics --------------------------------------------------------------------------------------
step("health", "/health", None, method="GET", known=("health_reason",))
step("health_post", "/health", None, expect_status=405)
step("livez", "/livez", None, method="GET", expect_status=404, known=("livez_readyz",))
step("readyz_verbose", "/readyz?verbose", None, method="GET", expect_status=404,
     known=("livez_readyz",))
step("metrics_named_series", "/metrics", None, method="GET")

# ---- final state -------------------------------------------------------------------------------------------
step("final_dump", "/v3/kv/range", {"key": "AA==", "range_end": "AA=="})

EXTRA_HEADERS = {"authorization_header_checked": {"Authorization": "ewFEimfwlDNnDpzV.31"}}

# The series whose names and types must match etcd's (README's /metrics contract).
METRIC_NAMES = [
    "etcd_server_has_leader", "etcd_server_is_leader", "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_committed_total", "etcd_server_proposals_applied_total",
    "etcd_server_proposals_pending", "etcd_server_proposals_failed_total",
    "etcd_disk_wal_fsync_duration_seconds", "etcd_disk_backend_commit_duration_seconds",
    "etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_keys_total",
    "etcd_server_version", "grpc_server_started_total", "grpc_server_handled_total",
    "process_resident_memory_bytes",
]


# --------------------------------------------------------------------------- recording and masking
class Masker:
    """Masks what two correct servers may differ in; placeholders are numbered in order of first
    appearance, so the same ID must stay the same ID on both sides."""

    RAFT = {"raft_term", "raftTerm", "raftIndex", "raftAppliedIndex"}
    DBSIZE = {"dbSize", "dbSizeInUse"}

    def __init__(self, server: Server):
        self.urls = [(server.client_url, "<CLIENT_URL>"), (server.peer_url, "<PEER_URL>")]
        self.ids: dict = {}
        self.counts: dict = {}

    def ph(self, kind, value):
        key = (kind, str(value))
        if key not in self.ids:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.ids[key] = f"<{kind}_{self.counts[kind]}>"
        return self.ids[key]

    def json(self, obj, key=None, in_members=False, ttls=None):
        if isinstance(obj, dict):
            return {k: self.json(v, k, in_members or k == "members", ttls) for k, v in obj.items()}
        if isinstance(obj, list):
            out = [self.json(v, key, in_members, ttls) for v in obj]
            # etcd lists leases in map order: compare them as a set.
            return sorted(out, key=json.dumps) if key == "leases" else out
        if not isinstance(obj, (str, int)) or isinstance(obj, bool):
            return obj
        if key == "cluster_id":
            return self.ph("CLUSTER", obj)
        if key in ("member_id", "leader", "memberID") or (key == "ID" and in_members):
            return self.ph("MEMBER", obj)
        if key in ("ID", "lease"):
            return self.ph("LEASE", obj)
        if key in self.RAFT:
            return "<RAFT>"
        if key in self.DBSIZE:
            return "<DBSIZE>"
        if isinstance(obj, str):
            for url, name in self.urls:
                obj = obj.replace(url, name)
        return obj


@dataclass
class Record:
    name: str
    request: str
    status: int
    headers: dict
    body: object                  # masked JSON, or text
    framing: object = None        # streams: True if every chunk is exactly one JSON line
    ttls: list = field(default_factory=list)
    raw: str = ""

    def render(self) -> str:
        return json.dumps({"status": self.status, "headers": self.headers, "body": self.body,
                           "framing": self.framing}, indent=1, ensure_ascii=False,
                          sort_keys=False) + "\n"


COMPARED_HEADERS = ("content-type", "grpc-metadata-content-type", "access-control-allow-origin",
                    "access-control-allow-methods", "access-control-allow-headers")


def parse_body(data: bytes):
    text = data.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def metric_types(text: str) -> dict:
    """name -> TYPE line, for METRIC_NAMES (missing ones say so)."""
    types = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"] and parts[2] in METRIC_NAMES:
            types[parts[2]] = parts[3]
    return {n: types.get(n, "MISSING") for n in METRIC_NAMES}


def run_step(st: Step, server: Server, masker: Masker, vars: dict) -> Record:
    port = server.client_port
    body = st.body(vars) if callable(st.body) else st.body
    headers = {"Content-Type": "application/json", **EXTRA_HEADERS.get(st.name, {})}
    req = f"{st.method} {st.path} {encode_body(body)!r}"
    if st.stream:
        c = Conn(port)
        try:
            c.send(st.method, st.path, encode_body(body), headers)
            deadline = time.monotonic() + IO_TIMEOUT
            status, h = c.head(deadline)
            ans = Answer(status, h, ended=False)
            if h.get("transfer-encoding") != "chunked":
                ans.body, ans.ended = c.body(h, deadline), True
            else:
                while st.lines is None or len(ans.chunks) < st.lines:
                    ch = c.chunk(deadline)
                    if ch is None:
                        break
                    if ch == b"":
                        ans.ended = True
                        break
                    ans.chunks.append(ch)
                    if len(ans.chunks) == 1 and st.during is not None:
                        st.during(port, vars)
                        deadline = time.monotonic() + IO_TIMEOUT
        finally:
            c.close()
    else:
        ans = request(port, st.method, st.path, body, headers)
    ttls: list = []
    rec_headers = {k: ans.headers[k] for k in COMPARED_HEADERS if k in ans.headers}
    if st.stream and ans.headers.get("transfer-encoding") == "chunked":
        rec_headers["transfer-encoding"] = "chunked"
    if st.stream and ans.chunks:
        framing = all(ch.endswith(b"\n") and ch.count(b"\n") == 1 for ch in ans.chunks)
        lines = [masker.json(parse_body(ch), ttls=ttls) for ch in ans.chunks]
        out = {"lines": lines, "ended": ans.ended}
        raw = b"".join(ans.chunks).decode(errors="replace")
    elif st.path == "/metrics":
        framing, raw = None, ans.body.decode(errors="replace")
        out = metric_types(raw)
    else:
        framing, raw = None, ans.body.decode(errors="replace")
        parsed = parse_body(ans.body)
        if st.capture is not None and isinstance(parsed, dict):
            try:
                st.capture(parsed, vars)
            except (KeyError, IndexError, TypeError):
                pass
        out = masker.json(parsed) if not isinstance(parsed, str) else parsed
        if "timetolive" in st.path and isinstance(out, dict) and "TTL" in out:
            if int(out["TTL"]) >= 0:
                ttls.append(int(out["TTL"]))
                out["TTL"] = "<TTL~>"
    return Record(st.name, req, ans.status, rec_headers, out, framing, ttls, raw)


def run_session(kind: str) -> tuple[list[Record], Server]:
    server = Server(kind)
    server.start()
    masker = Masker(server)
    vars: dict = {}
    records = []
    try:
        for st in STEPS:
            try:
                records.append(run_step(st, server, masker, vars))
            except KeyError as e:
                records.append(Record(st.name, f"(step needs variable {e})", 0, {}, "skipped"))
            except (OSError, EOFError, TimeoutError) as e:
                records.append(Record(st.name, st.path, 0, {}, f"transport error: {e!r}"))
    finally:
        server.stop(cleanup=True)
    with open(server.workdir / "gateway-transcript.txt", "w") as f:
        for r in records:
            f.write(f"=== {r.name}\n{r.request}\n{r.render()}[raw]\n{r.raw}\n")
    return records, server


# --------------------------------------------------------------------------- known differences
def _known_412(ref: Record, cand: Record) -> Record:
    # Debian's etcd 3.4.23 is built with grpc-gateway 1.6.4, which maps FailedPrecondition to
    # HTTP 412; upstream grpc-gateway 1.9.5+ (etcd 3.4 upstream, etcd 3.5) maps it to 400, and
    # pgraftd follows etcd 3.5. Body and code are unchanged.
    assert ref.status == 412 and isinstance(ref.body, dict) and ref.body.get("code") == 9
    ref.status = 400
    return ref


def _known_version(ref: Record, cand: Record) -> Record:
    # pgraftd speaks the etcd 3.5 API and says so: {"etcdserver":"3.5.0","etcdcluster":"3.5.0"}
    # (the reference is 3.4.23 / 3.4.0). Same keys, same order, same content type.
    assert list(ref.body) == ["etcdserver", "etcdcluster"]
    ref.body = {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"}
    return ref


def _known_status_version(ref: Record, cand: Record) -> Record:
    # Status.version is the server version: 3.4.23 vs pgraftd's etcd API version 3.5.0.
    assert ref.body["version"] == "3.4.23"
    ref.body["version"] = "3.5.0"
    return ref


def _known_health_reason(ref: Record, cand: Record) -> Record:
    # etcd 3.5 added "reason" to /health ({"health":"true","reason":""}); 3.4 omits it.
    assert ref.body == {"health": "true"}
    ref.body = {"health": "true", "reason": ""}
    return ref


def _known_livez_readyz(ref: Record, cand: Record) -> Record:
    # /livez and /readyz exist from etcd 3.4.29 / 3.5.11 on; 3.4.23 answers 404. pgraftd serves
    # them as 3.5.11+ does: plain "ok", with one "[+]<check> ok" line per check for ?verbose.
    assert ref.status == 404
    ref.status = 200
    ref.headers["content-type"] = "text/plain; charset=utf-8"
    ref.headers.pop("x-content-type-options", None)
    ref.body = ("[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n"
                "[+]non_learner ok\nok\n") if "verbose" in ref.request else "ok\n"
    return ref


def _known_alarm_header(ref: Record, cand: Record) -> Record:
    # etcd 3.4.23's Alarm answers {} (no header); pgraftd fills the header, as newer etcd does.
    # The alarm list itself (empty) is the same.
    assert ref.body == {}
    ref.body = {"header": cand.body.get("header")} if isinstance(cand.body, dict) else ref.body
    return ref


def _known_decoder_message(ref: Record, cand: Record) -> Record:
    # A body that is complete JSON but does not fit the message: both answer 400, code 3, with
    # the decoder's own words, which differ between Go's encoding/json and serde_json. (Truncated
    # JSON is "unexpected EOF" on both: compared exactly in other steps.)
    assert ref.status == 400 and ref.body["code"] == 3
    if isinstance(cand.body, dict) and cand.body.get("error") == cand.body.get("message"):
        ref.body = dict(ref.body, error=cand.body["error"], message=cand.body["message"])
    return ref


KNOWN: dict[str, Callable[[Record, Record], Record]] = {
    "failed_precondition_412": _known_412,
    "version": _known_version,
    "status_version": _known_status_version,
    "health_reason": _known_health_reason,
    "livez_readyz": _known_livez_readyz,
    "alarm_header": _known_alarm_header,
    "decoder_message": _known_decoder_message,
}


# --------------------------------------------------------------------------- tests
CANDIDATE = candidate_kind()
_session = session_cache(run_session)


def test_known_differences_are_all_used():
    used = {k for st in STEPS for k in st.known}
    assert used == set(KNOWN), set(KNOWN) ^ used


@pytest.mark.parametrize("st", STEPS, ids=[s.name for s in STEPS])
def test_step(st: Step):
    ref_records, _ = _session("reference")
    idx = STEPS.index(st)
    ref = ref_records[idx]
    assert ref.status == st.expect_status, (
        f"reference etcd answered {ref.status} (the script expects {st.expect_status}) "
        f"for {st.name}; the script is wrong:\n{ref.render()}")
    cand_records, cand_server = _session("candidate")
    cand = cand_records[idx]
    expected = ref
    if CANDIDATE != "etcd":
        for k in st.known:
            expected = KNOWN[k](expected, cand)
    problems = []
    if cand.render() != expected.render():
        diff = "".join(difflib.unified_diff(
            expected.render().splitlines(True), cand.render().splitlines(True),
            fromfile=f"etcd/{st.name} (with known differences applied: {list(st.known)})",
            tofile=f"{cand_server.kind}/{st.name}", n=8))
        problems.append(f"answers differ after masking:\n{diff}")
    elif len(cand.ttls) != len(ref.ttls) or any(
            abs(a - b) > TTL_TOLERANCE for a, b in zip(ref.ttls, cand.ttls)):
        problems.append(f"remaining TTLs differ by more than {TTL_TOLERANCE}s: "
                        f"etcd {ref.ttls} vs {cand_server.kind} {cand.ttls}")
    if problems:
        problems.append(f"request: {cand.request}\nraw {cand_server.kind} answer:\n{cand.raw}")
        problems.append(f"{cand_server.kind} server log: {cand_server.log_path}")
        pytest.fail("\n".join(problems), pytrace=False)


def test_session_left_what_it_meant():
    """The reference's final dump is what the script means to leave behind."""
    ref_records, _ = _session("reference")
    dump = next(r for r in ref_records if r.name == "final_dump").body
    keys = {base64.b64decode(k["key"]).decode() for k in dump["kvs"]}
    assert {"a/1", "a/2", "cmp", "/service/batman/status", "/service/batman/sync",
            "/service/other", "/service/batman/members/pg1"} <= keys, keys
    for gone in ("foo", "a/3", "/service/batman/leader", "/service/batman/config"):
        assert gone not in keys, keys
