"""Patroni + PostgreSQL 15 nodes on an etcd v3 cluster (pgraftd or etcd), for test_patroni.py.

`PatroniCluster(etcd_endpoints, size=3)` writes one Patroni YAML config per node (DCS `etcd3`
with every endpoint in `hosts`, REST API and PostgreSQL on free 127.0.0.1 ports) and runs the
Patroni daemons, which run initdb / pg_basebackup / postgres themselves.

Users and paths. initdb and postgres refuse to run as root, so when the tests run as root every
Patroni daemon runs as the OS user `postgres` (env `PATRONI_OS_USER`), started directly with
`subprocess.Popen(user=..., group=...)` (no sudo/runuser wrapper, so the pid we hold is
Patroni's own). As any other user, they run as that user. The data dirs live in a private
temp dir under /tmp owned by that user (env `PATRONI_TMP` for another parent). The Patroni
executables are those of the virtualenv running pytest, resolved through symlinks
(`os.path.realpath(sys.prefix)`), or of env `PATRONI_VENV`; the postgres user must be able to
traverse every directory above them: `check_patroni_runnable()` checks that first and says
what to do (compat-tests/README.md, "Patroni"). Logs (Patroni's and PostgreSQL's stderr, one
file per node) go to `compat-tests/.work/patroni-XXXX/<node>.log`, written by the test process.

Cleanup (`stop()`, also at exit): SIGTERM to each Patroni's process group (Patroni stops its
PostgreSQL), a bounded wait, then SIGKILL to the Patroni group and to every process of the
postmaster's session (Patroni starts postgres with setsid, so postgres is not in Patroni's
process group; the postmaster pid comes from `postmaster.pid`, checked against
/proc/<pid>/cmdline). Only processes this module started (or their children) are signalled.
Every wait here has a deadline.
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness import WORK_ROOT, HarnessError, free_ports

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = ("postgres", "su-secret-pw")
REPLICATION = ("replicator", "repl-secret-pw")

_live: "set[PatroniCluster]" = set()


# ------------------------------------------------------------------------------ environment
def venv_dir() -> Path:
    v = os.environ.get("PATRONI_VENV")
    return Path(os.path.realpath(v if v else sys.prefix))


def patroni_bin() -> Path:
    return venv_dir() / "bin" / "patroni"


def patronictl_bin() -> Path:
    return venv_dir() / "bin" / "patronictl"


def run_as() -> tuple[int, int, str, str]:
    """(uid, gid, name, home) of the OS user the Patroni daemons run as."""
    if os.geteuid() == 0:
        name = os.environ.get("PATRONI_OS_USER", "postgres")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise HarnessError(f"OS user {name!r} does not exist; PostgreSQL refuses to run as "
                               f"root (apt-get install -y postgresql-15 creates `postgres`)")
    else:
        pw = pwd.getpwuid(os.geteuid())
    return pw.pw_uid, pw.pw_gid, pw.pw_name, pw.pw_dir


def _demote_kwargs() -> dict:
    uid, gid, _, _ = run_as()
    if os.geteuid() != 0:
        return {}
    return {"user": uid, "group": gid, "extra_groups": []}


def patroni_argv(*args: str) -> list[str]:
    """The command running Patroni: the virtualenv's interpreter on its `patroni` script, so
    that neither the script's shebang (the path pip saw, maybe a symlink in an unreadable
    directory) nor PATH matter."""
    return [str(venv_dir() / "bin" / "python"), str(patroni_bin()), *args]


def _not_traversable(path: Path) -> list[str]:
    """Directories above `path` (and the path itself, resolved) that others cannot enter."""
    out = []
    for p in [*reversed(path.parents), path]:
        try:
            mode = p.stat().st_mode
        except OSError:
            continue
        if p != path and not mode & 0o001:
            out.append(str(p))
    return out


def check_patroni_runnable() -> str:
    """Fails with a precise message if PostgreSQL 15 or Patroni cannot be run here as the
    daemon user; returns Patroni's version line."""
    for b in ("initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind"):
        if not os.access(PG_BIN / b, os.X_OK):
            raise HarnessError(f"{PG_BIN / b} not found: apt-get install -y postgresql-15 "
                               f"(or set PG_BIN)")
    exe = patroni_bin()
    if not exe.is_file():
        raise HarnessError(
            f"Patroni is not installed at {exe}: {venv_dir()}/bin/pip install -r "
            f"compat-tests/requirements.txt (needs patroni[etcd3] and psycopg2-binary), or set "
            f"PATRONI_VENV to a virtualenv that has it")
    _, _, user, _ = run_as()
    err = ""
    try:
        cp = subprocess.run(patroni_argv("--version"), capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, cwd="/", **_demote_kwargs())
    except (OSError, subprocess.SubprocessError) as e:
        cp = None
        err = repr(e)
    if cp is None or cp.returncode != 0:
        detail = err if cp is None else f"exit {cp.returncode}: {cp.stderr.strip()[-800:]}"
        interp = Path(os.path.realpath(venv_dir() / "bin" / "python"))
        blocked = sorted(set(_not_traversable(exe) + _not_traversable(interp)))
        raise HarnessError(
            f"OS user {user!r} cannot run Patroni from {venv_dir()} ({detail}). It needs to "
            f"enter every directory above the virtualenv and above its interpreter {interp}; "
            f"not enterable by others: {blocked}. Make the virtualenv with /usr/bin/python3 in "
            f"a readable place (.ci/run makes /opt/pgraft-venv and links .venv to it), or set "
            f"PATRONI_VENV. See compat-tests/README.md, \"Patroni\".")
    return cp.stdout.strip()


def http_json(url: str, timeout: float = 2.0, method: str = "GET", body=None):
    """(status, parsed JSON or text) of an HTTP request; status None if no answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, ValueError) as e:
        return None, repr(e)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def _proc_sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...; comm may contain spaces and parentheses
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[3])


def _pids_in_session(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and _proc_sid(int(d.name)) == sid:
            out.append(int(d.name))
    return out


def postmaster_pid(data_dir: Path) -> int | None:
    """The running postmaster of `data_dir` (from its postmaster.pid, checked against /proc:
    alive and started on that data dir), or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if str(data_dir).encode() not in cmd or not _alive(pid):
        return None
    return pid


def kill_postmaster(pid: int, name: str, wait: float = 10.0) -> int:
    """SIGKILL to the postmaster `pid` only (its children notice and exit by themselves); waits
    (bounded) until it is gone. Returns the pid."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        raise HarnessError(f"postmaster {pid} of {name} survived SIGKILL")
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------ nodes
class PatroniNode:
    def __init__(self, cluster: "PatroniCluster", name: str, rest_port: int, pg_port: int):
        self.cluster = cluster
        self.name = name
        self.rest_port = rest_port
        self.pg_port = pg_port
        self.dir = cluster.tmpdir / name  # owned by the daemon user
        self.data_dir = self.dir / "data"
        self.cfg_path = self.dir / "patroni.yml"
        self.log_path = cluster.workdir / f"{name}.log"
        self.rest_url = f"http://127.0.0.1:{rest_port}"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0
        self.log_offset = 0

    # ------------------------------------------------------------------ config
    def config(self) -> dict:
        c = self.cluster
        return {
            "scope": c.scope,
            "namespace": c.namespace,
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}",
                        "connect_address": f"127.0.0.1:{self.rest_port}"},
            "etcd3": {"hosts": list(c.etcd_endpoints), **c.etcd3_auth},
            "bootstrap": {
                "dcs": {
                    "ttl": c.ttl, "loop_wait": c.loop_wait, "retry_timeout": c.retry_timeout,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica", "hot_standby": "on",
                            "max_wal_senders": 10, "max_replication_slots": 10,
                            "wal_keep_size": "128MB", "wal_log_hints": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(PG_BIN),
                "pgpass": str(self.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER[0], "password": SUPERUSER[1]},
                    "replication": {"username": REPLICATION[0], "password": REPLICATION[1]},
                },
                "parameters": {
                    "unix_socket_directories": str(self.dir),
                    "shared_buffers": "32MB",
                    "max_connections": 30,
                },
                "pg_hba": [
                    "local all all trust",
                    "local replication all trust",
                    f"host replication {REPLICATION[0]} 127.0.0.1/32 md5",
                    "host all all 127.0.0.1/32 md5",
                ],
            },
        }

    def write_config(self) -> None:
        # JSON is YAML; Patroni reads it with yaml.safe_load
        self.cfg_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        os.chmod(self.cfg_path, 0o600)
        if os.geteuid() == 0:
            os.chown(self.cfg_path, self.cluster.uid, self.cluster.gid)

    # --------------------------------------------------------------- lifecycle
    def start(self) -> "PatroniNode":
        if self.alive():
            raise HarnessError(f"patroni {self.name} already running (pid {self.proc.pid})")
        self.starts += 1
        self._log = open(self.log_path, "ab", buffering=0)
        self.log_offset = self._log.tell()
        self._log.write(f"\n==== harness: patroni {self.name} start #{self.starts} at "
                        f"{time.strftime('%H:%M:%S')}\n".encode())
        env = {"PATH": f"{PG_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.dir),
               "USER": self.cluster.user, "LOGNAME": self.cluster.user, "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            patroni_argv(str(self.cfg_path)),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=str(self.dir), env=env, start_new_session=True, **_demote_kwargs())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def postmaster_pid(self) -> int | None:
        """The running postmaster of this node's data dir, or None."""
        return postmaster_pid(self.data_dir)

    def remote_ports(self) -> dict[int, int]:
        """{remote port: count} of the Patroni daemon's established TCP connections to
        127.0.0.1 (its DCS connections are among them: the request pool and the watch)."""
        if not self.alive():
            return {}
        inodes = set()
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    link = os.readlink(fd)
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
            lines = Path(f"/proc/{self.proc.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return {}
        out: dict[int, int] = {}
        for ln in lines:
            f = ln.split()
            remote, state, inode = f[2], f[3], f[9]
            if state == "01" and inode in inodes and remote.startswith("0100007F:"):
                port = int(remote.split(":")[1], 16)
                out[port] = out.get(port, 0) + 1
        return out

    def kill_patroni(self, sig: int = signal.SIGKILL, wait: float = 10.0) -> None:
        """Signals the Patroni daemon only (not its process group)."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    raise HarnessError(f"patroni {self.name} survived SIGKILL")

    def kill_postmaster(self, wait: float = 10.0) -> int | None:
        """SIGKILL to the postmaster (its children notice and exit by themselves). Returns the
        pid killed."""
        pid = self.postmaster_pid()
        if pid is None:
            return None
        return kill_postmaster(pid, self.name, wait)

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout: float = 20.0) -> None:
        """Stops Patroni (and its PostgreSQL) gracefully, then by force; bounded."""
        pm = self.postmaster_pid()
        sid = _proc_sid(pm) if pm else None
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # whatever PostgreSQL processes are left: the postmaster's whole session
        pm = self.postmaster_pid() or pm
        sid = (_proc_sid(pm) if pm else None) or sid
        if sid and sid > 1 and sid != os.getsid(0):
            for pid in _pids_in_session(sid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None

    # --------------------------------------------------------------- reporting
    def rest(self, path: str, timeout: float = 2.0, method: str = "GET", body=None):
        return http_json(self.rest_url + path, timeout=timeout, method=method, body=body)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"---- last {lines} lines of {self.log_path} ----\n{tail}\n---- end of log ----"

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def describe(self) -> str:
        st = ("running" if self.alive() else
              f"exited with {self.proc.returncode}" if self.proc else "not started")
        return (f"patroni {self.name}: pid {self.pid}, {st}, REST {self.rest_url}, postgres "
                f"127.0.0.1:{self.pg_port} (postmaster {self.postmaster_pid()}), data "
                f"{self.data_dir}, log {self.log_path}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


# ---------------------------------------------------------------------------------- cluster
class PatroniCluster:
    def __init__(self, etcd_endpoints: list[str], size: int = 3, *, ttl: int = 20,
                 loop_wait: int = 2, retry_timeout: int = 5, etcd3_auth: dict | None = None):
        """`etcd3_auth`: extra `etcd3` settings, e.g. {"username": ..., "password": ...}."""
        self.uid, self.gid, self.user, _ = run_as()
        self.etcd3_auth = dict(etcd3_auth or {})
        self.etcd_endpoints = list(etcd_endpoints)
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        tag = f"{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.scope = f"pgraft-{tag}"
        self.namespace = "/pgraft-compat/"
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="patroni-", dir=WORK_ROOT))
        parent = os.environ.get("PATRONI_TMP") or "/tmp"
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgraft-patroni-", dir=parent))
        os.chmod(self.tmpdir, 0o755)
        ports = free_ports(2 * size)
        self.nodes = [PatroniNode(self, f"pg{i + 1}", ports[2 * i], ports[2 * i + 1])
                      for i in range(size)]
        for n in self.nodes:
            n.dir.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(n.dir, self.uid, self.gid)
            n.write_config()
        # patronictl (run by the test process) gets its own copy of the config
        self.ctl_cfg = self.workdir / "patronictl.yml"
        self.ctl_cfg.write_text(json.dumps(self.nodes[0].config(), indent=2) + "\n")
        _live.add(self)

    def start(self) -> "PatroniCluster":
        for n in self.nodes:
            n.start()
        return self

    def stop(self, cleanup: bool = True) -> None:
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                pass
        _live.discard(self)
        if cleanup:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def node(self, name: str) -> PatroniNode:
        return next(n for n in self.nodes if n.name == name)

    # ---------------------------------------------------------------- patronictl
    def patronictl(self, *args: str, timeout: float = 60):
        """(rc, stdout, stderr) of patronictl with the cluster's config."""
        argv = [str(patronictl_bin()), "-c", str(self.ctl_cfg), *args]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, out, f"[killed after {timeout}s]"
        return cp.returncode, cp.stdout, cp.stderr

    def list(self) -> list[dict]:
        """`patronictl list -f json` (raises AssertionError with its output on failure)."""
        rc, out, err = self.patronictl("list", "-f", "json", timeout=30)
        assert rc == 0, f"patronictl list: exit {rc}\n{out}\n{err}"
        return json.loads(out)

    def rest_cluster(self) -> tuple[str | None, dict | None]:
        """(node asked, GET /cluster) from the first running node that answers."""
        for n in self.nodes:
            if n.alive():
                st, body = n.rest("/cluster")
                if st == 200 and isinstance(body, dict):
                    return n.name, body
        return None, None

    def wait_healthy(self, timeout: float, replicas: int = 2, exclude=()) -> tuple[str, list]:
        """Waits until `patronictl list` shows one Leader (running) and `replicas` Replicas in
        state streaming, all on the leader's timeline, and the REST /cluster of a node agrees.
        Returns (leader name, the list)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                rows = self.list()
            except (AssertionError, ValueError) as e:
                last = str(e)
                time.sleep(1)
                continue
            last = rows
            rows = [r for r in rows if r.get("Member") not in exclude]
            leaders = [r for r in rows if r.get("Role") == "Leader" and r.get("State") == "running"]
            reps = [r for r in rows if r.get("Role") == "Replica" and r.get("State") == "streaming"]
            if len(leaders) == 1 and len(reps) == replicas and \
                    all(r.get("TL") == leaders[0].get("TL") for r in reps):
                asked, cl = self.rest_cluster()
                if cl:
                    roles = {m["name"]: (m.get("role"), m.get("state")) for m in cl["members"]}
                    if roles.get(leaders[0]["Member"]) == ("leader", "running") and sum(
                            1 for r in reps if roles.get(r["Member"]) == ("replica", "streaming")
                    ) == replicas:
                        return leaders[0]["Member"], rows
                    last = (rows, f"REST /cluster on {asked}", cl)
            time.sleep(1)
        raise AssertionError(f"Patroni cluster not healthy (1 leader + {replicas} streaming "
                             f"replicas) within {timeout}s; last: {last}")

    # ------------------------------------------------------------------- reporting
    def describe(self) -> str:
        lines = [f"patroni cluster scope {self.scope} namespace {self.namespace}, etcd "
                 f"{self.etcd_endpoints}, data {self.tmpdir}, logs {self.workdir}, daemons as "
                 f"{self.user}"]
        lines += [n.describe() for n in self.nodes]
        rc, out, err = self.patronictl("list", timeout=20)
        lines.append(f"patronictl list: exit {rc}\n{out}{err[-2000:]}")
        return "\n".join(lines)

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"{n.describe()}\n{n.log_tail(lines)}" for n in self.nodes)


def pg_connect(node: PatroniNode, timeout: int = 3):
    """A psycopg2 connection (autocommit) to the node's PostgreSQL, as the superuser."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=node.pg_port, user=SUPERUSER[0],
                            password=SUPERUSER[1], dbname="postgres", connect_timeout=timeout)
    conn.autocommit = True
    return conn


def pg_query(node: PatroniNode, sql: str, args=None, timeout: int = 3):
    """Rows of one statement (None for statements without a result), on a fresh connection."""
    conn = pg_connect(node, timeout)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def _cleanup_all() -> None:
    for c in list(_live):
        try:
            c.stop(cleanup=True)
        except Exception:
            pass


atexit.register(_cleanup_all)
