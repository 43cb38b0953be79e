"""A fault-injecting TCP proxy between cluster members, for partition tests.

Each member advertises its peer URL as a port of this proxy, which forwards to the member's
real peer listener. Every connection to a member therefore passes here, so the proxy can cut
chosen members off from the rest, both ways:

* it knows which member a connection is *for* (the port it arrived on), and
* it finds which member a connection comes *from* by its source port: the socket with that
  local port in ``/proc/net/tcp`` has an inode, and the member process holding a descriptor for
  that inode is the sender (members are registered with their pids; Linux only).

Faults:

* ``partition(groups, mode)``: traffic flows only between members of the same group.
  ``isolate(*names)`` is ``partition([names, everyone else])``.
* ``mode="drop"``: a blocked connection is kept open and every byte is swallowed, both ways
  (like a black hole: senders see timeouts, not errors). Connections that were open when the
  fault began are swallowed from then on, and closed at ``heal()`` so both sides reconnect.
* ``mode="refuse"``: blocked connections are reset at once, new ones right after accept
  (senders see connection errors).
* ``one_way(senders, receivers)``: a one-way partition. Every byte a member in ``senders``
  sends to a member in ``receivers`` is swallowed, on any connection whichever side opened it;
  bytes the other way still flow. The connections that lost bytes are closed at ``heal()``.
  A connection whose sender is unknown loses the bytes that could be a sender's.
* ``heal()``: everything flows again.

Safety: it listens on 127.0.0.1 only and forwards only to 127.0.0.1 ports given to
``add_member``; it runs an asyncio loop in a daemon thread and stops by itself after
``lifetime`` seconds (or at ``close()``). Connections from a process that is not a registered
member are let through while no fault is set, and swallowed/refused while one is (counted in
``stats()["unknown_source"]``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass
class _Route:
    name: str
    target_port: int
    server: asyncio.AbstractServer | None = None
    port: int = 0


@dataclass(eq=False)
class _Conn:
    src: str | None  # member name of the sender, None if unknown
    dst: str  # member name of the receiver
    client_w: asyncio.StreamWriter
    upstream_w: asyncio.StreamWriter | None = None
    blackholed: bool = False
    lossy: bool = False  # a one-way fault swallowed some of its bytes
    tasks: list = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                _reset(w)


def _reset(w: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), so the other side sees the cut at once."""
    try:
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        w.transport.abort()
    except Exception:
        pass


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """Inode of the IPv4 socket 127.0.0.1:local_port -> 127.0.0.1:remote_port, from /proc."""
    want_local = f"0100007F:{local_port:04X}"
    want_remote = f"0100007F:{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[1] == want_local and parts[2] == want_remote:
                    inode = int(parts[9])
                    if inode:
                        return inode
    except OSError:
        return None
    return None


def _pid_holds_inode(pid: int, inode: int) -> bool:
    target = f"socket:[{inode}]"
    fd_dir = f"/proc/{pid}/fd"
    try:
        for fd in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{fd}") == target:
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


