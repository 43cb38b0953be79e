"""N-member clusters of real server processes, built on harness.Server, for the cluster tests.

`Cluster(kind, size)` makes `size` members named m1, m2, ... from one `--initial-cluster`, each
a `harness.Server` (its own work dir, log, free 127.0.0.1 ports) in one cluster work dir. With
`proxy=True` every member advertises its peer URL as a port of a `faultproxy.FaultProxy` that
forwards to the member's real peer listener, so tests can partition the cluster.

Also here: etcdctl helpers that parse `-w json` answers (`status`, `member_list`, `dump`), waits
with deadlines (`wait_leader`, `wait_converged`, ...), a `Writer` that keeps putting unique
keys from threads and records every acknowledged write, and `probe_first_write` that measures
how long after a fault the first write succeeds. Every wait here has a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from faultproxy import FaultProxy
import subprocess

from harness import (ETCDCTL_BIN, READY_TIMEOUT, WORK_ROOT, HarnessError, Server, etcdctl_env,
                     free_ports)

ELECTION_MS = int(os.environ.get("COMPAT_ELECTION_MS", "1000"))
HEARTBEAT_MS = int(os.environ.get("COMPAT_HEARTBEAT_MS", "100"))


# ----------------------------------------------------------------------- etcdctl helpers
def ok(res, what: str) -> str:
    rc, out, err = res
    assert rc == 0, f"{what}: exit {rc}\nstdout: {out}\nstderr: {err}"
    return out


def last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def put(s: Server, key: str, value: str, command_timeout: str = "5s", timeout: float = 20):
    """(rc, stdout, stderr) of `etcdctl put`."""
    return s.etcdctl(f"--command-timeout={command_timeout}", "put", key, value, timeout=timeout)


def get(s: Server, key: str, serializable: bool = False, command_timeout: str = "5s",
        timeout: float = 20):
    """(rc, value or None, stderr) of `etcdctl get` of one key."""
    args = [f"--command-timeout={command_timeout}", "get", key, "-w", "json"]
    if serializable:
        args.append("--consistency=s")
    rc, out, err = s.etcdctl(*args, timeout=timeout)
    if rc != 0:
        return rc, None, err
    kvs = json.loads(out).get("kvs") or []
    return rc, (base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None), err


def status(s: Server, command_timeout: str = "2s") -> dict | None:
    """`endpoint status` of one member (its Status object), or None if it does not answer."""
    if not s.alive():
        return None
    rc, out, err = s.etcdctl(f"--command-timeout={command_timeout}", "endpoint", "status",
                             "-w", "json", timeout=10)
    if rc != 0:
        return None
    try:
        return json.loads(out)[0]["Status"]
    except (ValueError, LookupError, TypeError):
        return None


def member_list(s: Server, command_timeout: str = "5s") -> list[dict]:
    """`member list` (IDs as ints), from this member's point of view."""
    out = ok(s.etcdctl(f"--command-timeout={command_timeout}", "member", "list", "-w", "json",
                       timeout=20), f"member list on {s.name}")
    return json.loads(out).get("members") or []


def dump(s: Server, prefix: str = "", serializable: bool = True, command_timeout: str = "5s"):
    """(header revision, {key: (value, create_revision, mod_revision, version)})."""
    args = [f"--command-timeout={command_timeout}", "get", prefix, "--prefix", "-w", "json"]
    if serializable:
        args.append("--consistency=s")
    out = ok(s.etcdctl(*args, timeout=30), f"get {prefix!r} --prefix on {s.name}")
    d = json.loads(out)
    kvs = {}
    for kv in d.get("kvs") or []:
        kvs[base64.b64decode(kv["key"]).decode()] = (
            base64.b64decode(kv.get("value", "")).decode(),
            kv.get("create_revision"), kv.get("mod_revision"), kv.get("version"))
    return d["header"]["revision"], kvs


def hexid(member_id: int) -> str:
    return format(member_id, "x")


