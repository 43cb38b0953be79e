"""Patroni on pgraft, end to end: a 3-member pgraftd cluster (etcd 3.4.23 with
COMPAT_REFERENCE_ONLY=1) and three PostgreSQL 15 instances run by Patroni 4.1 (DCS `etcd3`,
all three client addresses in `hosts`).

The tests run in file order on one shared setup (a module fixture) and each starts from the
state the previous one left; once one fails, the later ones are skipped:

1. bootstrap: one Leader and two Replicas `streaming` (patronictl list and REST /cluster), and
   two streams in pg_stat_replication on the primary;
2. failover: `kill -9` of the primary's Patroni and of its postmaster; a replica is promoted
   within ttl + loop_wait + margin, keeps the rows written before, takes writes, the other
   replica follows it, and the old primary's Patroni, restarted, rejoins as a replica;
3. switchover: `patronictl switchover --leader A --candidate B --force`; B becomes leader and
   takes writes, A streams from it;
4. pgraftd leader kill: `kill -9` of the DCS leader member, first made (MoveLeader) the
   member the primary's Patroni is connected to; over 3 x ttl the Patroni leader,
   its timeline and its postmaster stay the same, PostgreSQL keeps taking writes, no node
   demotes or promotes, the DCS elects a new leader among the survivors, and Patroni keeps
   working against it (REST `dcs_last_seen` stays fresh, the leader key keeps its lease alive,
   and the `/status` key keeps being rewritten with the new WAL position).

Timings: ttl 20 (Patroni 4.1 raises any ttl below 20 to 20), loop_wait 2, retry_timeout 5,
election timeout 1000 ms. Measured numbers are printed as `MEASURE {...}` lines (pytest -s)
and appended to compat-tests/.work/measurements.jsonl. On failure, the Patroni/PostgreSQL log
tails (one log per node) and every DCS member's log tail are printed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
import types

import pytest

from cluster import Cluster, report
from patroni_cluster import PatroniCluster, check_patroni_runnable, pg_connect, pg_query

TTL, LOOP_WAIT, RETRY_TIMEOUT = 20, 2, 5
PROMOTE_BOUND = TTL + 2 * LOOP_WAIT + 6  # the lease expires within ttl; then a loop, promote
PRIMARY_ROLES = ("primary", "master")
# log lines that mean a node gave up or took the leader lock
DEMOTE_RE = re.compile(r"demoting self|acquired session lock as a leader|promoted self to leader",
                       re.I)


def _reference_only() -> bool:
    return os.environ.get("COMPAT_REFERENCE_ONLY", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def env():
    kind = "etcd" if _reference_only() else "pgraftd"
    version = check_patroni_runnable()
    c = Cluster(kind, 3)
    st = types.SimpleNamespace(kind=kind, etcd=c, pc=None, failed=False, patroni=version)
    try:
        c.start()
        st.pc = PatroniCluster([m.endpoint for m in c.members], 3, ttl=TTL,
                               loop_wait=LOOP_WAIT, retry_timeout=RETRY_TIMEOUT)
        yield st
    finally:
        if st.pc is not None:
            st.pc.stop(cleanup=True)
        c.stop(cleanup=True)


@pytest.fixture(autouse=True)
def _on_failure(request, env):
    """Skips a step once an earlier one failed; prints the logs of the step that fails."""
    if env.failed:
        pytest.skip("an earlier step of the Patroni scenario failed")
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        env.failed = True
        if env.pc is not None:
            print(f"\n{env.pc.describe()}\n{env.pc.log_tails(80)}")
        print(f"\n{env.etcd.describe()}\n{env.etcd.log_tails(60)}")


# ------------------------------------------------------------------------------ helpers
def patroni_status(node) -> dict | None:
    st, body = node.rest("/patroni")
    return body if st in (200, 503) and isinstance(body, dict) else None


def is_primary(node) -> bool:
    s = patroni_status(node)
    return bool(s) and s.get("role") in PRIMARY_ROLES and s.get("state") == "running"


def wait_for(what: str, fn, timeout: float, every: float = 0.2):
    """Calls fn() until it returns a truthy value (returned); AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
        except Exception as e:  # noqa: BLE001 - a transient error is just "not yet"
            v, last = None, repr(e)
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s; last error: {last}")


def ensure_table(node) -> None:
    pg_query(node, "CREATE TABLE IF NOT EXISTS compat_patroni (id bigserial PRIMARY KEY, "
                   "note text NOT NULL, at timestamptz NOT NULL DEFAULT now())")


def insert(node, note: str) -> None:
    pg_query(node, "INSERT INTO compat_patroni (note) VALUES (%s)", (note,))


