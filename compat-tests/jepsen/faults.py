"""One fault per run, applied to a running `cluster.Cluster` (made with `proxy=True`) and
recorded with its start and end (the end is when the cluster was whole again: restarted,
resumed, healed or re-membered). Leader and follower are found when the fault starts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from .history import Fault

DOWN_S = 1.5      # how long a killed member stays down
PAUSE_S = 3.0     # SIGSTOP .. SIGCONT
PARTITION_S = 4.0
SLOW_DISK_S = 4.0
SLOW_DISK_MS = 300  # each journal fsync of the member waits this long


def _pick(c, rng, role):
    leader = c.wait_leader(timeout=20)
    if role == "leader":
        return leader
    return rng.choice([m for m in c.voters() if m is not leader])


def kill(c, rng, role) -> Fault:
    m = _pick(c, rng, role)
    f = Fault(f"kill-{role}", m.name, time.monotonic(), affects_leader=role == "leader")
    c.kill(m)
    time.sleep(DOWN_S)
    c.start_member(m, wait=True)
    f.end = time.monotonic()
    return f


def pause(c, rng, role) -> Fault:
    m = _pick(c, rng, role)
    f = Fault(f"pause-{role}", m.name, time.monotonic(), affects_leader=role == "leader")
    os.kill(m.pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
    finally:
        os.kill(m.pid, signal.SIGCONT)
    f.end = time.monotonic()
    return f


def partition(c, rng, role) -> Fault:
    m = _pick(c, rng, role)
    f = Fault(f"partition-{role}", m.name, time.monotonic(), affects_leader=role == "leader",
              notes="both ways, dropped")
    c.proxy.isolate(m.name, mode="drop")
    try:
        time.sleep(PARTITION_S)
    finally:
        f.notes += f"; proxy {c.proxy.stats()}"
        c.proxy.heal()
    f.end = time.monotonic()
    return f


def one_way(c, rng, role) -> Fault:
    m = _pick(c, rng, role)
    others = [x.name for x in c.voters() if x is not m]
    f = Fault(f"oneway-{role}", m.name, time.monotonic(), affects_leader=role == "leader",
              notes=f"bytes from {m.name} to {others} dropped")
    c.proxy.one_way([m.name], others)
    try:
        time.sleep(PARTITION_S)
    finally:
        f.notes += f"; proxy {c.proxy.stats()}"
        c.proxy.heal()
    f.end = time.monotonic()
    return f


def member_replace(c, rng, role="follower") -> Fault:
    """Removes a follower under load, stops it, then adds a fresh member as a learner,
    starts it, and promotes it once it caught up."""
    leader = c.wait_leader(timeout=20)
    old = _pick(c, rng, "follower")
    f = Fault("member-replace", old.name, time.monotonic())
    c.remove(leader, old)
    deadline = time.monotonic() + 5
    while old.alive() and time.monotonic() < deadline:  # etcd's removed member exits itself
        time.sleep(0.1)
    exited = not old.alive()
    if not exited:
        c.kill(old)
    new = c.new_member()
    c.add_learner(c.wait_leader(timeout=20), new)
    c.start_member(new, wait=True)
    c.promote(c.wait_leader(timeout=20), new)
    f.notes = (f"removed {old.name} ({'exited by itself' if exited else 'killed: did not exit'}"
               f"), added {new.name}")
    f.target = f"{old.name}->{new.name}"
    f.end = time.monotonic()
    return f


def slow_disk(c, rng, role) -> Fault:
    """pgraftd only: every journal fsync of one member waits SLOW_DISK_MS for SLOW_DISK_S
    (its PGRAFT_FAILPOINT_SLOW_DISK failpoint, which the runner turns on for such runs)."""
    if c.kind != "pgraftd":
        raise ValueError("the slow-disk fault needs pgraftd's failpoint")
    m = _pick(c, rng, role)
    f = Fault(f"slow-disk-{role}", m.name, time.monotonic(), affects_leader=role == "leader",
              notes=f"fsync +{SLOW_DISK_MS} ms")
    knob = m.data_dir / "failpoint-fsync-delay-ms"
    knob.write_text(str(SLOW_DISK_MS))
    try:
        time.sleep(SLOW_DISK_S)
    finally:
        knob.unlink(missing_ok=True)
    f.end = time.monotonic()
    # The member's own account: syncs over 100 ms are logged as slow disk writes.
    slow = m.log_since_start().count('"what":"journal fdatasync"')
    f.notes += f"; {slow} slow journal fsyncs logged"
    return f


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
CLOCK_JUMP_S = 3.0   # how long the member's wall clock stays moved, each way
CLOCK_JUMP = 3600    # seconds


def faketime_env(m) -> dict[str, str]:
    """pgraftd only: what runs member m under libfaketime with a wall clock (CLOCK_REALTIME)
    that its `faketime` file moves; its monotonic clock stays true. Written "+0" here."""
    knob = m.workdir / "faketime"
    knob.write_text("+0\n")
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(knob),
            "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _wall_offset(m) -> float | None:
    """Member m's wall clock less ours, from the Date header of its /health (to a second)."""
    import email.utils
    import urllib.request
    try:
        with urllib.request.urlopen(f"{m.client_url}/health", timeout=3) as r:
            date = r.headers.get("Date")
    except OSError:
        return None
    return email.utils.parsedate_to_datetime(date).timestamp() - time.time() if date else None


