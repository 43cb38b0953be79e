"""Plain PostgreSQL 15 instances (initdb / pg_ctl, no Patroni), for the pgraft extension tests
(test_pgext_member.py, test_pgext_client.py).

`PgCluster(size, conf=...)` makes instances n1..nN in one work dir
`compat-tests/.work/<prefix>-XXXX/`, each in its own sub dir `<name>/` owned by the daemon user
(`data/` = PGDATA, `postgres.log` = the server's output through `pg_ctl -l`, the unix socket).
Every instance listens on 127.0.0.1 on a free port (harness.free_ports). `conf(instance)`
returns extra postgresql.conf lines; they go to `<PGDATA>/compat.conf`, included from
postgresql.conf, so `PgInstance.set_conf()` + `restart()` changes them later.

Users and processes: as in patroni_cluster.py (whose `run_as()` and process helpers are used
here), initdb and postgres run as the OS user `postgres` when the tests run as root, started
with `subprocess.run(user=..., group=...)`. Each instance keeps track of its processes: the
postmaster (from postmaster.pid, checked against /proc) and its children (by parent pid, seen
whenever the instance is looked at; each PostgreSQL child calls setsid(), so sessions do not
group them), each identified by pid and start time so that a reused pid is not mistaken for
one. `kill9()` sends SIGKILL to the postmaster only (its children notice by themselves), and
the cleanup (`PgCluster.stop()`, also at exit) stops each instance with `pg_ctl stop -m fast`,
then SIGKILLs whatever tracked process is left. Every wait has a deadline.

`sql(instance, *statements)` runs psql (`-h 127.0.0.1 -p PORT -U postgres -d postgres -XAtq`),
one `-c` per statement, and returns stdout without its last newline; on failure it raises
`SqlError` (an AssertionError) carrying psql's stderr. `try_sql()` returns (rc, stdout, stderr).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness import HarnessError, daemon_work_root, free_ports
from patroni_cluster import (PG_BIN, _alive as pid_alive, _demote_kwargs as demote_kwargs,
                             kill_postmaster, postmaster_pid, run_as)

PSQL = Path(os.environ.get("PSQL", str(PG_BIN / "psql")))
PGEXT_CONTROL = Path(os.environ.get("PGRAFT_CONTROL",
                                    "/usr/share/postgresql/15/extension/pgraft.control"))

_live: "set[PgCluster]" = set()


class SqlError(AssertionError):
    """A psql call that failed; `stderr` is psql's error output."""

    def __init__(self, msg: str, stderr: str = "", rc=None):
        super().__init__(msg)
        self.stderr = stderr
        self.rc = rc


def check_pg_binaries() -> None:
    for b in ("initdb", "pg_ctl", "postgres"):
        if not os.access(PG_BIN / b, os.X_OK):
            raise HarnessError(f"{PG_BIN / b} not found: apt-get install -y postgresql-15 "
                               f"(or set PG_BIN)")
    if not os.access(PSQL, os.X_OK):
        raise HarnessError(f"psql not found at {PSQL} (set PSQL)")


def pgext_missing_reason() -> str | None:
    """Why the pgraft extension cannot be tested here (None if it is installed)."""
    if not PGEXT_CONTROL.is_file():
        return (f"the pgraft extension is not installed ({PGEXT_CONTROL} is missing): build and "
                f"install it with `cargo pgrx install` in pgext/ (PGRAFT_REQUIRE_PGEXT=1 makes "
                f"this a failure)")
    lib = PG_BIN.parent / "lib" / "pgraft.so"
    if not lib.is_file():
        return f"{PGEXT_CONTROL} exists but {lib} does not"
    return None


def pgext_required() -> bool:
    return os.environ.get("PGRAFT_REQUIRE_PGEXT", "") not in ("", "0", "false", "no")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ... starttime is field 22; comm may hold spaces and parentheses
    f = text[text.rindex(")") + 2:].split()
    try:
        return f[0], int(f[1]), int(f[19])
    except (IndexError, ValueError):
        return None