class FaultProxy:
    def __init__(self, lifetime: float = 600.0):
        self.lifetime = lifetime
        self._routes: dict[str, _Route] = {}
        self._pids: dict[str, int] = {}
        self._groups: list[set[str]] | None = None
        self._mode = "drop"
        self._one_way: set[tuple[str, str]] = set()
        self._conns: set[_Conn] = set()
        self._stats = {"accepted": 0, "blocked": 0, "unknown_source": 0, "bytes": 0,
                       "bytes_dropped": 0}
        self._events: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("fault proxy did not start")

    # ------------------------------------------------------------------ public API
    def add_member(self, name: str, target_port: int) -> int:
        """Starts forwarding a new 127.0.0.1 port (returned) to 127.0.0.1:target_port."""
        return self._call(self._add_member(name, target_port))

    def set_pid(self, name: str, pid: int) -> None:
        """Registers the process of member `name` (call after every (re)start)."""
        self._loop.call_soon_threadsafe(self._pids.__setitem__, name, pid)

    def port(self, name: str) -> int:
        return self._routes[name].port

    def partition(self, groups, mode: str = "drop") -> None:
        if mode not in ("drop", "refuse"):
            raise ValueError(f"mode {mode!r}: expected 'drop' or 'refuse'")
        groups = [set(g) for g in groups]
        self._call(self._set_fault(groups, mode))

    def isolate(self, *names: str, mode: str = "drop") -> None:
        others = set(self._routes) - set(names)
        self.partition([set(names), others], mode)

    def one_way(self, senders, receivers) -> None:
        """Swallows every byte from a member of `senders` to a member of `receivers`."""
        pairs = {(a, b) for a in senders for b in receivers if a != b}
        self._call(self._set_one_way(pairs))

    def heal(self) -> None:
        self._call(self._set_one_way(set()))
        self._call(self._set_fault(None, self._mode))

    def stats(self) -> dict:
        return dict(self._stats)

    def events(self) -> list[str]:
        return list(self._events)

    def describe(self) -> str:
        routes = ", ".join(f"{r.name}: :{r.port} -> :{r.target_port}"
                           for r in self._routes.values())
        fault = (f"partition {[sorted(g) for g in self._groups]} ({self._mode})"
                 if self._groups else "no fault")
        return f"fault proxy [{routes}], {fault}, stats {self._stats}\n" + \
            "\n".join(self._events[-20:])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        except RuntimeError:
            pass
        self._thread.join(10)

    # ------------------------------------------------------------------ internals
    def _call(self, coro, timeout: float = 10.0):
        if self._closed:
            coro.close()
            raise RuntimeError("fault proxy is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._started.set()
        try:
            await asyncio.wait_for(self._stop_event.wait(), self.lifetime)
        except asyncio.TimeoutError:
            self._events.append(f"lifetime of {self.lifetime}s is over: stopping")
        self._closed = True
        for r in self._routes.values():
            if r.server is not None:
                r.server.close()
        for c in list(self._conns):
            c.abort()
        for c in list(self._conns):
            for t in c.tasks:
                t.cancel()
        await asyncio.sleep(0)

    def _log(self, msg: str) -> None:
        self._events.append(f"{time.strftime('%H:%M:%S')} {msg}")

    async def _add_member(self, name: str, target_port: int) -> int:
        if name in self._routes:
            raise ValueError(f"member {name!r} already routed")
        route = _Route(name, target_port)
        route.server = await asyncio.start_server(
            lambda r, w: self._accept(route, r, w), HOST, 0)
        route.port = route.server.sockets[0].getsockname()[1]
        self._routes[name] = route
        return route.port

    def _source(self, peer_port: int, local_port: int) -> str | None:
        inode = _socket_inode(peer_port, local_port)
        if inode is None:
            return None
        for name, pid in self._pids.items():
            if _pid_holds_inode(pid, inode):
                return name
        return None

    def _blocked(self, src: str | None, dst: str) -> bool:
        if self._groups is None:
            return False
        if src is None:
            return True
        return not any(src in g and dst in g for g in self._groups)

    def _lost(self, direction) -> bool:
        """Whether a one-way fault swallows bytes going `direction` (from, to). A connection
        whose sender is unknown counts as from any sender, as partitions block it."""
        if not self._one_way:
            return False
        src, dst = direction
        if src is None:
            return any(b == dst for _, b in self._one_way)
        if dst is None:
            return any(a == src for a, _ in self._one_way)
        return direction in self._one_way

    async def _set_one_way(self, pairs) -> None:
        if pairs:
            self._log(f"one-way loss {sorted(pairs)}")
        elif self._one_way:
            self._log("heal one-way loss")
            for c in list(self._conns):
                if c.lossy:
                    c.abort()
        self._one_way = set(pairs)

    async def _set_fault(self, groups, mode) -> None:
        old_mode = self._mode
        self._groups = groups
        self._mode = mode
        if groups is None:
            self._log(f"heal (was {old_mode})")
            # Swallowed connections carry broken streams: cut them so both sides reconnect.
            for c in list(self._conns):
                if c.blackholed:
                    c.abort()
            return
        self._log(f"partition {[sorted(g) for g in groups]} mode {mode}")
        for c in list(self._conns):
            if self._blocked(c.src, c.dst):
                if mode == "refuse":
                    c.abort()
                else:
                    c.blackholed = True

    async def _accept(self, route: _Route, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self._stats["accepted"] += 1
        peer = writer.get_extra_info("peername")
        src = self._source(peer[1], route.port) if peer else None
        if src is None:
            self._stats["unknown_source"] += 1
        conn = _Conn(src, route.name, writer)
        self._conns.add(conn)
        try:
            if self._blocked(src, route.name):
                self._stats["blocked"] += 1
                if self._mode == "refuse":
                    conn.abort()
                    return
                conn.blackholed = True
                await self._swallow(reader)
                return
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(HOST, route.target_port), 2.0)
            except (OSError, asyncio.TimeoutError):
                conn.abort()  # the member is down: the sender sees a refused connection
                return
            conn.upstream_w = up_w
            if self._blocked(src, route.name):  # a fault began while connecting
                conn.abort()
                return
            t1 = asyncio.ensure_future(self._pump(conn, reader, up_w, (src, route.name)))
            t2 = asyncio.ensure_future(self._pump(conn, up_r, writer, (route.name, src)))
            conn.tasks = [t1, t2]
            done, pending = await asyncio.wait([t1, t2], return_when=asyncio.FIRST_COMPLETED)
            # One way ended. On an EOF (half close, passed on) wait for the other way; on an
            # error or a black hole, cut the whole connection.
            if pending and not conn.blackholed and all(t.result() == "eof" for t in done):
                await asyncio.wait(pending)
            if conn.blackholed or any(t.done() and t.result() != "eof" for t in (t1, t2)):
                conn.abort()
            else:
                self._close(conn)
            for t in (t1, t2):
                t.cancel()
        except Exception as e:  # never let one connection take the proxy down
            self._log(f"connection {src}->{route.name}: {e!r}")
            conn.abort()
        finally:
            self._conns.discard(conn)

    @staticmethod
    def _close(conn: _Conn) -> None:
        for w in (conn.client_w, conn.upstream_w):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                return
            self._stats["bytes_dropped"] += len(data)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, direction=(None, None)) -> str:
        """Copies one way (`direction` = (from member, to member)) until EOF ("eof") or an
        error ("error")."""
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    if conn.blackholed:
                        return "error"
                    try:
                        writer.write_eof()
                    except (OSError, RuntimeError):
                        return "error"
                    return "eof"
                if conn.blackholed or self._lost(direction):
                    conn.lossy = True
                    self._stats["bytes_dropped"] += len(data)
                    continue
                self._stats["bytes"] += len(data)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, RuntimeError):
            return "error"
