#!/usr/bin/env python3
"""The scale test (issue 13): does a 3-member cluster stay up, answer every put in time and keep
its memory bounded while it holds many keys and bulk work runs beside a steady put load?

For each target (pgraftd and etcd 3.4.23 by default, in the same run, one after the other) it
starts a 3-member cluster on free 127.0.0.1 ports, loads N keys (16-byte keys, 256-byte values,
`pgraft-bench put --sequential-keys`), then, while a steady put load runs (16 clients on
random keys of the key space, `pgraft-bench --duration`), issues in turn:
  1. a slow watcher: a raw HTTP/1.1 `POST /v3/watch` on all keys, on a socket with a tiny
     receive buffer that is never read, held open for the watch time (default 60 s) while the
     rest happens;
  2. one full-keyspace range with keys only (`etcdctl get "" --prefix --keys-only`), timed;
  3. a compaction of all history with `--physical` (`etcdctl compact <rev> --physical`), timed;
  4. a snapshot to a new member: `etcdctl member add` and a 4th member started with
     `--initial-cluster-state existing`, waited for until it has caught up (its revision
     reaches the leader's at the add, then, once the load is over, the same keys as the leader);
  5. once the load is over, a restart of one of the first followers: SIGTERM, then started
     again on its data, timed from the start until it serves a linearizable read (`etcdctl
     endpoint health`);
  6. a backup restored: `etcdctl snapshot save` from the leader, then the file restored into
     the data directory of a new one-member cluster (`pgraftd snapshot restore`, `etcdctl
     snapshot restore` for etcd), timed with the restore's peak RSS, and that member started,
     timed until it serves a linearizable read, and checked to hold the leader's keys.
Then it prints, per target: leader changes during the test (the growth of
`etcd_server_leader_changes_seen_total` on each member's /metrics), the put load's p99, slowest
request and errors (from `pgraft-bench --json`), the time of the range and of the compaction,
how long the new member took, how long the restarted member took to serve, the backup's save,
restore and start, peak RSS per member
(VmHWM from /proc/<pid>/status at the end), and one PASS/FAIL line per target: 0 leader changes,
0 failed requests (puts, range, compaction, catch-up, restart, backup and restore), slowest put no worse than
etcd's, peak RSS no more than etcd's, restart no slower than etcd's (the comparisons only when
etcd ran too).

Run (a release build; 1M keys take several minutes per target):
    cargo build --release --bins
    PGRAFTD=target/release/pgraftd PGRAFT_BENCH=target/release/pgraft-bench \\
        .venv/bin/python compat-tests/scale.py            # --help for the parameters

Every parameter is a flag with an environment default: SCALE_KEYS (N), SCALE_LOAD_SECS,
SCALE_CLIENTS, SCALE_WATCH_SECS, SCALE_TARGETS, SCALE_SNAPSHOT_COUNT. The exit status is 0
when every target passed. `compat-tests/test_scale.py` runs a CI-sized version (pgraftd only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import Cluster, _reconfig, status  # noqa: E402
from harness import (ETCDCTL_BIN, REPO_ROOT, etcdctl_env, pgraftd_path,  # noqa: E402
                     thread_dump)

KEY_SIZE = 16
VAL_SIZE = 256
LEADER_CHANGES = "etcd_server_leader_changes_seen_total"
# What a member logs when it installed a snapshot from the leader: pgraftd, etcd 3.4.
SNAPSHOT_INSTALLED = re.compile(r"installed snapshot|applied snapshot|applied incoming snapshot")


def bench_path() -> Path:
    p = os.environ.get("PGRAFT_BENCH")
    return Path(p) if p else REPO_ROOT / "target" / "debug" / "pgraft-bench"


@dataclass
class Params:
    keys: int = 1_000_000
    load_secs: float = 120.0
    clients: int = 16
    watch_secs: float = 60.0
    targets: tuple[str, ...] = ("pgraftd", "etcd")
    snapshot_count: int = 0  # 0: min(100000, max(1000, keys // 10))
    # Puts per request of the initial load: 1 (a revision per key, as in issue 13) or a txn
    # of that many puts (a faster load, for the CI-sized run).
    load_ops: int = 1
    # Bounds on single steps, so that a stuck server fails the run rather than hanging it.
    step_timeout: float = 900.0

    def snap_count(self) -> int:
        return self.snapshot_count or min(100_000, max(1000, self.keys // 10))


@dataclass
class Result:
    kind: str
    load: dict = field(default_factory=dict)          # pgraft-bench --json of the initial load
    put: dict = field(default_factory=dict)           # pgraft-bench --json of the steady load
    leader_changes: dict = field(default_factory=dict)  # member -> growth during the test
    range_secs: float | None = None
    range_error: str | None = None
    compact_secs: float | None = None
    compact_rev: int | None = None
    compact_error: str | None = None
    catchup_secs: float | None = None
    catchup_error: str | None = None
    new_member_keys: int | None = None
    leader_keys: int | None = None
    same_keys: bool | None = None
    new_member_snapshot: bool | None = None  # its log says it installed a snapshot
    restart_secs: float | None = None  # a follower's restart, start to serving
    restart_error: str | None = None
    backup_bytes: int | None = None
    save_secs: float | None = None
    restore_secs: float | None = None
    restore_peak_rss_kb: int | None = None
    restored_ready_secs: float | None = None  # the restored member's start, to serving
    restored_same_keys: bool | None = None
    restore_error: str | None = None
    rss_start_kb: dict = field(default_factory=dict)  # member -> VmRSS after the initial load
    peak_rss_kb: dict = field(default_factory=dict)   # member -> VmHWM at the end
    watcher_unread_bytes: int | None = None
    fatal: str | None = None  # the error that stopped the run early
    stuck: dict = field(default_factory=dict)  # member -> thread dump, when it stopped answering
    log: list = field(default_factory=list)

    # ------------------------------------------------------------- derived
    def put_errors(self) -> int:
        return int(self.put.get("errors", -1)) if self.put else -1

    def slowest_put_ms(self) -> float | None:
        return self.put.get("slowest_ms") if self.put else None

    def p99_ms(self) -> float | None:
        return (self.put.get("percentiles_ms") or {}).get("p99") if self.put else None

    def total_leader_changes(self) -> int:
        """Leader changes during the test: every member counts each change it sees, so the
        most any member saw."""
        return max((v for v in self.leader_changes.values() if v is not None), default=0)

    def max_peak_rss_kb(self) -> int:
        return max(self.peak_rss_kb.values(), default=0)

    def failures(self) -> list[str]:
        """The failed requests and steps (empty: none)."""
        f = [f"run stopped: {self.fatal}"] if self.fatal else []
        if self.put_errors() != 0:
            f.append(f"{self.put_errors()} failed puts {self.put.get('error_distribution')}")
        if any(v is None for v in self.leader_changes.values()) or not self.leader_changes:
            f.append("leader-change metric unreadable")
        for what, err in (("range", self.range_error), ("compaction", self.compact_error),
                          ("catch-up", self.catchup_error), ("restart", self.restart_error),
                          ("backup and restore", self.restore_error)):
            if err:
                f.append(f"{what}: {err}")
        if self.same_keys is False:
            f.append(f"new member has {self.new_member_keys} keys, leader {self.leader_keys}")
        if self.restored_same_keys is False:
            f.append("the restored member's keys are not the leader's")
        for name, dump in self.stuck.items():
            f.append(f"{name} alive but not answering; its threads:\n{dump}")
        return f


# ------------------------------------------------------------------- measurements
def metric(m, name: str) -> float | None:
    """The sum of a Prometheus counter over its label sets on member m's /metrics."""
    try:
        with urllib.request.urlopen(f"{m.client_url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    vals = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name) and (line[len(name):len(name) + 1] in (" ", "{"))]
    return sum(vals) if vals else None


def proc_status_kb(pid: int | None, field_name: str) -> int | None:
    if not pid:
        return None
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def etcdctl(endpoints: str, *args: str, timeout: float, stdout=subprocess.PIPE):
    """(rc, stdout or None, stderr) of etcdctl against `endpoints`, bounded by `timeout`."""
    argv = [ETCDCTL_BIN, f"--endpoints={endpoints}", "--dial-timeout=5s",
            f"--command-timeout={int(timeout)}s", *args]
    try:
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE, env=etcdctl_env(), timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return None, None, f"killed after {timeout + 30:.0f}s"
    out = cp.stdout.decode(errors="replace") if isinstance(cp.stdout, bytes) else cp.stdout
    return cp.returncode, out, cp.stderr.decode(errors="replace")


def bench_argv(endpoints: list[str], *args: str) -> list[str]:
    return [str(bench_path()), "--endpoints", ",".join(endpoints), "--json", *args]


def keys_digest(m, timeout: float) -> tuple[int | None, str | None, str]:
    """(number of keys, sha256 of the keys-only listing, error) from member m's own state
    (serializable), for comparing two members."""
    rc, out, err = etcdctl(m.endpoint, "get", "", "--prefix", "--keys-only",
                           "--consistency=s", "-w", "json", timeout=timeout)
    if rc != 0:
        return None, None, f"exit {rc}: {err.strip()[-300:]}"
    kvs = json.loads(out).get("kvs") or []
    h = hashlib.sha256()
    for kv in kvs:
        h.update(kv["key"].encode() + b"\n")
    return len(kvs), h.hexdigest(), ""


class SlowWatcher:
    """A watch on all keys that never reads its answers: a raw HTTP/1.1 `POST /v3/watch` to
    the gateway on a socket with a tiny receive buffer. The server's writes to it soon block;
    what it then buffers for this watcher is what the test bounds."""

    def __init__(self, m):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", m.client_port))
        body = json.dumps({"create_request": {"key": "AA==", "range_end": "AA=="}}).encode()
        head = (f"POST /v3/watch HTTP/1.1\r\nHost: {m.endpoint}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode() + body)
        self.opened = time.monotonic()

    def unread_bytes(self) -> int | None:
        try:
            import fcntl
            import termios
            buf = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return int.from_bytes(buf, sys.byteorder)
        except OSError:
            return None

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------- one target
def run_target(kind: str, p: Params, say=print) -> Result:
    res = Result(kind)

    def note(msg: str) -> None:
        line = f"[{kind} {time.strftime('%H:%M:%S')}] {msg}"
        res.log.append(line)
        say(line)

    cl = Cluster(kind, 3, snapshot_count=p.snap_count())
    procs: list[subprocess.Popen] = []
    try:
        _run(cl, p, res, note, procs)
    except Exception as e:  # a step that broke the run: reported, not raised
        res.fatal = f"{type(e).__name__}: {e}"
        note(f"run stopped: {res.fatal}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        cl.stop(cleanup=os.environ.get("SCALE_KEEP", "") in ("", "0"))
    return res


def _run(cl: Cluster, p: Params, res: Result, note, procs: list) -> None:
    """The steps of one target's run (see the module comment), filling `res`."""
    cl.start(timeout=60)
    leader = cl.wait_leader(timeout=60)
    eps = [m.endpoint for m in cl.members]
    note(f"3 members up, leader {leader.name}; loading {p.keys} keys")
    initial_load(eps, p, res, note)

    members = list(cl.members)
    changes0 = {m.name: metric(m, LEADER_CHANGES) for m in members}
    res.rss_start_kb = {m.name: proc_status_kb(m.pid, "VmRSS") for m in members}

    # The steady load, for the whole test.
    load = subprocess.Popen(
        bench_argv(eps, "--target-leader", "--conns", str(min(p.clients, 16)),
                   "--clients", str(p.clients), "--total", str(10**12),
                   "--duration", str(p.load_secs), "put", "--key-size", str(KEY_SIZE),
                   "--val-size", str(VAL_SIZE), "--key-space-size", str(p.keys)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    procs.append(load)
    load_end = time.monotonic() + p.load_secs
    time.sleep(min(5.0, p.load_secs / 10))

    watcher = SlowWatcher(leader)
    note(f"slow watcher open on {leader.name} for {p.watch_secs:.0f}s")
    new = None
    try:
        full_range(leader, p, res, note)
        compact_all(leader, p, res, note)
        new = add_member(cl, leader, p, res, note)
        if new is not None:
            members.append(new)
        # The watcher stays unread for its whole time; the load runs to its end.
        while time.monotonic() < watcher.opened + p.watch_secs:
            time.sleep(0.5)
        res.watcher_unread_bytes = watcher.unread_bytes()
    finally:
        watcher.close()
    note(f"slow watcher closed ({res.watcher_unread_bytes} bytes waiting in its socket)")
    finish_load(load, load_end, p, res, note)

    res.leader_changes = {
        m.name: (None if (a := metric(m, LEADER_CHANGES)) is None or changes0[m.name] is None
                 else int(a - changes0[m.name]))
        for m in members if m.name in changes0}
    res.peak_rss_kb = {m.name: proc_status_kb(m.pid, "VmHWM") for m in members}
    for m in members:
        if m.name in res.leader_changes and res.leader_changes[m.name] is None and m.alive():
            # Alive but not answering: what its threads wait on goes into the report.
            res.stuck[m.name] = thread_dump(m.pid) or "(no gdb to look)"
    if new is not None and new.alive() and not res.catchup_error:
        compare_keys(leader, new, p, res, note)
    try:  # a follower now: leadership may have moved during the test
        now_leader = cl.wait_leader(timeout=30)
    except Exception:
        now_leader = leader
    restart_follower([m for m in cl.members[:3] if m is not now_leader][0], p, res, note)
    backup_restore(cl.kind, now_leader, p, res, note)


def initial_load(eps: list[str], p: Params, res: Result, note) -> None:
    """Keys 0..N-1 in order: a put each, or txns of `load_ops` puts (txn-put walks the key
    space in order)."""
    t0 = time.monotonic()
    if p.load_ops > 1:
        how = ["--total", str(-(-p.keys // p.load_ops)), "txn-put",
               "--txn-ops", str(p.load_ops)]
    else:
        how = ["--total", str(p.keys), "put", "--sequential-keys"]
    cp = subprocess.run(bench_argv(eps, "--target-leader", "--conns", "16", "--clients", "64",
                                   *how, "--key-size", str(KEY_SIZE), "--val-size",
                                   str(VAL_SIZE), "--key-space-size", str(p.keys)),
                        capture_output=True, text=True, timeout=p.step_timeout,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise RuntimeError(f"load failed: {cp.stderr[-2000:]}")
    res.load = json.loads(cp.stdout)
    note(f"loaded in {time.monotonic() - t0:.1f}s ({res.load.get('errors')} errors)")


def full_range(leader, p: Params, res: Result, note) -> None:
    """`etcdctl get "" --prefix --keys-only`, timed; the keys go to /dev/null."""
    t0 = time.monotonic()
    rc, _, err = etcdctl(leader.endpoint, "get", "", "--prefix", "--keys-only",
                         timeout=p.step_timeout, stdout=subprocess.DEVNULL)
    res.range_secs = time.monotonic() - t0
    if rc != 0:
        res.range_error = f"exit {rc}: {err.strip()[-300:]}"
    note(f"full range (keys only) {res.range_secs:.2f}s rc={rc}")


def compact_all(leader, p: Params, res: Result, note) -> None:
    """`etcdctl compact <current revision> --physical`, timed."""
    st = status(leader, command_timeout="10s")
    if not st:
        res.compact_error = "no endpoint status from the leader"
        return
    res.compact_rev = int(st["header"]["revision"])
    t0 = time.monotonic()
    rc, _, err = etcdctl(leader.endpoint, "compact", str(res.compact_rev), "--physical",
                         timeout=p.step_timeout)
    res.compact_secs = time.monotonic() - t0
    if rc != 0:
        res.compact_error = f"exit {rc}: {err.strip()[-300:]}"
    note(f"compact {res.compact_rev} --physical {res.compact_secs:.2f}s rc={rc}")


def add_member(cl: Cluster, leader, p: Params, res: Result, note):
    """`member add` of a 4th member, started with `--initial-cluster-state existing`; waits
    until its revision reaches the leader's at the add. Returns it (None if not added)."""
    # Only a log compacted past the new member's start makes it need a snapshot: the leader
    # compacts once snapshot-count entries plus the catch-up entries it keeps are past its
    # last compaction (etcd keeps 5000; pgraftd min(5000, snapshot-count)). At the full size
    # that is long past; a small run waits for it, bounded by half the load.
    snap = p.snap_count()
    need = snap + (5000 if cl.kind == "etcd" else min(5000, snap)) + 500
    deadline = time.monotonic() + max(5.0, p.load_secs / 2)
    while time.monotonic() < deadline:
        st = status(leader, command_timeout="5s")
        if st and int(st.get("raftIndex", 0)) >= need:
            break
        time.sleep(0.5)
    note(f"leader at raft index {st and st.get('raftIndex')} (a compacted log needs {need})")
    new = cl.new_member()
    rc, _, err = _reconfig(leader, "member", "add", new.name,
                           f"--peer-urls={new.advertise_peer_url}", timeout=60)
    if rc != 0:
        res.catchup_error = f"member add: exit {rc}: {err.strip()[-300:]}"
        return None
    cl.in_cluster.append(new.name)
    new.initial_cluster = cl.initial_cluster_spec()
    new.ready_check = "status"
    st = status(leader, command_timeout="10s")
    target_rev = int(st["header"]["revision"]) if st else res.compact_rev or 0
    t0 = time.monotonic()
    cl.start_member(new, wait=False)
    if wait_revision(new, target_rev, t0 + p.step_timeout):
        res.catchup_secs = time.monotonic() - t0
    else:
        res.catchup_error = (f"{new.name} did not reach revision {target_rev} in "
                             f"{p.step_timeout:.0f}s (alive: {new.alive()})\n"
                             f"{new.name}'s log ends:\n{new.log_tail(30)}")
    res.new_member_snapshot = bool(SNAPSHOT_INSTALLED.search(new.log_since_start()))
    note(f"new member {new.name} caught up to revision {target_rev}: "
         f"{res.catchup_secs and round(res.catchup_secs, 2)}s {res.catchup_error or ''}")
    return new


def wait_revision(m, rev: int, deadline: float) -> bool:
    """Waits until member m's own revision (endpoint status) reaches `rev`."""
    while m.alive() and time.monotonic() < deadline:
        st = status(m, command_timeout="5s")
        if st and int(st["header"]["revision"]) >= rev:
            return True
        time.sleep(0.5)
    return False


def finish_load(load: subprocess.Popen, load_end: float, p: Params, res: Result, note) -> None:
    """Waits for the steady load to end and takes its report."""
    try:
        out, err = load.communicate(timeout=max(0.0, load_end - time.monotonic())
                                    + p.step_timeout)
    except subprocess.TimeoutExpired:
        load.kill()
        out, err = load.communicate()
    if load.returncode == 0:
        res.put = json.loads(out)
    else:
        res.put = {"errors": -1, "error_distribution": {"pgraft-bench": err[-500:]}}
    note(f"put load: {res.put.get('requests')} puts, {res.put.get('errors')} errors, "
         f"p99 {res.p99_ms()} ms, slowest {res.slowest_put_ms()} ms")


def compare_keys(leader, new, p: Params, res: Result, note) -> None:
    """Once the load is over and the new member reached the leader's revision: the same keys
    on both (serializable keys-only listings, hashed)."""
    st = status(leader, command_timeout="10s")
    wait_revision(new, int(st["header"]["revision"]) if st else 0,
                  time.monotonic() + p.step_timeout)
    res.leader_keys, lh, e1 = keys_digest(leader, p.step_timeout)
    res.new_member_keys, nh, e2 = keys_digest(new, p.step_timeout)
    res.same_keys = bool(lh) and lh == nh and not e1 and not e2
    note(f"keys: leader {res.leader_keys}, {new.name} {res.new_member_keys}, "
         f"same: {res.same_keys} {e1} {e2}")


def restart_follower(m, p: Params, res: Result, note) -> None:
    """Stops a follower holding every key (SIGTERM) and starts it again on its data: the time
    from its start until it serves a linearizable read."""
    m.stop(cleanup=False)
    t0 = time.monotonic()
    try:
        m.start(timeout=p.step_timeout)
    except Exception as e:  # reported, not raised: the run goes on to its report
        res.restart_error = f"{type(e).__name__}: {e}"[:500]
        note(f"{m.name} restart failed: {res.restart_error}")
        return
    res.restart_secs = time.monotonic() - t0
    note(f"{m.name} restarted: serving after {res.restart_secs:.2f}s")


def backup_restore(kind: str, leader, p: Params, res: Result, note) -> None:
    """Step 6: a backup of the leader restored into a new one-member cluster, and started."""
    new = Cluster(kind, 1)
    m = new.members[0]
    path = new.workdir / "backup.db"
    try:
        t0 = time.monotonic()
        rc, _, err = etcdctl(leader.endpoint, "snapshot", "save", str(path),
                             timeout=p.step_timeout)
        if rc != 0:
            res.restore_error = f"snapshot save: exit {rc}: {err.strip()[-300:]}"
            return
        res.save_secs = time.monotonic() - t0
        res.backup_bytes = path.stat().st_size
        tool = [str(pgraftd_path()), "snapshot"] if kind == "pgraftd" else [ETCDCTL_BIN,
                                                                            "snapshot"]
        argv = [*tool, "restore", str(path), "--name", m.name, "--data-dir", str(m.data_dir),
                "--initial-cluster", m.initial_cluster, "--initial-cluster-token", new.token,
                "--initial-advertise-peer-urls", m.advertise_peer_url]
        t0 = time.monotonic()
        rc, res.restore_peak_rss_kb, err = run_measured(argv, new.workdir / "restore.log",
                                                        p.step_timeout)
        if rc != 0:
            res.restore_error = f"restore: exit {rc}: {err}"
            return
        res.restore_secs = time.monotonic() - t0
        t0 = time.monotonic()
        new.start(timeout=p.step_timeout)
        res.restored_ready_secs = time.monotonic() - t0
        n1, h1, e1 = keys_digest(leader, p.step_timeout)
        n2, h2, e2 = keys_digest(m, p.step_timeout)
        res.restored_same_keys = bool(h1) and h1 == h2 and not e1 and not e2
        if e1 or e2:
            res.restore_error = f"listing the keys: leader: {e1 or 'ok'}; restored: {e2 or 'ok'}"
        note(f"backup of {res.backup_bytes} bytes saved in {res.save_secs:.2f}s, restored in "
             f"{res.restore_secs:.2f}s (peak RSS {res.restore_peak_rss_kb} KiB), serving "
             f"after {res.restored_ready_secs:.2f}s; keys: leader {n1}, restored {n2}, "
             f"same: {res.restored_same_keys} {e1} {e2}")
    except Exception as e:  # reported, not raised: the run goes on to its report
        res.restore_error = f"{type(e).__name__}: {e}"[:500]
        note(f"backup and restore failed: {res.restore_error}")
    finally:
        keep = os.environ.get("SCALE_KEEP", "") not in ("", "0")
        new.stop(cleanup=not keep)
        if not keep:  # the backup, and a half-made directory a killed restore left
            shutil.rmtree(new.workdir, ignore_errors=True)


def run_measured(argv: list[str], log: Path, timeout: float) -> tuple[int, int | None, str]:
    """(exit status, peak RSS in KiB, the end of its output) of a command, killed after
    `timeout`. The peak is its VmHWM, sampled every 20 ms while it runs (so a lower bound: a
    rise in its last 20 ms is missed): the rusage of wait4 would report this script's own RSS
    (a child's maximum includes the memory it had before its exec, a copy of this process)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env={**os.environ, **etcdctl_env()})
    peak = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            hwm = proc_status_kb(proc.pid, "VmHWM")
            if hwm is not None:
                peak = max(peak or 0, hwm)
            if time.monotonic() > deadline:
                return -9, peak, f"killed after {timeout:.0f}s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, peak, log.read_text(errors="replace").strip()[-300:]


# --------------------------------------------------------------------------- report
def fmt(v, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def verdicts(results: dict[str, Result]) -> dict[str, list[str]]:
    """target -> reasons it failed (empty: PASS)."""
    etcd = results.get("etcd")
    out = {}
    for kind, r in results.items():
        why = list(r.failures())
        if r.total_leader_changes():
            why.append(f"{r.total_leader_changes()} leader changes {r.leader_changes}")
        if etcd is not None and kind != "etcd":
            mine, theirs = r.slowest_put_ms(), etcd.slowest_put_ms()
            if mine is None or theirs is None or mine > theirs:
                why.append(f"slowest put {fmt(mine, ' ms')} > etcd's {fmt(theirs, ' ms')}")
            if r.max_peak_rss_kb() > etcd.max_peak_rss_kb():
                why.append(f"peak RSS {r.max_peak_rss_kb() // 1024} MiB > etcd's "
                           f"{etcd.max_peak_rss_kb() // 1024} MiB")
            if (r.restart_secs or 0) > (etcd.restart_secs or float("inf")):
                why.append(f"restart {fmt(r.restart_secs, ' s', 2)} > etcd's "
                           f"{fmt(etcd.restart_secs, ' s', 2)}")
        out[kind] = why
    return out


def report(results: dict[str, Result], p: Params) -> str:
    lines = [f"scale test: {p.keys} keys ({KEY_SIZE}-byte keys, {VAL_SIZE}-byte values), "
             f"{p.clients} put clients for {p.load_secs:.0f}s, slow watcher {p.watch_secs:.0f}s"]
    kinds = list(results)
    rows = [
        ("leader changes during the test", lambda r: f"{r.total_leader_changes()} "
         + str(r.leader_changes)),
        ("put load: requests", lambda r: fmt(r.put.get("requests"))),
        ("put load: errors", lambda r: fmt(r.put_errors())),
        ("put load: p99", lambda r: fmt(r.p99_ms(), " ms")),
        ("put load: slowest", lambda r: fmt(r.slowest_put_ms(), " ms")),
        ("full range, keys only", lambda r: fmt(r.range_secs, " s", 2) + (
            f" FAILED {r.range_error}" if r.range_error else "")),
        ("compaction --physical", lambda r: fmt(r.compact_secs, " s", 2) + (
            f" FAILED {r.compact_error}" if r.compact_error else "")),
        ("new member caught up", lambda r: fmt(r.catchup_secs, " s", 2) + (
            f" FAILED {r.catchup_error}" if r.catchup_error else "")),
        ("new member got a snapshot", lambda r: fmt(r.new_member_snapshot)),
        ("follower restart, serving after", lambda r: fmt(r.restart_secs, " s", 2) + (
            f" FAILED {r.restart_error}" if r.restart_error else "")),
        ("backup: save / bytes", lambda r: fmt(r.save_secs, " s", 2) + " / "
         + fmt(r.backup_bytes)),
        ("backup: restore (peak RSS MiB)", lambda r: fmt(r.restore_secs, " s", 2) + (
            f" ({r.restore_peak_rss_kb // 1024})" if r.restore_peak_rss_kb else "") + (
            f" FAILED {r.restore_error}" if r.restore_error else "")),
        ("backup: restored, serving after", lambda r: fmt(r.restored_ready_secs, " s", 2)
         + f" (same keys: {r.restored_same_keys})"),
        ("new member keys = leader's", lambda r: f"{r.same_keys} ({r.new_member_keys} / "
         f"{r.leader_keys})"),
        ("RSS after load (MiB)", lambda r: " ".join(
            f"{n}={v // 1024}" for n, v in r.rss_start_kb.items() if v)),
        ("peak RSS (VmHWM, MiB)", lambda r: " ".join(
            f"{n}={v // 1024}" for n, v in r.peak_rss_kb.items() if v)),
    ]
    for label, get in rows:
        lines.append(f"{label:32}" + " | ".join(f"{k}: {get(results[k])}" for k in kinds))
    for kind, why in verdicts(results).items():
        lines.append(f"{'PASS' if not why else 'FAIL'} {kind}" + ("" if not why else
                                                                   ": " + "; ".join(why)))
    return "\n".join(lines)


def params_from_args(argv=None) -> Params:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=int(env("SCALE_KEYS", "1000000")))
    ap.add_argument("--load-secs", type=float, default=float(env("SCALE_LOAD_SECS", "120")))
    ap.add_argument("--clients", type=int, default=int(env("SCALE_CLIENTS", "16")))
    ap.add_argument("--watch-secs", type=float, default=float(env("SCALE_WATCH_SECS", "60")))
    ap.add_argument("--targets", default=env("SCALE_TARGETS", "pgraftd,etcd"),
                    help="comma list of pgraftd, etcd")
    ap.add_argument("--snapshot-count", type=int, default=int(env("SCALE_SNAPSHOT_COUNT", "0")),
                    help="--snapshot-count of every member (0: keys/10, 1000..100000)")
    ap.add_argument("--load-ops", type=int, default=int(env("SCALE_LOAD_OPS", "1")),
                    help="puts per request of the initial load (>1: txns of that many puts)")
    a = ap.parse_args(argv)
    return Params(keys=a.keys, load_secs=a.load_secs, clients=a.clients,
                  watch_secs=a.watch_secs, snapshot_count=a.snapshot_count,
                  load_ops=a.load_ops,
                  targets=tuple(t.strip() for t in a.targets.split(",") if t.strip()))


def main(argv=None) -> int:
    p = params_from_args(argv)
    if not os.access(bench_path(), os.X_OK):
        print(f"{bench_path()} missing: cargo build --bins (or set PGRAFT_BENCH)",
              file=sys.stderr)
        return 2
    results = {kind: run_target(kind, p) for kind in p.targets}
    print(report(results, p))
    return 0 if not any(verdicts(results).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