class PgInstance:
    """One PostgreSQL server: its dir, port, config and pg_ctl lifecycle."""

    def __init__(self, cluster: "PgCluster", name: str, port: int):
        self.cluster = cluster
        self.name = name
        self.port = port
        self.dir = cluster.workdir / name  # owned by the daemon user
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.extra_conf: list[str] = []
        self.starts = 0
        self.log_offset = 0
        self.tracked: dict[int, int] = {}  # pid -> start time: the postmaster and its children

    # ------------------------------------------------------------------ setup
    def _run(self, argv: list[str], timeout: float) -> tuple[int | None, str, str]:
        env = {"PATH": f"{PG_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": str(self.dir), "USER": self.cluster.user, "LOGNAME": self.cluster.user}
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, cwd=str(self.dir), env=env,
                                **demote_kwargs())
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return None, out, err + f"\n[pg_cluster: killed after {timeout}s]"
        return cp.returncode, cp.stdout, cp.stderr

    def initdb(self) -> None:
        self.dir.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(self.dir, self.cluster.uid, self.cluster.gid)
        rc, out, err = self._run([str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-A", "trust",
                                  "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync",
                                  "--no-instructions"], timeout=120)
        if rc != 0:
            raise HarnessError(f"initdb of {self.name} failed (exit {rc}):\n{out}\n{err}")
        with open(self.data_dir / "postgresql.conf", "a") as f:
            f.write("\ninclude_if_exists = 'compat.conf'\n")

    def set_conf(self, lines: list[str]) -> None:
        """Writes the instance's settings (the base ones plus `lines`) to compat.conf; they take
        effect at the next start."""
        self.extra_conf = list(lines)
        base = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.dir}'",
            "max_connections = 30",
            "shared_buffers = '16MB'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "log_min_messages = info",
            "log_line_prefix = '%m [%p] %b '",
        ]
        path = self.data_dir / "compat.conf"
        path.write_text("\n".join(base + self.extra_conf) + "\n")
        if os.geteuid() == 0:
            os.chown(path, self.cluster.uid, self.cluster.gid)

    # -------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60, check: bool = True) -> tuple[int | None, str, str]:
        """`pg_ctl start -w`. With `check`, raises HarnessError (with the log) if it fails;
        else returns (rc, stdout, stderr)."""
        if self.postmaster_pid() is not None:
            raise HarnessError(f"{self.name} is already running ({self.postmaster_pid()})")
        self._wait_stale_postmaster_reaped()
        self.starts += 1
        self.log_offset = self.log_size()
        with open(self.log_path, "ab") as f:
            f.write(f"\n==== pg_cluster: start #{self.starts} of {self.name} at "
                    f"{time.strftime('%H:%M:%S')}\n".encode())
        if os.geteuid() == 0:
            os.chown(self.log_path, self.cluster.uid, self.cluster.gid)
        res = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-l",
                         str(self.log_path), "-w", "-t", str(int(timeout)), "start"],
                        timeout=timeout + 10)
        self.track()
        if check and res[0] != 0:
            raise HarnessError(f"pg_ctl start of {self.name} failed (exit {res[0]}):\n"
                               f"{res[1]}{res[2]}\n{self.log_tail()}")
        return res

    def stop(self, mode: str = "fast", timeout: float = 30) -> tuple[int | None, str, str]:
        """`pg_ctl stop -m <mode> -w`; raises HarnessError if it fails."""
        res = self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                         "-t", str(int(timeout)), "stop"], timeout=timeout + 10)
        if res[0] != 0:
            raise HarnessError(f"pg_ctl stop of {self.name} failed (exit {res[0]}):\n"
                               f"{res[1]}{res[2]}\n{self.log_tail()}")
        return res

    def restart(self, timeout: float = 60) -> None:
        if self.postmaster_pid() is not None:
            self.stop()
        self.wait_processes_gone(timeout=15)
        self.start(timeout=timeout)

    def postmaster_pid(self) -> int | None:
        """The running postmaster of this data dir, or None."""
        return postmaster_pid(self.data_dir)

    def _wait_stale_postmaster_reaped(self, timeout: float = 15) -> None:
        """After a kill -9 the dead postmaster stays a zombie until init reaps it (here about
        2 s later), and a new postmaster takes a zombie for a live owner of postmaster.pid:
        wait (bounded) until the pid recorded there is fully gone."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists() and not pid_alive(pid) and \
                time.monotonic() < deadline:
            time.sleep(0.05)

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def kill9(self, wait: float = 10.0) -> int:
        """SIGKILL to the postmaster only; waits (bounded) until it is gone. Returns its pid."""
        self.track()
        pid = self.postmaster_pid()
        if pid is None:
            raise HarnessError(f"{self.name}: no running postmaster to kill")
        return kill_postmaster(pid, self.name, wait)

    def kill9_all(self, wait: float = 10.0) -> list[int]:
        """SIGKILL to every process of the instance at once, like a host crash: no process gets
        to clean up or to notice the others' death. The postmaster is frozen first (SIGSTOP),
        so that it neither restarts children nor forks new ones meanwhile; then its children
        and itself get SIGKILL. Returns the pids."""
        pm = self.postmaster_pid()
        if pm is None:
            raise HarnessError(f"{self.name}: no running postmaster to kill")
        os.kill(pm, signal.SIGSTOP)
        deadline = time.monotonic() + wait
        while (_stat(pm) or ("T",))[0] not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.005)
        pids = [p for p in self.processes() if p != pm] + [pm]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.processes():
            raise HarnessError(f"{self.name}: survived SIGKILL: {self.processes_describe()}")
        return pids

    def track(self) -> None:
        """Adds the running postmaster and its current children to the tracked processes."""
        pm = self.postmaster_pid()
        if pm is None:
            return
        st = _stat(pm)
        if st:
            self.tracked[pm] = st[2]
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                st = _stat(int(d.name))
                if st and st[1] == pm:
                    self.tracked[int(d.name)] = st[2]

    def processes(self) -> list[int]:
        """Tracked processes (postmaster and children) still alive (zombies count as gone)."""
        self.track()
        alive = []
        for pid, start in list(self.tracked.items()):
            st = _stat(pid)
            if st is None or st[2] != start:
                self.tracked.pop(pid, None)
            elif st[0] != "Z":
                alive.append(pid)
        return alive

    def processes_describe(self) -> str:
        out = []
        for p in self.processes():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                cmd = "?"
            out.append(f"{p}: {cmd.strip()}")
        return "; ".join(out) or "(none)"

    def wait_processes_gone(self, timeout: float = 15) -> float:
        """Waits until no tracked process is left (after a kill -9 of the postmaster, its
        children exit by themselves); returns the seconds waited. Raises AssertionError with the
        survivors if they outlive `timeout`."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.processes():
            raise AssertionError(f"{self.name}: processes of the dead postmaster still running "
                                 f"{timeout}s later: {self.processes_describe()}")
        return time.monotonic() - t0

    def cleanup(self) -> None:
        """Stops the instance whatever its state: pg_ctl stop -m fast (bounded), then SIGKILL
        to every tracked process left."""
        self.track()
        if self.postmaster_pid() is not None:
            try:
                self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                           "-w", "-t", "20", "stop"], timeout=30)
            except Exception:  # noqa: BLE001
                pass
        for p in self.processes():
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)

    def remove_stale_shm(self) -> None:
        """After a kill -9 that no restart followed, the SysV shared memory segment named in the
        stale postmaster.pid stays behind: remove it if nobody is attached."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            shmid = int(lines[6].split()[1])
        except (OSError, ValueError, IndexError):
            return
        if self.postmaster_pid() is not None:
            return
        try:
            for ln in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]:
                f = ln.split()
                if int(f[1]) == shmid and int(f[6]) == 0:
                    subprocess.run(["ipcrm", "-m", str(shmid)], capture_output=True, timeout=10)
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass

    # -------------------------------------------------------------- reporting
    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int | None = None) -> str:
        """The log from `offset` (default: where the last start began)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset if offset is None else offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"---- last {lines} lines of {self.log_path} ----\n{tail}\n---- end of log ----"

    def describe(self) -> str:
        pid = self.postmaster_pid()
        st = f"running (postmaster {pid})" if pid else "not running"
        return f"postgres {self.name} on 127.0.0.1:{self.port}, {st}, data {self.data_dir}"


