"""Small harness to run an etcd-compatible server and drive it with etcdctl.

Two kinds of server are supported:

* ``"etcd"``    -> the reference, ``/usr/bin/etcd`` (override with env ``ETCD``)
* ``"pgraftd"`` -> our server, env ``PGRAFTD`` or ``<repo>/target/debug/pgraftd``

Both are started with the same etcd-style flags, by default for a one-member cluster, on free
127.0.0.1 ports, with a fresh data dir in a private work dir.  A `Server` can also be one
member of a bigger cluster: cluster.py sets its ports, advertised peer URL, `--initial-cluster`
and state, and extra flags (see `Server.__init__`).  The server's stdout and
stderr go to ``<workdir>/server.log``; ``Server.log_tail()`` returns its end for failure
messages.  Every wait in here is bounded in time.
"""

from __future__ import annotations

import atexit
import collections
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
WORK_ROOT = HERE / ".work"  # git-ignored

ETCD_BIN = os.environ.get("ETCD", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("ETCDCTL", "/usr/bin/etcdctl")

KINDS = ("etcd", "pgraftd")

READY_TIMEOUT = float(os.environ.get("COMPAT_READY_TIMEOUT", "30"))
STOP_TIMEOUT = 10.0

_live_servers: "set[Server]" = set()



def thread_dump(pid: int, lines: int = 120) -> str:
    """The threads of a live process and their pgraft frames (gdb's backtraces, trimmed), for
    a member that stopped answering: what it waits on. Empty without gdb."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return ""
    try:
        cp = subprocess.run([gdb, "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"gdb failed: {e}"
    keep = [ln[:200] for ln in cp.stdout.splitlines()
            if ln.startswith("Thread ") or ("pgraft" in ln and " in " in ln)
            or "parking_lot" in ln and "lock" in ln or "fjall" in ln and " in " in ln]
    return "\n".join(keep[:lines])

class HarnessError(RuntimeError):
    pass


def pgraftd_path() -> Path:
    p = os.environ.get("PGRAFTD")
    if p:
        path = Path(p)
        if not path.is_absolute():
            path = REPO_ROOT / path
        return path
    return REPO_ROOT / "target" / "debug" / "pgraftd"


def server_binary(kind: str) -> Path:
    if kind == "etcd":
        path = Path(ETCD_BIN)
        hint = "install it with: apt-get install -y etcd-server etcd-client"
    elif kind == "pgraftd":
        path = pgraftd_path()
        hint = "build it with `cargo build --bins` at the repo root, or set PGRAFTD=/path/to/pgraftd"
    else:
        raise ValueError(f"unknown server kind {kind!r} (expected one of {KINDS})")
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise HarnessError(f"{kind} binary not found or not executable at {path}: {hint}")
    return path


def require_etcdctl() -> None:
    if not (Path(ETCDCTL_BIN).is_file() and os.access(ETCDCTL_BIN, os.X_OK)):
        raise HarnessError(
            f"etcdctl not found at {ETCDCTL_BIN}: apt-get install -y etcd-client"
        )


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def daemon_work_root() -> Path:
    """Where to put directories that daemons running as another OS user (PostgreSQL as
    `postgres`, when the tests run as root) must enter: WORK_ROOT when every directory above it
    lets others through, else /tmp (or $PGRAFT_DAEMON_TMP). A clone in /root (mode 700 on a
    fresh Debian) is not enterable by `postgres`."""
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return WORK_ROOT
    p = WORK_ROOT.resolve()
    for d in [p, *p.parents]:
        if not d.stat().st_mode & stat.S_IXOTH:
            return Path(os.environ.get("PGRAFT_DAEMON_TMP") or tempfile.gettempdir())
    return WORK_ROOT


# Ports handed out lately by free_ports, never handed out again while remembered: each call
# checks only that a port is free now, and a cluster picks its members' ports in several calls
# before it starts any of them, so two members could otherwise get the same port (one then
# fails with "Address already in use").
_HANDED_OUT: collections.deque = collections.deque(maxlen=4096)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral port range, none
    handed out by an earlier call of this process lately.

    Ports from the ephemeral range (what binding port 0 gives) can be taken, between the
    pick and the server's bind, as the source port of any outgoing connection (etcdctl, the
    members' own peer connections, the fault proxy): a restarted member would then fail with
    "Address already in use". Below that range no connection gets a port by chance. Each port
    is checked by binding it; all stay bound until the n are found."""
    lo, _ = _ephemeral_range()
    low, high = 10000, max(10001, min(lo, 65536))
    if high - low < 1000:  # an unusual range: fall back to the kernel's choice
        low = high = 0
    rng = random.SystemRandom()
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(200 * n):
            if len(ports) == n:
                break
            port = rng.randrange(low, high) if high else 0
            if port and (port in ports or port in _HANDED_OUT):
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            ports.append(s.getsockname()[1])
        if len(ports) < n:
            raise HarnessError(f"could not find {n} free ports on 127.0.0.1")
        _HANDED_OUT.extend(ports)
        return ports
    finally:
        for s in socks:
            s.close()


def tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def etcdctl_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl_argv(endpoints: str, *args: str) -> list[str]:
    """etcdctl's command line for `endpoints` ("host:port[,host:port...]")."""
    return [
        ETCDCTL_BIN,
        f"--endpoints={endpoints}",
        "--dial-timeout=2s",
        "--command-timeout=5s",
        *args,
    ]


def run_etcdctl(endpoints: str, *args: str, input: str | None = None, timeout: float = 20):
    """Run etcdctl against `endpoints` (any etcd v3 API, not only a `Server`); returns
    (returncode, stdout, stderr). stdin is /dev/null unless `input` is given. A run that
    outlives `timeout` is killed and reported as returncode None."""
    try:
        cp = subprocess.run(
            etcdctl_argv(endpoints, *args),
            input=input if input is not None else None,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=etcdctl_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err + f"\n[harness: killed after {timeout}s]"
    return cp.returncode, cp.stdout, cp.stderr


class Server:
    """One single-member server process (etcd or pgraftd)."""

    def __init__(
        self,
        kind: str,
        name: str = "compat",
        token: str = "compat-token",
        *,
        ports: tuple[int, int] | None = None,
        advertise_peer_url: str | None = None,
        initial_cluster: str | None = None,
        cluster_state: str = "new",
        extra_args: tuple[str, ...] | list[str] = (),
        ready_check: str = "health",
        workdir_parent: Path | None = None,
    ):
        """A server, not started yet.

        For a member of a bigger cluster: `ports` = (client, peer) to listen on (default: two
        free ports), `advertise_peer_url` (default: the peer listener's URL; a fault proxy's
        URL in partition tests), `initial_cluster` ("name=url,...", default: just this one),
        `cluster_state` ("new" or "existing"), `extra_args` appended to the command line, and
        `ready_check`: "health" (a linearizable read must succeed) or "status" (the member
        answers at all; for a learner, which serves no linearizable read).
        """
        self.kind = kind
        self.name = name
        self.token = token
        self.binary = server_binary(kind)
        require_etcdctl()
        parent = workdir_parent or WORK_ROOT
        parent.mkdir(parents=True, exist_ok=True)
        prefix = f"{kind}-" if workdir_parent is None else f"{name}-"
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self.client_port, self.peer_port = ports if ports else free_ports(2)
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.advertise_peer_url = advertise_peer_url or self.peer_url
        self.initial_cluster = initial_cluster or f"{self.name}={self.advertise_peer_url}"
        self.cluster_state = cluster_state
        self.extra_args = list(extra_args)
        # Variables added to the process's environment (the test process's own, inherited).
        self.env: dict[str, str] = {}
        if ready_check not in ("health", "status"):
            raise ValueError(f"ready_check {ready_check!r}: expected 'health' or 'status'")
        self.ready_check = ready_check
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0
        self.log_offset = 0  # where the log of the current (last) start begins

    # ----------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.advertise_peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", self.cluster_state,
            "--initial-cluster-token", self.token,
            "--log-level", os.environ.get("COMPAT_LOG_LEVEL", "info"),
            *self.extra_args,
        ]

    def start(self, timeout: float = READY_TIMEOUT, wait: bool = True) -> "Server":
        """Starts the process; with `wait`, also waits (bounded) until it is ready."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"{self.kind} already running (pid {self.proc.pid})")
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self.log_offset = self._log_file.tell()
        self._log_file.write(
            f"\n==== harness: start #{self.starts} at {time.strftime('%H:%M:%S')}: "
            f"{' '.join(self.command())}\n".encode()
        )
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            env={**os.environ, **self.env} if self.env else None,
        )
        _live_servers.add(self)
        if not wait:
            return self
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(cleanup=False)  # leave no process behind; keep data and log
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until a linearizable read succeeds (`etcdctl endpoint health`), or with
        ready_check "status", until `etcdctl endpoint status` answers."""
        deadline = time.monotonic() + timeout
        check = "health" if self.ready_check == "health" else "status"
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"{self.kind} exited with code {self.proc.returncode} before it was ready\n"
                    + self.log_tail()
                )
            if tcp_open(self.client_port):
                last = self.etcdctl("endpoint", check, timeout=10)
                if last[0] == 0:
                    return
            time.sleep(0.2)
        raise HarnessError(
            f"{self.kind} {self.name} not ready after {timeout:.0f}s on {self.endpoint}; "
            f"last `etcdctl endpoint {check}`: {last!r}\n" + self.log_tail()
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, wait: float = STOP_TIMEOUT) -> int | None:
        """Send `sig` to the server and wait (bounded) for it to exit; returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    raise HarnessError(f"{self.kind} pid {self.proc.pid} survived SIGKILL")
                return None
        self._close_log()
        return self.proc.returncode

    def restart(self, timeout: float = READY_TIMEOUT) -> "Server":
        """Stop (SIGTERM, then SIGKILL) if running, and start again on the same data dir and ports."""
        if self.alive():
            self.stop(cleanup=False)
        return self.start(timeout)

    def stop(self, cleanup: bool = True) -> None:
        """SIGTERM, bounded wait, then SIGKILL.  cleanup removes the data dir (the log stays)."""
        if self.proc is not None and self.proc.poll() is None:
            if self.kill(signal.SIGTERM, wait=STOP_TIMEOUT) is None:
                self.kill(signal.SIGKILL)
        self._close_log()
        _live_servers.discard(self)
        if cleanup:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ---------------------------------------------------------------- reporting
    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no server log: {e})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"---- last {lines} lines of {self.log_path} ----\n{tail}\n---- end of log ----"

    def log_since_start(self) -> str:
        """The log written since the current (or last) start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        state = "running" if self.alive() else (
            f"exited with {self.proc.returncode}" if self.proc else "not started")
        return (f"{self.kind} {self.name} ({self.binary}) on {self.endpoint}, {state}, "
                f"workdir {self.workdir}")

    # ------------------------------------------------------------------ etcdctl
    def etcdctl_argv(self, *args: str) -> list[str]:
        return etcdctl_argv(self.endpoint, *args)

    def etcdctl(self, *args: str, input: str | None = None, timeout: float = 20):
        """Run etcdctl against this server; returns (returncode, stdout, stderr).

        stdin is /dev/null unless `input` is given.  A run that outlives `timeout`
        is killed and reported as returncode None.
        """
        return run_etcdctl(self.endpoint, *args, input=input, timeout=timeout)

    def etcdctl_for(self, *args: str, seconds: float, input: str | None = None):
        """Run a long-running etcdctl command (e.g. watch) for `seconds`, then SIGKILL it.

        Returns (returncode, stdout, stderr); returncode is "killed" if it was still
        running when the time was up, else its own exit code.
        """
        p = self.popen_etcdctl(*args, input=input)
        return self.finish_popen(p, seconds)

    def popen_etcdctl(self, *args: str, input: str | None = None) -> subprocess.Popen:
        p = subprocess.Popen(
            self.etcdctl_argv(*args),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=etcdctl_env(),
        )
        if input is not None:
            p.stdin.write(input)
            p.stdin.flush()
        return p

    @staticmethod
    def finish_popen(p: subprocess.Popen, seconds: float):
        try:
            out, err = p.communicate(timeout=seconds)
            return p.returncode, out, err
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
            return "killed", out, err


def _cleanup_all() -> None:
    for s in list(_live_servers):
        try:
            s.stop(cleanup=True)
        except Exception:
            pass


atexit.register(_cleanup_all)
