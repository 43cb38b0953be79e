"""etcd's server-side Lock and Election services (v3lockpb, v3electionpb) through the JSON
gateway, differentially: one scripted session of `/v3/lock/*` and `/v3/election/*` calls
(contention, a lease revoked under a waiter, a waiter whose client goes away, errors, an Observe
stream) runs against real etcd 3.4.23 and against pgraftd, each on a fresh data dir; every
answer (status and body, IDs and raft terms masked; revisions compared as they are) must be the
same. Then `etcdctl lock` and `etcdctl elect`, which build the same recipes on the client side
from KV, lease and watch, must exclude and follow holders made through the server-side services,
on both servers. Last, on a 3-member cluster, calls to different followers see one lock queue
and one election.

COMPAT_REFERENCE_ONLY=1 runs etcd as the candidate too (checks the script).
"""

from __future__ import annotations

import base64
import http.client
import json
import signal
import threading
import time

import pytest

from conftest import candidate_kind, session_cache
from harness import Server

IO_TIMEOUT = 15.0
# How long a waiter must stay blocked to count as waiting.
WAITS = 1.0

A, B, C, D = 0x1A, 0x2B, 0x3C, 0x4D  # fixed lease IDs: the keys carry them in hex


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def post(port: int, path: str, body) -> tuple[int, object]:
    """One unary gateway call: (HTTP status, JSON body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


class Background:
    """A gateway call that is expected to block, run in a thread."""

    def __init__(self, port: int, path: str, body):
        self.answer = None
        self.thread = threading.Thread(target=self._run, args=(port, path, body), daemon=True)
        self.thread.start()

    def _run(self, port, path, body):
        try:
            self.answer = post(port, path, body)
        except Exception as e:  # reported by result()
            self.answer = ("failed", repr(e))

    def waiting(self) -> bool:
        return self.thread.is_alive()

    def result(self, timeout: float = IO_TIMEOUT):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return in time"
        return self.answer


class Observe:
    """An open `/v3/election/observe` stream, read one message (line) at a time."""

    def __init__(self, port: int, name: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        self.conn.request("POST", "/v3/election/observe", json.dumps({"name": b64(name)}),
                          {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def line(self):
        return json.loads(self.resp.readline())

    def close(self):
        self.conn.close()


class Masker:
    """Cluster and member IDs and raft terms differ between two correct servers."""

    def __init__(self):
        self.ids: dict = {}

    def __call__(self, obj, key=None):
        if isinstance(obj, dict):
            return {k: self(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self(v, key) for v in obj]
        if key in ("cluster_id", "member_id"):
            return self.ids.setdefault((key, obj), f"<{key}_{len(self.ids) + 1}>")
        if key == "raft_term":
            return "<raft_term>"
        return obj


def run_session(kind: str) -> list[tuple[str, object]]:
    s = Server(kind).start()
    try:
        return list(session(s.client_port))
    finally:
        s.stop(cleanup=True)


def session(port: int):
    mask = Masker()

    def call(name, path, body):
        status, obj = post(port, path, body)
        yield name, [status, mask(obj)]
        return obj

    def done(name, bg: Background):
        status, obj = bg.result()
        return name, [status, mask(obj)]

    lock, unlock = "/v3/lock/lock", "/v3/lock/unlock"
    for lease in (A, B, C, D):
        yield from call(f"grant_{lease:x}", "/v3/lease/grant", {"TTL": "60", "ID": str(lease)})

    # ---- Lock: errors, holding, re-entry, contention, revocation, a client that leaves
    yield from call("lock_unknown_lease", lock, {"name": b64("L"), "lease": "999"})
    held = yield from call("lock_a", lock, {"name": b64("L"), "lease": str(A)})
    yield from call("lock_a_again", lock, {"name": b64("L"), "lease": str(A)})
    waiter = Background(port, lock, {"name": b64("L"), "lease": str(B)})
    time.sleep(WAITS)
    yield "lock_b_waits_for_a", waiter.waiting()
    yield from call("unlock_a", unlock, {"key": held["key"]})
    yield done("lock_b_after_unlock_a", waiter)
    waiter = Background(port, lock, {"name": b64("L"), "lease": str(C)})
    time.sleep(WAITS)
    yield "lock_c_waits_for_b", waiter.waiting()
    yield from call("revoke_b", "/v3/lease/revoke", {"ID": str(B)})
    held = done("lock_c_after_revoke_b", waiter)
    yield held
    yield from call("lock_keys", "/v3/kv/range",
                    {"key": b64("L/"), "range_end": b64("L0"), "keys_only": True})
    # A waiter whose client goes away: its key is removed.
    gone = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    gone.request("POST", lock, json.dumps({"name": b64("L"), "lease": str(D)}),
                 {"Content-Type": "application/json"})
    time.sleep(WAITS)
    yield from call("lock_keys_with_waiter_d", "/v3/kv/range",
                    {"key": b64("L/"), "range_end": b64("L0"), "keys_only": True})
    gone.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, r = post(port, "/v3/kv/range", {"key": b64("L/"), "range_end": b64("L0"),
                                            "count_only": True})
        if r.get("count") == "1":
            break
        time.sleep(0.1)
    yield "keys_after_waiter_d_left", r.get("count")
    yield from call("unlock_c", unlock, {"key": held[1][1]["key"]})
    yield from call("unlock_missing_key", unlock, {"key": b64("L/none")})
    yield from call("unlock_empty", unlock, {})

    # ---- Election
    el, E = "/v3/election", b64("E")
    yield from call("leader_none", f"{el}/leader", {"name": E})
    camp = yield from call("campaign_a", f"{el}/campaign",
                           {"name": E, "lease": str(A), "value": b64("a1")})
    leader = camp["leader"]
    yield from call("leader_a", f"{el}/leader", {"name": E})
    obs = Observe(port, "E")
    yield "observe_status", obs.status
    yield "observe_first", mask(obs.line())
    yield from call("proclaim_a", f"{el}/proclaim", {"leader": leader, "value": b64("a2")})
    yield "observe_proclaimed", mask(obs.line())
    yield from call("proclaim_wrong_rev", f"{el}/proclaim",
                    {"leader": {**leader, "rev": "1"}, "value": b64("x")})
    yield from call("proclaim_no_leader_key", f"{el}/proclaim", {"value": b64("x")})
    yield from call("resign_no_leader_key", f"{el}/resign", {})
    waiter = Background(port, f"{el}/campaign", {"name": E, "lease": str(C), "value": b64("c1")})
    time.sleep(WAITS)
    yield "campaign_c_waits_for_a", waiter.waiting()
    yield from call("resign_a", f"{el}/resign", {"leader": leader})
    yield done("campaign_c_after_resign_a", waiter)
    yield "observe_new_leader", mask(obs.line())
    yield from call("resign_a_again", f"{el}/resign", {"leader": leader})
    yield from call("campaign_c_again_new_value", f"{el}/campaign",
                    {"name": E, "lease": str(C), "value": b64("c2")})
    yield "observe_new_value", mask(obs.line())
    yield from call("leader_c", f"{el}/leader", {"name": E})
    obs.close()
    yield from call("campaign_unknown_lease", f"{el}/campaign",
                    {"name": b64("E2"), "lease": "999", "value": b64("x")})


get_session = session_cache(run_session)


def test_session_against_etcd():
    ref, cand = get_session("reference"), get_session("candidate")
    assert [n for n, _ in ref] == [n for n, _ in cand]
    diffs = [(n, r, c) for (n, r), (_, c) in zip(ref, cand) if r != c]
    assert not diffs, "\n".join(f"{n}:\n  etcd:    {r}\n  pgraftd: {c}" for n, r, c in diffs)


def test_session_checks_what_it_means():
    """The reference session itself shows the behaviour the script is about, so a script that
    stopped exercising it (a waiter that never waited) cannot pass by comparing two no-ops."""
    ref = dict(get_session("reference"))
    assert ref["lock_b_waits_for_a"] is True
    assert ref["lock_c_waits_for_b"] is True
    assert ref["campaign_c_waits_for_a"] is True
    assert ref["keys_after_waiter_d_left"] == "1"
    assert ref["lock_unknown_lease"][0] == 500
    assert ref["lock_unknown_lease"][1]["error"] == "etcdserver: requested lease not found"
    assert ref["leader_none"][1]["error"] == "election: no leader"


# --------------------------------------------------------------------------- etcdctl interop
KINDS = sorted({"etcd", candidate_kind()})


def wait_for(cond, what: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def count(port: int, prefix: str) -> int:
    _, r = post(port, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix[:-1] + "0"),
                                       "count_only": True})
    return int(r.get("count", "0"))


class Etcdctl:
    """A long-running etcdctl, its output lines gathered as they come."""

    def __init__(self, server: Server, *args: str):
        self.p = server.popen_etcdctl(*args)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def running(self) -> bool:
        return self.p.poll() is None

    def wait_line(self, pred, what: str):
        wait_for(lambda: any(pred(line) for line in self.lines), f"etcdctl to print {what}")

    def stop(self):
        """SIGINT, as a user's Ctrl-C: etcdctl then closes its session (revoking its lease)."""
        if self.running():
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(IO_TIMEOUT)
        except Exception:
            self.p.kill()
            self.p.wait(IO_TIMEOUT)
        self.reader.join(IO_TIMEOUT)


@pytest.mark.parametrize("kind", KINDS)
def test_etcdctl_lock_and_server_lock_exclude_each_other(kind, server_factory):
    s = server_factory(kind)
    port = s.client_port
    post(port, "/v3/lease/grant", {"TTL": "60", "ID": str(A)})

    # Held through the server-side service: `etcdctl lock` waits until it is unlocked.
    _, held = post(port, "/v3/lock/lock", {"name": b64("M"), "lease": str(A)})
    cli = Etcdctl(s, "lock", "M")
    try:
        wait_for(lambda: count(port, "M/") == 2, "etcdctl's key under M/")
        time.sleep(WAITS)
        assert not cli.lines, "etcdctl lock got a lock the server-side Lock holds"
        post(port, "/v3/lock/unlock", {"key": held["key"]})
        # Once it holds the lock, etcdctl prints its key (M/<its lease in hex>).
        cli.wait_line(lambda line: line.startswith("M/"), "the key it holds")

        # Held by etcdctl: the server-side Lock waits until etcdctl lets go.
        waiter = Background(port, "/v3/lock/lock", {"name": b64("M"), "lease": str(A)})
        time.sleep(WAITS)
        assert waiter.waiting(), "the server-side Lock got a lock etcdctl holds"
        cli.stop()
        status, got = waiter.result()
        assert (status, got["key"]) == (200, b64(f"M/{A:x}")), got
    finally:
        cli.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_etcdctl_elect_and_server_election_follow_each_other(kind, server_factory):
    s = server_factory(kind)
    port = s.client_port
    post(port, "/v3/lease/grant", {"TTL": "60", "ID": str(A)})
    _, camp = post(port, "/v3/election/campaign",
                   {"name": b64("N"), "lease": str(A), "value": b64("server")})
    observer = Etcdctl(s, "elect", "-l", "N")
    cli = Etcdctl(s, "elect", "N", "client")
    try:
        # The observer (etcdctl's own Observe, on KV and watch) sees the server-side leader.
        observer.wait_line(lambda line: line == "server", "the server-side leader's value")
        wait_for(lambda: count(port, "N/") == 2, "etcdctl's candidate key under N/")
        time.sleep(WAITS)
        assert not cli.lines, "etcdctl elect won while the server-side leader leads"
        post(port, "/v3/election/resign", {"leader": camp["leader"]})
        # etcdctl elect prints the key it leads with and its proposal once elected.
        cli.wait_line(lambda line: line == "client", "its proposal as leader")
        observer.wait_line(lambda line: line == "client", "etcdctl's proposal")
        status, body = post(port, "/v3/election/leader", {"name": b64("N")})
        assert (status, body["kv"]["value"]) == (200, b64("client"))

        # A server-side candidate waits behind etcdctl, and leads once etcdctl's session ends.
        waiter = Background(port, "/v3/election/campaign",
                            {"name": b64("N"), "lease": str(A), "value": b64("server2")})
        time.sleep(WAITS)
        assert waiter.waiting(), "a server-side Campaign won while etcdctl leads"
        cli.stop()
        status, got = waiter.result()
        assert status == 200 and got["leader"]["key"] == b64(f"N/{A:x}"), got
        observer.wait_line(lambda line: line == "server2", "the new server-side leader")
    finally:
        cli.stop()
        observer.stop()


def test_lock_and_election_across_members(cluster_factory):
    """Requests to followers (writes forwarded, reads by ReadIndex, waits on each member's own
    applied revisions) see one lock queue and one election."""
    c = cluster_factory(3)
    leader = c.wait_leader()
    f1, f2 = [m.client_port for m in c.members if m is not leader]
    post(leader.client_port, "/v3/lease/grant", {"TTL": "60", "ID": str(A)})
    post(leader.client_port, "/v3/lease/grant", {"TTL": "60", "ID": str(B)})

    status, held = post(f1, "/v3/lock/lock", {"name": b64("X"), "lease": str(A)})
    assert (status, held["key"]) == (200, b64(f"X/{A:x}")), held
    waiter = Background(f2, "/v3/lock/lock", {"name": b64("X"), "lease": str(B)})
    time.sleep(WAITS)
    assert waiter.waiting(), "a follower granted a lock another follower's client holds"
    post(leader.client_port, "/v3/lock/unlock", {"key": held["key"]})
    status, got = waiter.result()
    assert (status, got["key"]) == (200, b64(f"X/{B:x}")), got

    status, camp = post(f1, "/v3/election/campaign",
                        {"name": b64("Y"), "lease": str(A), "value": b64("y1")})
    assert status == 200, camp
    # The gateway sends a stream's HTTP head with its first message: open it once there is one.
    obs = Observe(f2, "Y")
    try:
        seen = obs.line()["result"]["kv"]
        assert (seen["key"], seen["value"]) == (b64(f"Y/{A:x}"), b64("y1"))
        post(leader.client_port, "/v3/election/proclaim",
             {"leader": camp["leader"], "value": b64("y2")})
        assert obs.line()["result"]["kv"]["value"] == b64("y2")
        status, lead = post(f1, "/v3/election/leader", {"name": b64("Y")})
        assert (status, lead["kv"]["value"]) == (200, b64("y2"))
    finally:
        obs.close()