class PgCluster:
    """`size` PostgreSQL instances n1..nN, initdb'd and configured (not started)."""

    def __init__(self, size: int, *, conf=None, prefix: str = "pg", names=None):
        check_pg_binaries()
        self.uid, self.gid, self.user, _ = run_as()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=daemon_work_root()))
        os.chmod(self.workdir, 0o755)  # the daemon user enters it
        names = list(names) if names else [f"n{i + 1}" for i in range(size)]
        ports = free_ports(len(names))
        self.instances = [PgInstance(self, n, p) for n, p in zip(names, ports)]
        _live.add(self)
        try:
            for inst in self.instances:
                inst.initdb()
                inst.set_conf(conf(inst) if conf else [])
        except BaseException:
            self.stop()
            raise

    def __iter__(self):
        return iter(self.instances)

    def instance(self, name: str) -> PgInstance:
        return next(i for i in self.instances if i.name == name)

    def start(self, timeout: float = 60) -> "PgCluster":
        try:
            for inst in self.instances:
                inst.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, cleanup: bool = True) -> None:
        """Stops every instance (see PgInstance.cleanup); `cleanup` also removes the data dirs
        (the logs stay)."""
        for inst in self.instances:
            try:
                inst.cleanup()
            except Exception:  # noqa: BLE001
                pass
        _live.discard(self)
        if cleanup:
            for inst in self.instances:
                inst.remove_stale_shm()
                shutil.rmtree(inst.data_dir, ignore_errors=True)

    def describe(self) -> str:
        return "\n".join([f"postgres instances in {self.workdir}"] +
                         [i.describe() for i in self.instances])

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"{i.describe()}\n{i.log_tail(lines)}" for i in self.instances)