def _reconfig(via: Server, *args: str, timeout: float = 20):
    """A membership change, retried (bounded) while the server answers "unhealthy cluster":
    etcd refuses changes until every voting member has been connected for 5 s, and when the
    change would leave too few connected members."""
    deadline = time.monotonic() + timeout
    while True:
        res = via.etcdctl(*args)
        if res[0] == 0 or "unhealthy cluster" not in res[2] or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


# ----------------------------------------------------------------------------- cluster
class Cluster:
    """Members m1..mN of one cluster. `members` keeps every member ever made (removed ones
    too); `in_cluster` names the ones the cluster should list now (the tests keep it up to
    date through add_learner / promote / remove)."""

    def __init__(self, kind: str, size: int = 3, *, proxy: bool = False,
                 election_ms: int = ELECTION_MS, heartbeat_ms: int = HEARTBEAT_MS,
                 snapshot_count: int | None = None, extra_args=(), proxy_lifetime=600.0):
        self.kind = kind
        self.election_ms = election_ms
        self.heartbeat_ms = heartbeat_ms
        self.token = f"compat-cluster-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.extra_args = [
            "--election-timeout", str(election_ms),
            "--heartbeat-interval", str(heartbeat_ms),
            *(["--snapshot-count", str(snapshot_count)] if snapshot_count else []),
            *extra_args,
        ]
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cluster-{kind}-", dir=WORK_ROOT))
        self.proxy = FaultProxy(lifetime=proxy_lifetime) if proxy else None
        self.members: list[Server] = []
        self.in_cluster: list[str] = []
        self.learners: set[str] = set()
        self.ids: dict[str, int] = {}
        self._next = 1
        initial = [self._make(f"m{i + 1}") for i in range(size)]
        spec = ",".join(f"{m.name}={m.advertise_peer_url}" for m in initial)
        for m in initial:
            m.initial_cluster = spec
        self.in_cluster = [m.name for m in initial]
        self._next = size + 1

    # ----------------------------------------------------------------- building
    def _make(self, name: str, cluster_state: str = "new", ready_check: str = "health") -> Server:
        client_port, peer_port = free_ports(2)
        advertise = None
        if self.proxy is not None:
            advertise = f"http://127.0.0.1:{self.proxy.add_member(name, peer_port)}"
        m = Server(self.kind, name=name, token=self.token, ports=(client_port, peer_port),
                   advertise_peer_url=advertise, cluster_state=cluster_state,
                   extra_args=self.extra_args, ready_check=ready_check,
                   workdir_parent=self.workdir)
        self.members.append(m)
        return m

    def new_member(self) -> Server:
        """A member for joining (not started, not added): ports, work dir, proxy route."""
        m = self._make(f"m{self._next}", cluster_state="existing")
        self._next += 1
        return m

    def start(self, timeout: float = READY_TIMEOUT) -> "Cluster":
        """Starts every initial member, then waits (bounded) until each is ready."""
        for m in self.members:
            self.start_member(m, wait=False)
        deadline = time.monotonic() + timeout
        for m in self.members:
            try:
                m.wait_ready(max(1.0, deadline - time.monotonic()))
            except BaseException:
                self.stop(cleanup=False)
                raise
        return self

    def start_member(self, m: Server, wait: bool = True, timeout: float = READY_TIMEOUT):
        m.start(timeout=timeout, wait=False)
        if self.proxy is not None:
            self.proxy.set_pid(m.name, m.pid)
        if wait:
            m.wait_ready(timeout)
        return m

    def kill(self, m: Server, sig: int = signal.SIGKILL):
        return m.kill(sig)

    def stop(self, cleanup: bool = True) -> None:
        for m in self.members:
            try:
                m.stop(cleanup=cleanup)
            except Exception:
                pass
        if self.proxy is not None:
            self.proxy.close()

    def member(self, name: str) -> Server:
        return next(m for m in self.members if m.name == name)

    def running(self) -> list[Server]:
        return [m for m in self.members if m.alive() and m.name in self.in_cluster]

    def voters(self) -> list[Server]:
        """Running members that vote (the ones that take writes)."""
        return [m for m in self.running() if m.name not in self.learners]

    def initial_cluster_spec(self, extra: Server | None = None) -> str:
        names = list(self.in_cluster) + ([extra.name] if extra else [])
        return ",".join(f"{n}={self.member(n).advertise_peer_url}" for n in names)

    def member_id(self, m: Server, timeout: float = 10) -> int:
        if m.name not in self.ids:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                st = status(m)
                if st:
                    self.ids[m.name] = int(st["header"]["member_id"])
                    break
                time.sleep(0.1)
            else:
                raise HarnessError(f"{m.name}: no endpoint status within {timeout}s")
        return self.ids[m.name]

    def by_id(self, member_id: int) -> Server | None:
        for m in self.members:
            if self.ids.get(m.name) == member_id:
                return m
        return None

    def etcdctl_many(self, members, *args: str, timeout: float = 30):
        """etcdctl with --endpoints listing `members` (host:port form); (rc, stdout, stderr)."""
        argv = [ETCDCTL_BIN, "--endpoints=" + ",".join(m.endpoint for m in members),
                "--dial-timeout=2s", "--command-timeout=5s", *args]
        try:
            cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                env=etcdctl_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"[harness: killed after {timeout}s]"
        return cp.returncode, cp.stdout, cp.stderr

    # -------------------------------------------------------------- membership
    def add_learner(self, via: Server, m: Server) -> int:
        """`member add --learner` for m (prepared by new_member); returns its ID."""
        out = ok(_reconfig(via, "member", "add", m.name, "--learner",
                           f"--peer-urls={m.advertise_peer_url}", "-w", "json"),
                 f"member add {m.name} --learner")
        mid = int(json.loads(out)["member"]["ID"])
        self.ids[m.name] = mid
        self.in_cluster.append(m.name)
        self.learners.add(m.name)
        m.initial_cluster = self.initial_cluster_spec()
        m.ready_check = "status"
        return mid

    def promote(self, via: Server, m: Server, timeout: float = 30) -> int:
        """`member promote`, retried while the learner is not in sync; returns the tries."""
        deadline = time.monotonic() + timeout
        tries = 0
        while True:
            tries += 1
            rc, out, err = via.etcdctl("member", "promote", hexid(self.ids[m.name]))
            if rc == 0:
                self.learners.discard(m.name)
                m.ready_check = "health"
                return tries
            if "can only promote a learner member which is in sync with leader" not in err:
                raise AssertionError(f"member promote {m.name}: exit {rc}\n{out}\n{err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"member promote {m.name}: still not in sync after "
                                     f"{timeout}s and {tries} tries: {err}")
            time.sleep(0.3)

    def remove(self, via: Server, m: Server) -> None:
        ok(_reconfig(via, "member", "remove", hexid(self.member_id(m))),
           f"member remove {m.name}")
        self.in_cluster.remove(m.name)
        self.learners.discard(m.name)

    # -------------------------------------------------------------------- waits
    def statuses(self, members=None) -> dict[str, dict | None]:
        members = self.running() if members is None else members
        out = {}
        for m in members:
            st = status(m)
            out[m.name] = st
            if st:
                self.ids.setdefault(m.name, int(st["header"]["member_id"]))
        return out

    def leaders(self, members=None) -> tuple[list[str], dict[str, int]]:
        """(members that say they are leader, {member: leader ID it reports}); silent members
        are left out."""
        sts = self.statuses(members)
        claim = [n for n, st in sts.items()
                 if st and int(st.get("leader", 0)) == int(st["header"]["member_id"])]
        seen = {n: int(st.get("leader", 0)) for n, st in sts.items() if st}
        return claim, seen

    def wait_leader(self, members=None, timeout: float = 20) -> Server:
        """Waits until exactly one of `members` (default: running) says it is leader and every
        one of them answers and names it; returns it."""
        members = self.running() if members is None else list(members)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            claim, seen = self.leaders(members)
            last = (claim, {n: hexid(v) for n, v in seen.items()})
            if len(claim) == 1 and len(seen) == len(members):
                lid = self.ids[claim[0]]
                if all(v == lid for v in seen.values()):
                    return self.member(claim[0])
            time.sleep(0.1)
        raise AssertionError(f"no single agreed leader among {[m.name for m in members]} "
                             f"within {timeout}s; last (claimants, reported): {last}")

    def wait_members(self, via: Server, expect: dict[str, bool], timeout: float = 20,
                     started: bool = True) -> list[dict]:
        """Waits until `member list` on `via` shows exactly the members named in `expect`
        ({name: is_learner}) and, with `started`, each with its name and client URL."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                ms = member_list(via)
            except AssertionError as e:
                last = str(e)
                time.sleep(0.2)
                continue
            last = ms
            got = {}
            for x in ms:
                m = self.by_id(int(x["ID"]))
                got[m.name if m else hexid(int(x["ID"]))] = x
            if set(got) == set(expect) and all(
                    bool(got[n].get("isLearner", False)) == expect[n] for n in expect):
                if not started or all(
                        got[n].get("name") == n and got[n].get("clientURLs") ==
                        [self.member(n).client_url] for n in expect):
                    return ms
            time.sleep(0.2)
        raise AssertionError(f"member list on {via.name} is not {expect} after {timeout}s; "
                             f"last: {last}")

    def wait_converged(self, members, expect: dict[str, str], prefix: str = "",
                       timeout: float = 30) -> dict[str, tuple]:
        """Waits until every member has every key of `expect` with its value (serializable
        reads, so each member's own state) and all members have identical data and revision
        under `prefix`. Returns {member: (revision, kvs)}."""
        deadline = time.monotonic() + timeout
        problems = ["not checked"]
        dumps = {}
        while time.monotonic() < deadline:
            problems = []
            dumps = {}
            for m in members:
                try:
                    dumps[m.name] = dump(m, prefix, serializable=True)
                except AssertionError as e:
                    problems.append(f"{m.name}: {last_line(str(e))}")
                    continue
                kvs = dumps[m.name][1]
                missing = [k for k in expect if k not in kvs]
                wrong = [k for k in expect if k in kvs and kvs[k][0] != expect[k]]
                if missing or wrong:
                    problems.append(f"{m.name}: {len(missing)} acknowledged keys missing "
                                    f"{missing[:5]}, {len(wrong)} with other values "
                                    f"{wrong[:5]}")
            if not problems:
                ref_name, ref = next(iter(dumps.items()))
                for n, d in dumps.items():
                    if d != ref:
                        diff = sorted(k for k in set(d[1]) | set(ref[1])
                                      if d[1].get(k) != ref[1].get(k))
                        problems.append(f"{n} (rev {d[0]}) differs from {ref_name} (rev "
                                        f"{ref[0]}) in {len(diff)} keys: {diff[:5]}")
                if not problems:
                    return dumps
            time.sleep(0.25)
        raise AssertionError(f"members did not converge within {timeout}s:\n"
                             + "\n".join(problems))

    def describe(self) -> str:
        lines = [f"cluster {self.kind} in {self.workdir}: in cluster {self.in_cluster}, "
                 f"learners {sorted(self.learners)}, ids "
                 f"{ {n: hexid(i) for n, i in self.ids.items()} }"]
        lines += [m.describe() for m in self.members]
        if self.proxy is not None:
            lines.append(self.proxy.describe())
        return "\n".join(lines)

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"{m.describe()}\n{m.log_tail(lines)}" for m in self.members)


# ------------------------------------------------------------------------------ writers
class Writer:
    """Puts unique keys `<prefix>NNNNNN` from `threads` threads, each to one of `targets()`
    in turn, until stopped (or `max_seconds`). Records every acknowledged write (exit 0) with
    its time; failed ones (whose outcome is unknown) are counted with their last error line."""

    def __init__(self, targets, prefix: str = "w/", threads: int = 2,
                 command_timeout: str = "2s", max_seconds: float = 120.0):
        self.targets = targets
        self.prefix = prefix
        self.threads = threads
        self.command_timeout = command_timeout
        self.max_seconds = max_seconds
        self.acked: dict[str, tuple[str, str, float]] = {}  # key -> (value, member, time)
        self.failures: list[tuple[str, str, object, str, float]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _next(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _run(self, worker: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        turn = worker
        while not self._stop.is_set() and time.monotonic() < deadline:
            targets = self.targets()
            if not targets:
                time.sleep(0.05)
                continue
            m = targets[turn % len(targets)]
            turn += 1
            n = self._next()
            key, value = f"{self.prefix}{n:06d}", f"v{n}-{m.name}"
            rc, out, err = put(m, key, value, command_timeout=self.command_timeout,
                               timeout=30)
            with self._lock:
                if rc == 0 and out.strip() == "OK":
                    self.acked[key] = (value, m.name, time.monotonic())
                else:
                    self.failures.append((key, m.name, rc, last_line(err), time.monotonic()))
            if rc != 0:
                time.sleep(0.05)

    def start(self) -> "Writer":
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"writer-{i}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> "Writer":
        self._stop.set()
        for t in self._threads:
            t.join(60)
            if t.is_alive():
                raise HarnessError("writer thread did not stop within 60s")
        return self

    def expected(self) -> dict[str, str]:
        with self._lock:
            return {k: v[0] for k, v in self.acked.items()}

    def acked_between(self, t0: float, t1: float | None = None) -> int:
        t1 = time.monotonic() if t1 is None else t1
        with self._lock:
            return sum(1 for v in self.acked.values() if t0 <= v[2] <= t1)

    def wait_acked(self, n: int, timeout: float = 30, since: float | None = None) -> None:
        """Waits until `n` writes were acknowledged (since `since`, default: ever)."""
        deadline = time.monotonic() + timeout
        since = 0.0 if since is None else since
        while time.monotonic() < deadline:
            if self.acked_between(since) >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {self.acked_between(since)} of {n} writes acknowledged in "
                             f"{timeout}s; last failures: {self.failures[-5:]}")

    def summary(self) -> str:
        with self._lock:
            errs: dict[str, int] = {}
            for f in self.failures:
                errs[f[3][-120:]] = errs.get(f[3][-120:], 0) + 1
            return (f"{len(self.acked)} acknowledged, {len(self.failures)} failed; errors: "
                    + "; ".join(f"{n}x {e!r}" for e, n in sorted(errs.items(),
                                                               key=lambda x: -x[1])[:5]))


def probe_first_write(targets, t0: float, prefix: str, every: float = 0.1,
                      timeout: float = 15.0, command_timeout: str = "3s"):
    """Starts a put to one of `targets` (in turn) every `every` seconds, each in its own
    thread, until one is acknowledged. Returns (seconds from t0 to the first acknowledgement,
    {key: value} of every acknowledged probe). Raises AssertionError if none within timeout."""
    acked: dict[str, str] = {}
    first: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    threads = []

    def one(m: Server, key: str, value: str) -> None:
        rc, out, err = put(m, key, value, command_timeout=command_timeout, timeout=30)
        now = time.monotonic()
        with lock:
            if rc == 0 and out.strip() == "OK":
                acked[key] = value
                first.append(now)
                done.set()
            else:
                errors.append(f"{m.name}: {last_line(err)}")

    deadline = time.monotonic() + timeout
    i = 0
    while not done.is_set() and time.monotonic() < deadline:
        m = targets[i % len(targets)]
        key = f"{prefix}{i:04d}"
        t = threading.Thread(target=one, args=(m, key, f"probe-{i}-{m.name}"), daemon=True)
        t.start()
        threads.append(t)
        i += 1
        done.wait(every)
    for t in threads:
        t.join(40)
    if not first:
        raise AssertionError(f"no write acknowledged within {timeout}s of the fault; "
                             f"errors: {errors[-5:]}")
    return min(first) - t0, acked



MEASUREMENTS = WORK_ROOT / "measurements.jsonl"
REPORTED: list[str] = []  # this run's measurements, listed at the end by conftest.py


def report(test: str, **values) -> None:
    """Prints a measurement and appends it to .work/measurements.jsonl (one JSON per line)."""
    rec = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "test": test, **values}
    line = json.dumps(rec, sort_keys=False, default=str)
    print(f"MEASURE {line}")
    REPORTED.append(line)
    try:
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        with open(MEASUREMENTS, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass
