"""Cluster tests with real processes: a 3-member cluster from --initial-cluster, failover after
`kill -9` of the leader (through the log and through a snapshot), and membership changes under
load. The servers are pgraftd, or etcd 3.4 with COMPAT_REFERENCE_ONLY=1 (checks the tests).

Measured numbers (failover time, replication lag, ...) are printed as `MEASURE {...}` lines
(shown with `pytest -s`) and appended to compat-tests/.work/measurements.jsonl.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from cluster import (Writer, get, hexid, member_list, ok, probe_first_write, put, report,
                     status)


def test_three_members_replicate(cluster_factory):
    c = cluster_factory(3)
    leader = c.wait_leader()

    # every member lists the same three members, with their names and URLs
    for m in c.members:
        ms = c.wait_members(m, {n: False for n in c.in_cluster}, timeout=10)
        assert len(ms) == 3, ms
        for x in ms:
            peer = c.by_id(int(x["ID"]))
            assert x["peerURLs"] == [peer.advertise_peer_url], x
            assert x["clientURLs"] == [peer.client_url], x

    # exactly one leader in `endpoint status`, asked of all three endpoints at once
    out = ok(c.etcdctl_many(c.members, "endpoint", "status", "-w", "json"), "endpoint status")
    sts = json.loads(out)
    assert sorted(s["Endpoint"] for s in sts) == sorted(m.endpoint for m in c.members), sts
    claims = [s for s in sts if s["Status"].get("leader", 0) == s["Status"]["header"]["member_id"]]
    assert len(claims) == 1, sts
    assert claims[0]["Endpoint"] == leader.endpoint, sts
    assert {s["Status"].get("leader", 0) for s in sts} == {c.member_id(leader)}, sts
    assert len({s["Status"]["raftTerm"] for s in sts}) == 1, sts
    assert len({s["Status"]["header"]["cluster_id"] for s in sts}) == 1, sts

    # a write on any member is visible on all: linearizable reads at once, serializable ones
    # (each member's own state) within a bounded lag, and at once after a linearizable read
    lags = []
    for m in c.members:
        key, value = f"rep/{m.name}", f"written-on-{m.name}"
        ok(put(m, key, value), f"put on {m.name}")
        t0 = time.monotonic()
        for o in c.members:
            deadline = time.monotonic() + 5
            while True:
                rc, got, err = get(o, key, serializable=True)
                if rc == 0 and got == value:
                    lags.append(time.monotonic() - t0)
                    break
                assert time.monotonic() < deadline, \
                    f"{key} written on {m.name} not on {o.name} after 5s: {rc} {got} {err}"
                time.sleep(0.02)
            rc, got, err = get(o, key)
            assert (rc, got) == (0, value), f"linearizable get {key} on {o.name}: {rc} {got} {err}"
            rc, got, err = get(o, key, serializable=True)
            assert (rc, got) == (0, value), f"serializable get {key} on {o.name}: {rc} {got} {err}"

    # every member ends with identical data and revision
    dumps = c.wait_converged(c.members, {f"rep/{m.name}": f"written-on-{m.name}"
                                         for m in c.members}, timeout=10)
    report("three_members_replicate", leader=leader.name,
           max_serializable_lag_s=round(max(lags), 3),
           revision=next(iter(dumps.values()))[0])


def test_endpoint_status_cluster_flag(cluster_factory):
    """`etcdctl endpoint status --cluster` asks every member at its advertised client URL
    (http://127.0.0.1:PORT, taken from the member list)."""
    c = cluster_factory(3)
    leader = c.wait_leader()
    out = ok(c.members[0].etcdctl("endpoint", "status", "--cluster", "-w", "json"),
             "endpoint status --cluster")
    sts = json.loads(out)
    assert sorted(s["Endpoint"] for s in sts) == sorted(m.client_url for m in c.members), sts
    assert [s["Endpoint"] for s in sts
            if s["Status"].get("leader", 0) == s["Status"]["header"]["member_id"]] == \
        [leader.client_url], sts


def kill_leader_under_writes(c, leader, survivors, acked_first: int):
    """Starts a Writer on the voters, waits for `acked_first` acknowledged writes, kill -9s the
    leader and probes the survivors until one takes a write. Returns the writer (still
    running: the caller stops it), the time of the kill, the seconds from the kill to the
    first acknowledged probe, and the acknowledged probes."""
    w = Writer(c.voters, prefix="w/", threads=2).start()
    try:
        w.wait_acked(acked_first, timeout=30)
        t_kill = time.monotonic()
        c.kill(leader)
        failover, probes = probe_first_write(survivors, t_kill, "probe/")
    except BaseException:
        w.stop()
        raise
    return w, t_kill, failover, probes


def test_crashed_leader_is_replaced_before_its_lease_ends(cluster_factory, cluster_kind):
    """pgraft's fast failover: a follower whose link to the leader breaks (kill -9 closes the
    leader's sockets), and which then hears nothing from it for 1.5 heartbeat intervals, gives
    up the leader's lease instead of waiting out the election timeout. With a 3 s election
    timeout no follower may campaign earlier than 3 s after the leader's last message unless
    it noticed the broken link; with it, the new leader takes writes within half the timeout
    (the randomized part) plus the election and the probe.
    A split vote (both followers campaigning in the same instant: the term then moves by more
    than 1) costs one further randomized timeout, and is allowed for."""
    if cluster_kind != "pgraftd":
        pytest.skip("pgraft's own failover speed-up; etcd waits out the election timeout")
    c = cluster_factory(3, election_ms=3000)
    election_s = c.election_ms / 1000
    leader = c.wait_leader()
    survivors = [m for m in c.members if m is not leader]
    term0 = int(status(leader)["raftTerm"])
    w, _, failover, probes = kill_leader_under_writes(c, leader, survivors, acked_first=10)
    w.stop()
    new_leader = c.wait_leader(survivors, timeout=10)
    terms = int(status(new_leader)["raftTerm"]) - term0
    bound = 0.5 * election_s + 1.0 + (1.6 * election_s if terms > 1 else 0)
    report("crashed_leader_replaced_before_lease_ends", failover_s=round(failover, 3),
           bound_s=bound, election_timeout_ms=c.election_ms, terms_elapsed=terms,
           new_leader=new_leader.name)
    assert failover < bound, \
        f"first write acknowledged {failover:.2f}s after kill -9 of the leader ({terms} " \
        f"election round(s)); with the broken link noticed it should take under {bound:.1f}s"
    c.wait_converged(survivors, {**w.expected(), **probes}, timeout=30)


@pytest.mark.parametrize("catch_up", ["log", "snapshot"])
def test_kill_leader_failover(cluster_factory, cluster_kind, catch_up):
    """kill -9 the leader under steady writes; a survivor takes writes within 2 x the election
    timeout; every acknowledged write stays; the killed member restarts and catches up (in the
    snapshot variant: after more writes than --snapshot-count + the kept entries, so the log it
    needs is compacted away and it must install a snapshot)."""
    snapshot_count = 100 if catch_up == "snapshot" else None
    c = cluster_factory(3, snapshot_count=snapshot_count)
    election_s = c.election_ms / 1000
    leader = c.wait_leader()
    survivors = [m for m in c.members if m is not leader]

    w, t_kill, failover, probes = kill_leader_under_writes(c, leader, survivors, acked_first=20)
    try:
        new_leader = c.wait_leader(survivors, timeout=10)
        assert new_leader is not leader
        acked_at_kill = w.acked_between(0, t_kill)

        # writes while the old leader is down: with a small --snapshot-count, more than
        # snapshot-count + catch-up entries (pgraftd keeps min(5000, snapshot-count) entries)
        down_writes = 3 * snapshot_count + 50 if snapshot_count else 30
        extra = Writer(c.voters, prefix="x/", threads=2).start() if snapshot_count else None
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                n = w.acked_between(t_kill) + (len(extra.acked) if extra else 0)
                if n >= down_writes:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"only {n} of {down_writes} writes while the leader was "
                                     f"down; {w.summary()}")
        finally:
            if extra:
                extra.stop()

        t_restart = time.monotonic()
        c.start_member(leader)  # waits until a linearizable read on it works
        ready_s = time.monotonic() - t_restart
        w.wait_acked(10, timeout=30, since=time.monotonic())
    finally:
        w.stop()

    expect = {**w.expected(), **probes, **(extra.expected() if extra else {})}
    t0 = time.monotonic()
    dumps = c.wait_converged(c.members, expect, timeout=60)
    caught_up_s = ready_s + time.monotonic() - t0
    final_leader = c.wait_leader(timeout=10)

    log = leader.log_since_start()
    if catch_up == "snapshot" and cluster_kind == "pgraftd":
        assert "received snapshot" in log and "installed snapshot" in log, \
            "the restarted member caught up without a snapshot:\n" + leader.log_tail(30)
    report(f"kill_leader_failover[{catch_up}]",
           failover_s=round(failover, 3), bound_s=2 * election_s,
           election_timeout_ms=c.election_ms, killed=leader.name, new_leader=new_leader.name,
           final_leader=final_leader.name, acked_before_kill=acked_at_kill,
           acked_total=len(expect), writes_while_down=down_writes,
           restarted_member_ready_s=round(ready_s, 2),
           restarted_member_converged_s=round(caught_up_s, 2),
           snapshot_installed="installed snapshot" in log,
           revision=next(iter(dumps.values()))[0], writer=w.summary())
    assert failover <= 2 * election_s, \
        f"first write acknowledged {failover:.2f}s after kill -9 of the leader, more than " \
        f"2 x the election timeout ({2 * election_s}s)"


def test_membership_changes_under_load(cluster_factory, cluster_kind):
    """Add a learner, let it catch up, promote it, remove a follower, then remove the leader,
    all while a writer keeps writing; member list checked at each step; no acknowledged write
    missing at the end."""
    c = cluster_factory(3)
    m1, m2, m3 = c.members
    leader = c.wait_leader()
    steps = {}
    w = Writer(c.voters, prefix="w/", threads=2).start()
    try:
        w.wait_acked(10, timeout=30)

        # 1. add m4 as a learner: listed, unstarted (no name, no client URLs)
        m4 = c.new_member()
        t = time.monotonic()
        mid = c.add_learner(m1, m4)
        ms = c.wait_members(m2, {"m1": False, "m2": False, "m3": False, "m4": True},
                            started=False)
        entry = next(x for x in ms if int(x["ID"]) == mid)
        assert entry["peerURLs"] == [m4.advertise_peer_url], entry
        assert not entry.get("name") and not entry.get("clientURLs"), entry

        # 2. start it with --initial-cluster-state existing; it catches up as a learner
        c.start_member(m4)
        c.wait_converged([m4], w.expected(), prefix="w/", timeout=30)  # serializable reads
        st = status(m4)
        assert st and st.get("isLearner") is True, st
        rc, out, err = put(m4, "learner/put", "x")
        assert rc != 0 and "rpc not supported for learner" in err, (rc, out, err)
        rc, got, err = get(m4, "w/000001")
        assert rc != 0 and "rpc not supported for learner" in err, (rc, got, err)
        c.wait_members(m3, {"m1": False, "m2": False, "m3": False, "m4": True})
        steps["learner_caught_up_s"] = round(time.monotonic() - t, 2)

        # 3. promote it (retried while "not in sync"); then it takes writes too
        t = time.monotonic()
        steps["promote_tries"] = c.promote(m2, m4)
        c.wait_members(m1, {"m1": False, "m2": False, "m3": False, "m4": False})
        steps["promote_s"] = round(time.monotonic() - t, 2)
        ok(put(m4, "promoted/put", "y"), "put on the promoted member")
        w.wait_acked(10, timeout=30, since=time.monotonic())

        # 4. remove a follower (not the leader); its process exits by itself
        leader = c.wait_leader()
        victim = next(m for m in (m1, m2, m3) if m is not leader)
        t = time.monotonic()
        c.remove(leader, victim)
        rest = {n: False for n in c.in_cluster}
        c.wait_members(leader, rest)
        if not exits(victim, 15):
            victim.stop(cleanup=False)
        steps["removed_follower"] = victim.name
        steps["follower_exit_s"] = round(time.monotonic() - t, 2)
        w.wait_acked(10, timeout=30, since=time.monotonic())

        # 5. remove the leader itself: it exits, the other two elect a leader and go on
        leader = c.wait_leader()
        via = next(m for m in c.voters() if m is not leader)
        t = time.monotonic()
        c.remove(via, leader)
        if not exits(leader, 15):
            leader.stop(cleanup=False)
        steps["removed_leader"] = leader.name
        steps["leader_exit_s"] = round(time.monotonic() - t, 2)
        new_leader = c.wait_leader(timeout=15)
        steps["new_leader_after_removal_s"] = round(time.monotonic() - t, 2)
        c.wait_members(new_leader, {n: False for n in c.in_cluster})
        w.wait_acked(10, timeout=30, since=time.monotonic())
    finally:
        w.stop()

    expect = {**w.expected(), "promoted/put": "y"}
    c.wait_converged(c.running(), expect, timeout=30)
    for m in c.running():
        ids = sorted(hexid(int(x["ID"])) for x in member_list(m))
        assert ids == sorted(hexid(c.ids[n]) for n in c.in_cluster), (m.name, ids)
    report("membership_changes_under_load", **steps, final_members=c.in_cluster,
           acked=len(expect), writer=w.summary())