def has_row(node, note: str) -> bool:
    rows = pg_query(node, "SELECT count(*) FROM compat_patroni WHERE note = %s", (note,))
    return rows[0][0] == 1


def etcd_get(member, key: str) -> tuple[dict | None, int]:
    """(kv dict with decoded value, header revision) of one key, linearizable."""
    rc, out, err = member.etcdctl("get", key, "-w", "json", timeout=15)
    assert rc == 0, f"etcdctl get {key} on {member.name}: exit {rc}\n{out}\n{err}"
    d = json.loads(out)
    kvs = d.get("kvs") or []
    kv = None
    if kvs:
        kv = dict(kvs[0])
        kv["value"] = base64.b64decode(kv.get("value", "")).decode()
    return kv, int(d["header"]["revision"])


def lease_ttl(member, lease: int) -> int:
    rc, out, err = member.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json",
                                  timeout=15)
    assert rc == 0, f"lease timetolive on {member.name}: exit {rc}\n{out}\n{err}"
    return int(json.loads(out).get("ttl", -1))


# -------------------------------------------------------------------------------- tests
def test_bootstrap_leader_and_two_streaming_replicas(env):
    pc = env.pc
    t0 = time.monotonic()
    pc.start()
    leader, rows = pc.wait_healthy(timeout=120)
    boot_s = time.monotonic() - t0
    env.leader = leader
    assert sorted(r["Member"] for r in rows) == ["pg1", "pg2", "pg3"], rows
    assert all(r.get("Cluster") == pc.scope for r in rows), rows

    # the human-readable table too
    rc, out, err = pc.patronictl("list", timeout=30)
    assert rc == 0 and leader in out and out.count("streaming") == 2, f"{rc}\n{out}\n{err}"

    node = pc.node(leader)
    streams = wait_for("2 streams in pg_stat_replication", lambda: (lambda r: r if len(r) == 2
                       else None)(pg_query(node, "SELECT application_name, state FROM "
                                           "pg_stat_replication WHERE state = 'streaming'")),
                       timeout=30, every=0.5)
    assert sorted(a for a, _ in streams) == sorted(n.name for n in pc.nodes if n.name != leader)
    assert pg_query(node, "SELECT pg_is_in_recovery()")[0][0] is False
    ensure_table(node)
    insert(node, "bootstrap")
    report("patroni_bootstrap", kind=env.kind, patroni=env.patroni, leader=leader,
           seconds_to_healthy=round(boot_s, 1))


def test_failover_after_kill_9_of_primary_patroni_and_postmaster(env):
    pc = env.pc
    old, _ = pc.wait_healthy(timeout=60)
    old_node = pc.node(old)
    survivors = [n for n in pc.nodes if n.name != old]
    tl0 = patroni_status(old_node)["timeline"]

    # a row on the primary that both replicas have replayed before the crash
    insert(old_node, "before-failover")
    for n in survivors:
        wait_for(f"row replayed on {n.name}", lambda n=n: has_row(n, "before-failover"), 20)

    assert old_node.postmaster_pid(), old_node.describe()
    old_node.kill_patroni(signal.SIGKILL)
    pm = old_node.kill_postmaster()
    t0 = time.monotonic()
    assert pm, "no postmaster to kill"

    new_node = wait_for("a replica promoted",
                        lambda: next((n for n in survivors if is_primary(n)), None),
                        timeout=PROMOTE_BOUND + 30)
    promoted_s = time.monotonic() - t0
    # the DCS names it leader too
    wait_for("leader in /cluster", lambda: any(
        m["name"] == new_node.name and m["role"] == "leader"
        for m in (new_node.rest("/cluster")[1] or {}).get("members", [])), 10)

    assert pg_query(new_node, "SELECT pg_is_in_recovery()")[0][0] is False
    insert(new_node, "after-failover")
    assert has_row(new_node, "before-failover")
    write_s = time.monotonic() - t0
    tl1 = patroni_status(new_node)["timeline"]
    assert tl1 > tl0, (tl0, tl1)

    # the other replica follows the new primary (the dead one is still listed until its
    # member key's lease expires: leave it out)
    other = next(n for n in survivors if n is not new_node)
    leader, _ = pc.wait_healthy(timeout=60, replicas=1, exclude=(old,))
    assert leader == new_node.name
    wait_for(f"after-failover on {other.name}", lambda: has_row(other, "after-failover"), 20)

    # the old primary's Patroni, restarted, rejoins as a replica (crash recovery, rewind)
    t1 = time.monotonic()
    old_node.start()
    leader, rows = pc.wait_healthy(timeout=120)
    rejoin_s = time.monotonic() - t1
    assert leader == new_node.name, rows
    wait_for(f"after-failover on {old}", lambda: has_row(old_node, "after-failover"), 20)
    env.leader = leader
    env.killed = old
    report("patroni_failover", kind=env.kind, killed=old, promoted=new_node.name,
           ttl=TTL, loop_wait=LOOP_WAIT, seconds_to_promoted=round(promoted_s, 1),
           seconds_to_first_write=round(write_s, 1), timeline=[tl0, tl1],
           seconds_old_primary_rejoined=round(rejoin_s, 1))
    assert promoted_s <= PROMOTE_BOUND, \
        f"promoted after {promoted_s:.1f}s, more than ttl {TTL} + margin ({PROMOTE_BOUND}s)"