# ------------------------------------------------------------------------------------ psql
def try_sql(inst: PgInstance, *statements: str, timeout: float = 30,
            dbname: str = "postgres") -> tuple[int | None, str, str]:
    """(rc, stdout, stderr) of psql running `statements` (one -c each, ON_ERROR_STOP)."""
    argv = [str(PSQL), "-h", "127.0.0.1", "-p", str(inst.port), "-U", "postgres", "-d", dbname,
            "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]
    for s in statements:
        argv += ["-c", s]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PGCONNECT_TIMEOUT": "5",
           "PGAPPNAME": "compat-tests"}
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out, f"[pg_cluster: psql killed after {timeout}s]"
    return cp.returncode, cp.stdout, cp.stderr


def sql(inst: PgInstance, *statements: str, timeout: float = 30, dbname: str = "postgres") -> str:
    """stdout of psql running `statements` (last newline removed); raises SqlError with psql's
    stderr if it fails."""
    rc, out, err = try_sql(inst, *statements, timeout=timeout, dbname=dbname)
    if rc != 0:
        raise SqlError(f"psql on {inst.name} (127.0.0.1:{inst.port}) exit {rc}: "
                       f"{' ; '.join(statements)[:300]}\n{err.strip()}", stderr=err, rc=rc)
    return out[:-1] if out.endswith("\n") else out


def sql_rows(inst: PgInstance, *statements: str, timeout: float = 30) -> list[list[str]]:
    """The result of `sql()` split into rows of '|'-separated fields."""
    out = sql(inst, *statements, timeout=timeout)
    return [ln.split("|") for ln in out.splitlines()] if out else []


def wait_for(what: str, fn, timeout: float, every: float = 0.1):
    """Calls fn() until it returns a truthy value (returned); AssertionError after `timeout`
    with the last value or error."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            last = v
        except (AssertionError, HarnessError, OSError) as e:
            v, last = None, f"{type(e).__name__}: {str(e)[-500:]}"
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last: {last}")
        time.sleep(every)


def _cleanup_all() -> None:
    for c in list(_live):
        try:
            c.stop(cleanup=True)
        except Exception:  # noqa: BLE001
            pass


atexit.register(_cleanup_all)