def test_new_learner_refuses_writes_from_the_start(cluster_factory, cluster_kind, request):
    """A learner must refuse writes (and linearizable reads) from its first moment, also
    before it received its first snapshot from the leader: none of the puts sent to it may be
    acknowledged or end up in the cluster."""
    c = cluster_factory(3)
    leader = c.wait_leader()
    # some megabytes of data, so that making, sending and installing the learner's first
    # snapshot takes a while
    big = "v" * 10000
    for t in range(6):
        ops = "".join(f"put pre/{t}/{i:03d} {big}\n" for i in range(100))
        ok(leader.etcdctl("txn", input="\n" + ops + "\n\n"), "txn")
    m4 = c.new_member()
    c.add_learner(c.members[0], m4)
    c.start_member(m4, wait=False)
    results = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:
            key = f"learner/{worker}/{i:03d}"
            rc, out, err = put(m4, key, "x", command_timeout="1s")
            st = status(m4)
            with lock:
                results.append((key, rc, err.strip().splitlines()[-1:] if err else "",
                                st and st.get("isLearner")))
            i += 1

    threads = [threading.Thread(target=hammer, args=(n,), daemon=True) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    m4.wait_ready()
    acked = [r for r in results if r[1] == 0]
    not_learner = [r for r in results if r[3] is not None and r[3] is not True]
    rc, out, err = leader.etcdctl("get", "learner/", "--prefix", "--keys-only")
    assert rc == 0, err
    committed = out.split()
    assert not acked and not committed and not not_learner, \
        f"learner took writes: acknowledged {acked[:5]}, committed {committed[:5]}, " \
        f"status said not a learner {not_learner[:5]} (of {len(results)} tries)"


def exits(m, timeout: float) -> bool:
    """Waits (bounded) until removed member m exits by itself, with code 0 (etcd and pgraftd
    alike: a removed member that missed its removal learns it from its peers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.proc.poll() is not None:
            rc = m.proc.returncode
            assert rc == 0, f"removed member {m.name} exited with {rc}\n{m.log_tail(20)}"
            return True
        time.sleep(0.1)
    raise AssertionError(f"removed member {m.name} did not exit within {timeout} s; "
                         f"its status: {status(m)}\n{m.log_tail(20)}")


def test_strict_reconfig_check(cluster_factory):
    """etcd's --strict-reconfig-check (on by default): with one of three members down, adding a
    member (voter or learner) and removing a connected voter are refused with
    `etcdserver: unhealthy cluster` and change nothing; removing the member that is down is
    allowed."""
    c = cluster_factory(3)
    leader = c.wait_leader()
    ids = {m.name: c.member_id(m) for m in c.members}
    victim, survivor = [m for m in c.members if m is not leader]
    c.kill(victim)
    time.sleep(3)  # longer than either server takes to see a peer gone
    m4 = c.new_member()
    for extra in ([], ["--learner"]):
        rc, out, err = leader.etcdctl("member", "add", m4.name, *extra,
                                      f"--peer-urls={m4.advertise_peer_url}")
        assert rc != 0 and "etcdserver: unhealthy cluster" in err, (extra, rc, out, err)
    rc, out, err = leader.etcdctl("member", "remove", hexid(ids[survivor.name]))
    assert rc != 0 and "etcdserver: unhealthy cluster" in err, (rc, out, err)
    assert sorted(int(x["ID"]) for x in member_list(leader)) == sorted(ids.values())
    # The member that is down is not part of the active quorum: it may go.
    ok(leader.etcdctl("member", "remove", hexid(ids[victim.name])), "remove the member that is down")
    c.in_cluster.remove(victim.name)
    assert sorted(int(x["ID"]) for x in member_list(leader)) == sorted(
        ids[m.name] for m in (leader, survivor))
    ok(put(survivor, "after/remove", "v"), "a write with two members")


def test_stopping_leader_hands_over_leadership(cluster_factory, cluster_kind):
    """A leader stopped cleanly (SIGTERM) first hands its leadership to another voter, as etcd
    does: the survivors have a leader as soon as it is gone, not an election timeout later
    (without the handover they would need at least the 1 s election timeout)."""
    c = cluster_factory(3)
    leader = c.wait_leader()
    survivors = [m for m in c.members if m is not leader]
    c.wait_leader(survivors + [leader])
    t0 = time.monotonic()
    leader.kill(signal.SIGTERM)
    exited = time.monotonic() - t0
    new = c.wait_leader(survivors, timeout=10)
    after_exit = time.monotonic() - t0 - exited
    report("stopping_leader_hands_over", kind=cluster_kind, stopped=leader.name,
           new_leader=new.name, seconds_to_exit=round(exited, 3),
           seconds_leader_after_exit=round(after_exit, 3))
    # wait_leader polls every 0.1 s with endpoint status calls: allow for that, well under the
    # election timeout.
    assert after_exit < 0.5, (exited, after_exit)
    ok(put(new, "after/stop", "v"), "a write to the new leader")