def test_switchover_with_patronictl(env):
    pc = env.pc
    cur, rows = pc.wait_healthy(timeout=60)
    # the candidate: the replica that was the primary before the failover (rejoined by
    # pg_rewind), if it is a streaming replica now
    reps = [r["Member"] for r in rows if r["Role"] == "Replica"]
    cand = getattr(env, "killed", None) if getattr(env, "killed", None) in reps else reps[0]
    cand_node = pc.node(cand)
    t0 = time.monotonic()
    rc, out, err = pc.patronictl("switchover", "--leader", cur, "--candidate", cand, "--force",
                                 timeout=90)
    cmd_s = time.monotonic() - t0
    assert rc == 0, f"patronictl switchover: exit {rc}\n{out}\n{err}"
    assert "Successfully switched over" in out, out + err
    wait_for(f"{cand} primary", lambda: is_primary(cand_node), 30)
    promoted_s = time.monotonic() - t0
    insert(cand_node, "after-switchover")
    leader, rows = pc.wait_healthy(timeout=90)
    healthy_s = time.monotonic() - t0
    assert leader == cand, rows
    wait_for(f"after-switchover on {cur}", lambda: has_row(pc.node(cur), "after-switchover"), 20)
    env.leader = leader
    report("patroni_switchover", kind=env.kind, old=cur, new=cand,
           seconds_patronictl=round(cmd_s, 1), seconds_to_primary=round(promoted_s, 1),
           seconds_to_all_streaming=round(healthy_s, 1))