def clock_jump(c, rng, role) -> Fault:
    """pgraftd only: one member's wall clock jumps an hour ahead, then an hour behind, then
    back (an NTP step, a VM migrated), each for CLOCK_JUMP_S. Leases run on the monotonic
    clock, so none may expire early or late (the lease checker looks at both)."""
    if c.kind != "pgraftd":
        raise ValueError("the clock-jump fault needs pgraftd under libfaketime")
    m = _pick(c, rng, role)
    knob = Path(m.env["FAKETIME_TIMESTAMP_FILE"])
    f = Fault(f"clock-jump-{role}", m.name, time.monotonic(), affects_leader=role == "leader")
    seen = None
    try:
        knob.write_text(f"{CLOCK_JUMP:+d}\n")
        time.sleep(1.5)  # libfaketime reads the file again within a second
        # The jump ahead shows in the member's HTTP Date header (hyper caches the date until
        # the next second it expects, so the jump back does not show there). On a loaded
        # machine one answer may still carry the date its thread cached before the jump:
        # a few probes, the largest offset.
        probes = 0
        while probes < 4 and (seen is None or seen < CLOCK_JUMP / 2):
            probe = _wall_offset(m)
            if probe is not None:
                seen = probe if seen is None else max(seen, probe)
            probes += 1
            time.sleep(0.2)
        time.sleep(max(0.0, CLOCK_JUMP_S - 1.5 - 0.2 * probes))
        knob.write_text(f"{-CLOCK_JUMP:+d}\n")
        time.sleep(CLOCK_JUMP_S)
    finally:
        knob.write_text("+0\n")
    f.notes = (f"wall clock moved {CLOCK_JUMP:+d}s then {-CLOCK_JUMP:+d}s; the member's Date "
               f"header {'unread' if seen is None else f'{seen:+.0f}s'} off during the first")
    f.end = time.monotonic()
    return f


FAULTS = {
    "kill-leader": lambda c, r: kill(c, r, "leader"),
    "kill-follower": lambda c, r: kill(c, r, "follower"),
    "pause-leader": lambda c, r: pause(c, r, "leader"),
    "pause-follower": lambda c, r: pause(c, r, "follower"),
    "partition-leader": lambda c, r: partition(c, r, "leader"),
    "partition-follower": lambda c, r: partition(c, r, "follower"),
    "oneway-leader": lambda c, r: one_way(c, r, "leader"),
    "member-replace": lambda c, r: member_replace(c, r),
    "slow-disk-leader": lambda c, r: slow_disk(c, r, "leader"),
    "slow-disk-follower": lambda c, r: slow_disk(c, r, "follower"),
    "clock-jump-leader": lambda c, r: clock_jump(c, r, "leader"),
    "clock-jump-follower": lambda c, r: clock_jump(c, r, "follower"),
}

# Faults that need a pgraftd failpoint (not drawn for etcd runs).
PGRAFTD_ONLY = {"slow-disk-leader", "slow-disk-follower", "clock-jump-leader",
                "clock-jump-follower"}


def faults_for(kind: str) -> list[str]:
    """The fault kinds a run against `kind` may draw."""
    return sorted(f for f in FAULTS if kind == "pgraftd" or f not in PGRAFTD_ONLY)

