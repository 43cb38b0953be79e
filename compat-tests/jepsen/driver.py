"""Concurrent clients that record what they do into a `History`: KV clients (puts, deletes,
compare-and-set transactions on mod_revision and on value, linearizable and serializable
gets) on a few shared keys, a lease client (grant, put with the lease, a few keepalives, then
linearizable gets until the key is gone), and watchers of the run's whole prefix (the JSON
gateway's streaming watch, resumed from the last revision seen after a broken stream, and an
`etcdctl watch`, whose gRPC client resumes by itself). Each client picks a running member per
operation and the face it was made with."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time

from harness import ETCDCTL_BIN, etcdctl_env

from .clients import ClientError, Etcdctl, Gateway, b64, unb64
from .history import (CAS_REV, CAS_VALUE, DELETE, GET, LEASE_GRANT, LEASE_KEEPALIVE, PUT,
                      Event, History, WatchStream)


def _client(face: str, member):
    return (Gateway if face == "http" else Etcdctl)(member.endpoint)


class Worker(threading.Thread):
    def __init__(self, name, face, history: History, targets, seed, stop: threading.Event,
                 pause: float):
        super().__init__(daemon=True, name=name)
        self.cname, self.face, self.h, self.targets = name, face, history, targets
        self.rng = random.Random(seed)
        self.stop_ev = stop
        self.pause = pause
        self.n = 0

    def member(self):
        ms = self.targets()
        return self.rng.choice(ms) if ms else None

    def do(self, kind, key, fn, member, **args):
        """Runs fn(client) as one recorded operation; returns the result dict or None."""
        op = self.h.invoke(self.cname, self.face, kind, key, member.name, **args)
        try:
            res = fn(_client(self.face, member))
        except ClientError as e:
            read = kind in (GET,)
            status = "fail" if read or e.definite else "unknown"
            self.h.complete(op, status, error=str(e)[-200:])
            return None
        self.h.complete(op, "ok", **res)
        return res

    def run(self):
        while not self.stop_ev.is_set():
            m = self.member()
            if m is None:
                time.sleep(0.05)
                continue
            try:
                self.one(m)
            except Exception as e:  # a bug in the client code: record it, keep going
                self.h.meta.setdefault("client_bugs", []).append(f"{self.cname}: {e!r}")
            time.sleep(self.pause * self.rng.random() * 2)

    def one(self, m):
        raise NotImplementedError


class KvWorker(Worker):
    """Random operations on `keys`; every written value is unique (client name + counter)."""

    def __init__(self, *a, keys, **kw):
        super().__init__(*a, **kw)
        self.keys = keys
        self.seen: dict = {}  # key -> (value, mod_revision) last read

    def one(self, m):
        key = self.rng.choice(self.keys)
        self.n += 1
        value = f"{self.cname}-{self.n}"
        r = self.rng.random()
        if r < 0.28:
            self.do(PUT, key, lambda c: c.put(key, value), m, value=value, lease=0)
        elif r < 0.50:
            res = self.do(GET, key, lambda c: c.get(key), m, serializable=False)
            if res:
                self.seen[key] = (res["value"], res["mod_revision"])
        elif r < 0.60:
            self.do(GET, key, lambda c: c.get(key, serializable=True), m, serializable=True)
        elif r < 0.68:
            self.do(DELETE, key, lambda c: c.delete(key), m)
        elif r < 0.88:
            expect = self.seen.get(key, (None, 0))[1]
            self.do(CAS_REV, key, lambda c: c.cas(key, True, expect, value), m, value=value,
                    expect=expect)
        else:
            expect = self.seen.get(key, (None, 0))[0] or "none"
            self.do(CAS_VALUE, key, lambda c: c.cas(key, False, expect, value), m,
                    value=value, expect=expect)


class LeaseWorker(Worker):
    """Grant (TTL `ttl`), put a key with the lease, 0 to 3 keepalives a second apart, then
    linearizable gets every 0.3 s until the key is gone (at most TTL + 8 s, also after the
    run's stop)."""

    def __init__(self, *a, prefix, ttl=3, **kw):
        super().__init__(*a, **kw)
        self.prefix = prefix
        self.ttl = ttl

    def one(self, m):
        self.n += 1
        g = self.do(LEASE_GRANT, None, lambda c: c.grant(self.ttl), m, ttl=self.ttl)
        if not g:
            return
        lease = g["lease"]
        key, value = f"{self.prefix}{self.cname}-{self.n}", f"{self.cname}-{self.n}"
        if not self.do(PUT, key, lambda c: c.put(key, value, lease), self.member() or m,
                       value=value, lease=lease):
            return
        for _ in range(self.rng.randint(0, 3)):
            if self.stop_ev.wait(1.0):
                return
            mm = self.member()
            if mm:
                self.do(LEASE_KEEPALIVE, None, lambda c: c.keepalive(lease), mm, lease=lease)
        # probe until the key is gone, even after the run's stop: every lease's end is seen
        deadline = time.monotonic() + self.ttl + 8
        while time.monotonic() < deadline:
            mm = self.member()
            if mm:
                res = self.do(GET, key, lambda c: c.get(key), mm, serializable=False,
                              lease_probe=True)
                if res and res["value"] is None:
                    return
            time.sleep(0.3)


# -------------------------------------------------------------------------------- watchers
def _event(watcher, ev: dict, now: float, typ_delete) -> Event:
    kv = ev.get("kv") or {}
    prev = ev.get("prev_kv")
    typ = "DELETE" if ev.get("type") in typ_delete else "PUT"
    return Event(watcher, int(kv.get("mod_revision", 0)), typ, unb64(kv.get("key")),
                 None if typ == "DELETE" else unb64(kv.get("value", "")),
                 unb64(prev.get("value", "")) if prev else None,
                 int(prev.get("mod_revision", 0)) if prev else None, now)


class GatewayWatcher(threading.Thread):
    """A streaming POST /v3/watch of the prefix with prev_kv. On a broken stream it records
    the error and opens a new one on another member from the last revision seen + 1."""

    def __init__(self, name, stream: WatchStream, targets, seed, stop: threading.Event):
        super().__init__(daemon=True, name=name)
        self.s, self.targets, self.stop_ev = stream, targets, stop
        self.rng = random.Random(seed)
        self.last = stream.start_revision - 1
        self.sock = None

    def run(self):
        while not self.stop_ev.is_set():
            ms = self.targets()
            if not ms:
                time.sleep(0.1)
                continue
            m = self.rng.choice(ms)
            try:
                self.stream(m)
            except (OSError, ValueError) as e:
                if not self.stop_ev.is_set():
                    self.s.errors.append((time.monotonic(), m.name, repr(e)[:200]))
            if not self.stop_ev.is_set():
                time.sleep(0.2)

    def stream(self, m):
        host, port = m.endpoint.split(":")
        start = self.last + 1
        req = json.dumps({"create_request": {"key": b64(self.s.prefix),
                                             "range_end": b64(_prefix_end(self.s.prefix)),
                                             "start_revision": str(start),
                                             "prev_kv": self.s.prev_kv}})
        sock = socket.create_connection((host, int(port)), timeout=2)
        self.sock = sock
        try:
            sock.sendall((f"POST /v3/watch HTTP/1.1\r\nHost: {m.endpoint}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(req)}\r\n"
                          f"\r\n{req}").encode())
            self.s.connects.append((time.monotonic(), start, m.name))
            reader = _ChunkedLines(sock, self.stop_ev)
            status = reader.headers()
            if " 200 " not in status:
                raise ValueError(f"watch answered {status!r}")
            for line in reader.lines():
                msg = json.loads(line)
                if "error" in msg:
                    raise ValueError(f"watch error {msg['error']}")
                res = msg.get("result") or {}
                if res.get("canceled"):
                    raise ValueError(f"watch canceled: {res}")
                now = time.monotonic()
                for ev in res.get("events") or []:
                    e = _event(self.s.name, ev, now, ("DELETE",))
                    self.s.events.append(e)
                    self.last = max(self.last, e.revision)
        finally:
            sock.close()


class _ChunkedLines:
    """Newline-separated JSON messages from an HTTP/1.1 response (chunked or not), read with
    a socket timeout so the reader can notice `stop`."""

    def __init__(self, sock, stop):
        self.sock, self.stop = sock, stop
        self.buf = b""
        self.chunked = False

    def _more(self):
        while True:
            if self.stop.is_set():
                raise OSError("stopped")
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise OSError("stream closed")
            self.buf += data
            return

    def headers(self) -> str:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.chunked = any(ln.lower().startswith("transfer-encoding:") and "chunked" in
                           ln.lower() for ln in lines[1:])
        return lines[0]

    def _body(self):
        """Yields body bytes as they come."""
        if not self.chunked:
            while True:
                if self.buf:
                    b, self.buf = self.buf, b""
                    yield b
                self._more()
        while True:
            while b"\r\n" not in self.buf:
                self._more()
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                raise OSError("stream ended")
            while len(rest) < size + 2:
                self.buf = rest
                self._more()
                rest = self.buf
            yield rest[:size]
            self.buf = rest[size + 2:]

    def lines(self):
        pending = b""
        for part in self._body():
            pending += part
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    yield line
            if pending.strip():
                try:
                    json.loads(pending)
                except ValueError:
                    continue
                yield pending
                pending = b""


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdctlWatcher(threading.Thread):
    """`etcdctl watch --prefix --rev --prev-kv -w json` on all endpoints (gRPC; the client
    library fails over and resumes by itself). If etcdctl exits, it is started again from the
    last revision seen + 1."""

    def __init__(self, name, stream: WatchStream, endpoints, stop: threading.Event):
        super().__init__(daemon=True, name=name)
        self.s, self.endpoints, self.stop_ev = stream, endpoints, stop
        self.last = stream.start_revision - 1
        self.proc = None

    def run(self):
        while not self.stop_ev.is_set():
            start = self.last + 1
            argv = [ETCDCTL_BIN, f"--endpoints={','.join(self.endpoints())}",
                    "--dial-timeout=2s", "watch", "--prefix", self.s.prefix,
                    f"--rev={start}", "-w", "json"] + (["--prev-kv"] if self.s.prev_kv else [])
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, env=etcdctl_env(),
                                         text=True)
            self.s.connects.append((time.monotonic(), start, "etcdctl"))
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                now = time.monotonic()
                for ev in msg.get("Events") or []:
                    e = _event(self.s.name, ev, now, (1,))
                    self.s.events.append(e)
                    self.last = max(self.last, e.revision)
            rc = self.proc.wait()
            if not self.stop_ev.is_set():
                self.s.errors.append((time.monotonic(), "etcdctl", f"exit {rc}: "
                                      f"{self.proc.stderr.read()[-200:]}"))
                time.sleep(0.3)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