def test_dcs_leader_kill_does_not_fail_over_postgres(env):
    pc, c = env.pc, env.etcd
    leader, rows = pc.wait_healthy(timeout=60)
    p = pc.node(leader)
    st0 = patroni_status(p)
    tl0, pm0 = st0["timeline"], p.postmaster_pid()
    assert pm0, p.describe()
    leader_key = f"{pc.namespace}{pc.scope}/leader"
    status_key = f"{pc.namespace}{pc.scope}/status"
    offsets = {n.name: n.log_size() for n in pc.nodes}

    # The hard case: the member that the primary's Patroni talks to (requests and watch) is
    # the Raft leader when it dies. Find that member from the daemon's TCP connections (the
    # one with most of them) and hand it the leadership (MoveLeader) if it does not have it.
    dcs_leader = c.wait_leader(timeout=20)
    by_port = {m.client_port: m for m in c.members}
    conns = {by_port[port].name: k for port, k in p.remote_ports().items() if port in by_port}
    moved = None
    if conns:
        top = [n for n, k in conns.items() if k == max(conns.values())]
        target = dcs_leader if dcs_leader.name in top else c.member(top[0])
        if target is not dcs_leader:
            rc, out, err = dcs_leader.etcdctl("move-leader", format(c.member_id(target), "x"),
                                              timeout=20)
            assert rc == 0, f"move-leader to {target.name}: exit {rc}\n{out}\n{err}"
            moved = f"{dcs_leader.name}->{target.name}"
            dcs_leader = c.wait_leader(timeout=20)
            assert dcs_leader is target, (dcs_leader.name, target.name)
            time.sleep(2 * LOOP_WAIT)
    survivors = [m for m in c.members if m is not dcs_leader]
    kv0, _ = etcd_get(survivors[0], leader_key)
    skv0, _ = etcd_get(survivors[0], status_key)
    assert kv0 and kv0["value"] == leader, kv0

    # PostgreSQL writes on the primary throughout: a demoted primary would refuse them, and
    # they move the WAL position that the leader's Patroni writes to /status every loop
    stop = threading.Event()
    writes = {"ok": 0, "failed": []}

    def writer():
        conn = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = pg_connect(p)
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO compat_patroni (note) VALUES ('during-dcs-kill')")
                writes["ok"] += 1
            except Exception as e:  # noqa: BLE001
                writes["failed"].append(f"{time.strftime('%H:%M:%S')} {e!r}"[:300])
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
            stop.wait(0.5)
        if conn is not None:
            conn.close()

    wt = threading.Thread(target=writer, daemon=True)
    wt.start()
    try:
        time.sleep(2)
        c.kill(dcs_leader)
        t0 = time.monotonic()
        new_dcs = c.wait_leader(members=survivors, timeout=20)
        elected_s = time.monotonic() - t0

        samples, bad, ctl_fail = 0, [], []
        max_dcs_age = 0.0
        next_ctl = 0.0
        while time.monotonic() - t0 < 3 * TTL:
            s = patroni_status(p)
            samples += 1
            if not s:
                bad.append(f"+{time.monotonic() - t0:.1f}s: no /patroni answer from {leader}")
            else:
                if s.get("role") not in PRIMARY_ROLES or s.get("state") != "running" or \
                        s.get("timeline") != tl0:
                    bad.append(f"+{time.monotonic() - t0:.1f}s: /patroni {s}")
                if s.get("dcs_last_seen"):
                    max_dcs_age = max(max_dcs_age, time.time() - float(s["dcs_last_seen"]))
            for n in pc.nodes:
                if n is p:
                    continue
                code, cl = n.rest("/cluster")
                members = cl.get("members", []) if isinstance(cl, dict) else []
                lead = [m["name"] for m in members if m.get("role") == "leader"]
                if code == 200 and lead != [leader]:
                    bad.append(f"+{time.monotonic() - t0:.1f}s: /cluster on {n.name}: {cl}")
            if time.monotonic() >= next_ctl:
                next_ctl = time.monotonic() + 5
                try:
                    rows = pc.list()
                    lrows = [r for r in rows if r["Role"] == "Leader"]
                    if [r["Member"] for r in lrows] != [leader] or lrows[0]["TL"] != tl0:
                        bad.append(f"+{time.monotonic() - t0:.1f}s: patronictl list {rows}")
                except AssertionError as e:
                    ctl_fail.append(f"+{time.monotonic() - t0:.1f}s: {str(e)[-300:]}")
            time.sleep(1)
        window_s = time.monotonic() - t0
    finally:
        stop.set()
        wt.join(10)

    # the DCS side, through a surviving member: same leader key and lease, lease still alive,
    # /status rewritten since the kill
    kv1, _ = etcd_get(new_dcs, leader_key)
    skv1, _ = etcd_get(new_dcs, status_key)
    assert kv1 and kv1["value"] == leader, kv1
    ttl_left = lease_ttl(new_dcs, int(kv1["lease"]))
    logs = {n.name: n.log_since(offsets[n.name]) for n in pc.nodes}
    ha_events = {name: [ln for ln in text.splitlines() if DEMOTE_RE.search(ln)]
                 for name, text in logs.items()}
    dcs_errors = sum(text.count("ERROR") + text.count("WARNING") for text in logs.values())

    report("patroni_dcs_leader_kill", kind=env.kind, patroni_leader=leader, timeline=tl0,
           dcs_leader_killed=dcs_leader.name, dcs_new_leader=new_dcs.name,
           patroni_leader_dcs_connections=conns, moved_leader=moved,
           seconds_dcs_elected=round(elected_s, 2), window_s=round(window_s, 1),
           rest_samples=samples, pg_writes_ok=writes["ok"], pg_writes_failed=len(writes["failed"]),
           max_dcs_last_seen_age_s=round(max_dcs_age, 1), patronictl_failures=len(ctl_fail),
           leader_lease_same=kv0.get("lease") == kv1.get("lease"), leader_lease_ttl_left=ttl_left,
           status_mod_revision=[skv0 and skv0.get("mod_revision"),
                                skv1 and skv1.get("mod_revision")],
           patroni_log_warnings_errors=dcs_errors)

    assert not bad, "the Patroni leader changed or wobbled:\n" + "\n".join(bad[:20])
    assert not any(ha_events.values()), f"HA events after the DCS leader kill: {ha_events}"
    assert writes["ok"] > 0 and not writes["failed"], \
        f"PostgreSQL writes on the primary failed: {writes['failed'][:10]}"
    assert p.postmaster_pid() == pm0, "the primary's postmaster was restarted"
    assert ttl_left > 0, f"leader lease {kv1['lease']} not alive: ttl {ttl_left}"
    assert skv0 and skv1 and int(skv1["mod_revision"]) > int(skv0["mod_revision"]), \
        f"/status not rewritten after the DCS leader kill: {skv0} -> {skv1}"
    # Patroni kept reaching the DCS: its last successful contact never got older than a
    # couple of HA loops plus one retry_timeout
    assert max_dcs_age <= LOOP_WAIT * 2 + RETRY_TIMEOUT + 2, \
        f"dcs_last_seen got {max_dcs_age:.1f}s old"
    assert len(ctl_fail) <= 1, f"patronictl list failed: {ctl_fail}"
    leader2, _ = pc.wait_healthy(timeout=30)
    assert leader2 == leader
