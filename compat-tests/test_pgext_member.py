"""The pgraft PostgreSQL extension in member mode, end to end and black box: three PostgreSQL 15
instances, configured only through postgresql.conf (`shared_preload_libraries = 'pgraft'`,
`pgraft.name`, one `pgraft.initial_cluster`, `pgraft.client_address`), each host a member of
one Raft cluster in its "pgraft member" background worker. Everything is driven through SQL
(psql) and, against each `pgraft.client_address`, through etcdctl.

The tests share one cluster (a module fixture, election timeout 1000 ms, heartbeat 100 ms) and
run in file order; each one leaves the cluster with all three instances up and one agreed
leader. The failover tests measure, from the moment the leader's PostgreSQL is stopped
(`pg_ctl stop -m fast`, measured from the stop's completion), its postmaster killed
(`kill -9`), or all its processes killed at once (a host crash), the time until a survivor
first reports another leader (pgraft_get_leader()); the bound is 2 x the election timeout. Numbers
are printed as `MEASURE {...}` lines (pytest -s) and appended to .work/measurements.jsonl.

Skipped when the extension is not installed, unless PGRAFT_REQUIRE_PGEXT=1 (then it fails).
"""

from __future__ import annotations

import json
import os
import threading
import time
import types

import pytest

from cluster import report
from harness import free_ports
from pg_cluster import PgCluster, sql, try_sql, wait_for
from pgext_common import (NODE_COLS, REPL_COLS, cluster_status, etcd_get, etcd_keys,
                          etcd_put_many, etcdctl_ok, hex_id, kv_get, kv_put, nodes,
                          q, require_pgext, rows_of)

ELECTION_MS = 1000
HEARTBEAT_MS = 100
FAILOVER_BOUND = 2 * ELECTION_MS / 1000.0
NAMES = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def mc():
    """Three member-mode instances n1..n3, started, with the extension created in each."""
    require_pgext()
    peer = free_ports(3)
    client = free_ports(3)
    initial = ",".join(f"{n}=127.0.0.1:{p}" for n, p in zip(NAMES, peer))
    token = f"compat-pgext-{os.getpid()}-{time.monotonic_ns() % 10**9}"

    def conf(inst):
        i = NAMES.index(inst.name)
        return [
            "shared_preload_libraries = 'pgraft'",
            f"pgraft.name = '{inst.name}'",
            f"pgraft.initial_cluster = '{initial}'",
            f"pgraft.client_address = '127.0.0.1:{client[i]}'",
            f"pgraft.election_timeout = {ELECTION_MS}",
            f"pgraft.heartbeat_interval = {HEARTBEAT_MS}",
            f"pgraft.cluster_token = '{token}'",
        ]

    pc = PgCluster(3, conf=conf, prefix="pgext-member", names=NAMES)
    st = types.SimpleNamespace(pc=pc, peer=dict(zip(NAMES, peer)),
                               client={n: f"127.0.0.1:{c}" for n, c in zip(NAMES, client)},
                               ids={})
    try:
        t0 = time.monotonic()
        pc.start()
        for inst in pc:
            sql(inst, "CREATE EXTENSION pgraft")
        leader = wait_one_leader(list(pc), timeout=20)
        st.ids = {i.name: cluster_status(i)["node_id"] for i in pc}
        report("pgext_member_bootstrap", seconds_to_leader=round(time.monotonic() - t0, 2),
               leader=leader.name)
        yield st
    finally:
        pc.stop(cleanup=True)


@pytest.fixture(autouse=True)
def _logs_on_failure(request, mc):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n{mc.pc.describe()}\n{mc.pc.log_tails(60)}")


# ------------------------------------------------------------------------------ helpers
def wait_one_leader(instances, timeout: float = 10):
    """Waits until exactly one of `instances` says pgraft_is_leader() and every one of them
    names it in pgraft_get_cluster_status(); returns it."""
    def check():
        sts = {i.name: cluster_status(i) for i in instances}
        claim = [n for n, s in sts.items() if s["is_leader"]]
        if len(claim) != 1:
            raise AssertionError(f"claimants {claim}: {sts}")
        lid = sts[claim[0]]["node_id"]
        if any(s["leader_id"] != lid for s in sts.values()):
            raise AssertionError(f"not all name {claim[0]}: {sts}")
        return next(i for i in instances if i.name == claim[0])
    return wait_for(f"one agreed leader among {[i.name for i in instances]}", check, timeout)


def leader_of(mc):
    return wait_one_leader(list(mc.pc), timeout=10)


def leader_id(inst) -> int | None:
    out = sql(inst, "SELECT pgraft_get_leader()", timeout=10)
    return int(out) if out else None


def watch_new_leader(survivors, old_id: int, timeout: float = 15.0):
    """Starts one thread per survivor polling pgraft_get_leader() back to back. Returns
    (start, result) where start() begins polling and result() waits and gives
    {name: (monotonic time of the first answer naming a leader other than old_id, that id)}
    plus the errors seen."""
    found: dict[str, tuple[float, int]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    threads = []

    def poll(inst):
        deadline = time.monotonic() + timeout
        while not stop.is_set() and time.monotonic() < deadline:
            rc, out, err = try_sql(inst, "SELECT pgraft_get_leader()", timeout=10)
            now = time.monotonic()
            if rc == 0 and out.strip() and int(out.strip()) != old_id:
                with lock:
                    found[inst.name] = (now, int(out.strip()))
                stop.set()  # the first answer is what is measured
                return
            if rc != 0:
                with lock:
                    errors.append(f"{inst.name}: {err.strip()[-200:]}")
            time.sleep(0.01)

    def start():
        for inst in survivors:
            t = threading.Thread(target=poll, args=(inst,), daemon=True)
            t.start()
            threads.append(t)

    def result():
        for t in threads:
            t.join(timeout + 15)
        stop.set()
        return found, errors

    return start, result


def failover(mc, how: str) -> None:
    """Stops the leader's PostgreSQL (`how` = "stop": pg_ctl stop -m fast), kills its
    postmaster ("kill9": SIGKILL to the postmaster only; the children, the member worker among
    them, notice and exit by themselves) or crashes it ("crash": SIGKILL to every process of the
    instance at once, like a host crash); checks and measures the new election, writes on the
    survivors, and the restarted instance's rejoin with its data."""
    pc = mc.pc
    old = leader_of(mc)
    old_id = mc.ids[old.name]
    survivors = [i for i in pc if i is not old]
    pre = f"failover-{how}/"
    assert kv_put(old, pre + "before", "on-old-leader") == "t"
    for s in survivors:
        wait_for(f"{pre}before on {s.name}", lambda s=s: kv_get(s, pre + "before") ==
                 "on-old-leader", 5)

    start, result = watch_new_leader(survivors, old_id)
    start()
    time.sleep(0.2)  # both pollers are running and see the old leader
    t_issue = time.monotonic()
    exited: list[float] = []
    if how == "stop":
        old.stop(mode="fast")
        t_done = time.monotonic()
    elif how == "crash":
        old.kill9_all()
        t_done = time.monotonic()
    else:
        old.kill9()
        t_done = time.monotonic()
        # when the dead postmaster's children (the member worker among them) are all gone
        gone = threading.Thread(target=lambda: exited.append(
            t_done + old.wait_processes_gone(timeout=15)), daemon=True)
        gone.start()
    found, errors = result()
    assert found, (f"no survivor reported a leader other than {old.name} within 15s of the "
                   f"{how}; errors: {errors[-6:]}")
    t_first = min(t for t, _ in found.values())
    new_ids = {i for _, i in found.values()}
    by_id = {v: k for k, v in mc.ids.items()}
    assert new_ids <= {mc.ids[s.name] for s in survivors}, \
        f"survivors name a leader that is not a survivor: {found} (ids {mc.ids})"
    from_issue = t_first - t_issue
    from_done = t_first - t_done
    new = wait_one_leader(survivors, timeout=10)

    # writes keep working on both survivors, and each reads the other's
    for s in survivors:
        assert kv_put(s, pre + f"while-down-{s.name}", f"via-{s.name}") == "t"
    for s in survivors:
        for w in survivors:
            assert kv_get(s, pre + f"while-down-{w.name}") == f"via-{w.name}"
    # and through etcdctl at a survivor's client address
    etcdctl_ok(mc.client[new.name], "put", pre + "while-down-etcdctl", "via-etcdctl")

    # the stopped instance rejoins with its data and what was written while it was down
    down_for = None
    if how == "kill9":
        gone.join(20)
        assert exited, (f"{old.name}: children of the killed postmaster still running 15s "
                        f"later: {old.processes_describe()}")
        down_for = exited[0] - t_issue
    t_restart = time.monotonic()
    old.start()
    expect = {pre + "before": "on-old-leader", pre + "while-down-etcdctl": "via-etcdctl",
              **{pre + f"while-down-{s.name}": f"via-{s.name}" for s in survivors}}
    wait_for(f"{old.name} serving pgraft_kv_get after its restart",
             lambda: kv_get(old, pre + "before") == "on-old-leader", 20)
    rejoin_s = time.monotonic() - t_restart
    got = {k: kv_get(old, k) for k in expect}
    assert got == expect, f"{old.name} after its restart: {got}, expected {expect}"
    assert sorted(sql(old, f"SELECT pgraft_kv_list_keys({q(pre)})").splitlines()) == \
        sorted(expect)
    final = wait_one_leader(list(pc), timeout=10)
    assert len(nodes(old)) == 3

    report(f"pgext_member_failover_{how}", old_leader=old.name, new_leader=by_id[new_ids.pop()],
           election_timeout_ms=ELECTION_MS,
           seconds_from_fault_issued=round(from_issue, 3),
           seconds_from_fault_completed=round(from_done, 3),
           seconds_fault_took=round(t_done - t_issue, 3),
           seconds_children_exited_after_kill=None if down_for is None else round(down_for, 3),
           seconds_to_rejoin_with_data=round(rejoin_s, 2), final_leader=final.name)
    what = {"stop": "stop completed", "kill9": "kill -9",
            "crash": "kill -9 of every process"}[how]
    msg = (f"a survivor named a new leader {from_done:.3f}s after the {what} "
           f"({from_issue:.3f}s after it was issued); bound 2 x election timeout = "
           f"{FAILOVER_BOUND}s")
    # After a stop or a postmaster kill the dying member hands its leadership over first; after
    # a crash of every process the survivors elect one.
    assert from_done < FAILOVER_BOUND, msg


# -------------------------------------------------------------------------------- tests
def test_cluster_forms_with_one_leader(mc):
    pc = mc.pc
    leader = wait_one_leader(list(pc), timeout=10)
    sts = {i.name: cluster_status(i) for i in pc}
    for name, s in sts.items():
        assert s["name"] == name, s
        assert s["member_id"] == hex_id(s["node_id"]), s
        assert s["num_nodes"] == 3 and s["num_voters"] == 3, s
        assert s["state"] == ("leader" if name == leader.name else "follower"), s
        assert s["current_term"] >= 1, s
        assert s["applied_index"] <= s["commit_index"] <= s["last_index"], s
    assert len({s["cluster_id"] for s in sts.values()}) == 1, sts
    assert len({s["node_id"] for s in sts.values()}) == 3, sts
    assert len({s["current_term"] for s in sts.values()}) == 1, sts
    terms = {i.name: int(sql(i, "SELECT pgraft_get_term()")) for i in pc}
    assert set(terms.values()) == {sts[leader.name]["current_term"]}, terms
    assert {i.name: leader_id(i) for i in pc} == {n: mc.ids[leader.name] for n in NAMES}
    assert sql(pc.instance("n1"), "SELECT pgraft_version()").startswith("pgraft ")
    stats = rows_of(leader, "SELECT node_id, first_index, last_index, commit_index, "
                            "applied_index, entries, current_term FROM pgraft_log_get_stats()",
                    ("node_id", "first_index", "last_index", "commit_index", "applied_index",
                     "entries", "current_term"))
    assert len(stats) == 1 and int(stats[0]["node_id"]) == mc.ids[leader.name], stats
    # etcdctl at each client address sees the same cluster and leader
    for n in NAMES:
        out = etcdctl_ok(mc.client[n], "endpoint", "status", "-w", "json")
        status = json.loads(out)[0]["Status"]
        assert hex_id(int(status["leader"])) == hex_id(mc.ids[leader.name]), (n, status)
        assert hex_id(int(status["header"]["member_id"])) == hex_id(mc.ids[n]), (n, status)
        assert format(int(status["header"]["cluster_id"]), "x") == sts[n]["cluster_id"]


def test_nodes_listed_on_every_instance(mc):
    pc = mc.pc
    leader = leader_of(mc)
    ml = json.loads(etcdctl_ok(mc.client["n1"], "member", "list", "-w", "json"))["members"]
    etcd_ids = {m["name"]: hex_id(int(m["ID"])) for m in ml}
    for inst in pc:
        rows = nodes(inst)
        assert [r["name"] for r in rows] == list(NAMES), rows
        for r in rows:
            n = r["name"]
            assert r["node_id"] == mc.ids[n], (inst.name, r, mc.ids)
            assert r["member_id"] == hex_id(r["node_id"]) == etcd_ids[n], (inst.name, r)
            assert r["address"] == "127.0.0.1" and r["port"] == mc.peer[n], (inst.name, r)
            assert r["peer_urls"] == [f"http://127.0.0.1:{mc.peer[n]}"], (inst.name, r)
            assert r["client_urls"] == [f"http://{mc.client[n]}"], (inst.name, r)
            assert r["is_leader"] == (n == leader.name), (inst.name, r)
            assert r["is_learner"] is False, (inst.name, r)
            assert r["is_self"] == (n == inst.name), (inst.name, r)
    assert set(NODE_COLS) <= set(rows[0])


def test_each_server_registers_the_member_it_hosts(mc):
    """The worker registers its PostgreSQL server under pgraft/postgres/<name> (as client mode
    does), naming the member it hosts: the dashboard shows which server hosts which member."""
    eps = ",".join(mc.client.values())

    def registered():
        regs = {n: etcd_get(eps, f"pgraft/postgres/{n}") for n in NAMES}
        if any(r is None for r in regs.values()):
            raise AssertionError(f"not all registered: {regs}")
        return {n: {**json.loads(r["value"]), "_lease": r["lease"]} for n, r in regs.items()}

    regs = wait_for("member-mode registrations", registered, 15)
    for n, r in regs.items():
        inst = mc.pc.instance(n)
        assert r["mode"] == "member" and r["member_id"] == hex_id(mc.ids[n]), (n, r)
        assert r["port"] == inst.port and r["in_recovery"] is False and r["_lease"] != 0, (n, r)
    # The same overview in SQL, on every server.
    for inst in mc.pc:
        out = sql(inst, "SELECT name, port, mode, member_id, in_recovery "
                        "FROM pgraft_get_postgres_servers() ORDER BY name")
        rows = [line.split("|") for line in out.splitlines()]
        assert rows == [[n, str(mc.pc.instance(n).port), "member", hex_id(mc.ids[n]), "f"]
                        for n in NAMES], (inst.name, rows)


def test_put_on_follower_read_everywhere(mc):
    pc = mc.pc
    leader = leader_of(mc)
    follower = next(i for i in pc if i is not leader)
    key, value = "member/from-follower", f"written on {follower.name}"
    assert kv_put(follower, key, value) == "t"
    for inst in pc:
        assert kv_get(inst, key) == value, inst.name
        assert sql(inst, f"SELECT pgraft_kv_exists({q(key)})") == "t", inst.name
        got = etcd_get(mc.client[inst.name], key)
        assert got is not None and got["value"] == value, (inst.name, got)
    # absent keys: NULL and false
    assert kv_get(leader, "member/absent") is None
    assert sql(follower, "SELECT pgraft_kv_exists('member/absent')") == "f"
    # an overwrite on another instance wins everywhere
    other = next(i for i in pc if i not in (leader, follower))
    assert kv_put(other, key, "second") == "t"
    assert [kv_get(i, key) for i in pc] == ["second"] * 3


def test_etcdctl_put_read_by_sql(mc):
    pc = mc.pc
    for n in NAMES:
        etcdctl_ok(mc.client[n], "put", f"member/etcdctl-{n}", f"via {n}'s client address")
    for inst in pc:
        for n in NAMES:
            assert kv_get(inst, f"member/etcdctl-{n}") == f"via {n}'s client address"


def test_list_keys_returns_every_key(mc):
    pc = mc.pc
    n = 1234  # more than one page (1000 keys) of the listing
    items = [(f"many/{i:05d}", f"v{i}") for i in range(n)]
    t0 = time.monotonic()
    etcd_put_many(mc.client["n2"], items)
    put_s = time.monotonic() - t0
    expect = [k for k, _ in items]
    for inst in pc:
        keys = sql(inst, "SELECT pgraft_kv_list_keys('many/')").splitlines()
        assert len(keys) == n and keys == expect, (inst.name, len(keys), keys[:3], keys[-3:])
    # a narrower prefix, and a count through SQL
    assert sql(pc.instance("n3"), "SELECT count(*) FROM pgraft_kv_list_keys('many/0123')") == "4"
    assert sql(pc.instance("n1"), "SELECT pgraft_kv_list_keys('many/0000')").splitlines() == \
        [f"many/{i:05d}" for i in range(10)]
    assert sql(pc.instance("n1"), "SELECT count(*) FROM pgraft_kv_list_keys('no-such-prefix/')") \
        == "0"
    # the default prefix lists every key, these among them
    all_keys = set(sql(pc.instance("n2"), "SELECT pgraft_kv_list_keys()").splitlines())
    assert set(expect) <= all_keys and "member/from-follower" in all_keys
    assert etcd_keys(mc.client["n1"], "many/") == expect
    report("pgext_member_list_keys", keys=n, seconds_to_put=round(put_s, 2))


def test_delete_true_then_false(mc):
    pc = mc.pc
    key = "member/to-delete"
    assert kv_put(pc.instance("n1"), key, "x") == "t"
    assert sql(pc.instance("n2"), f"SELECT pgraft_kv_delete({q(key)})") == "t"
    for inst in pc:
        assert kv_get(inst, key) is None, inst.name
        assert sql(inst, f"SELECT pgraft_kv_exists({q(key)})") == "f", inst.name
    assert etcd_get(mc.client["n3"], key) is None
    assert sql(pc.instance("n3"), f"SELECT pgraft_kv_delete({q(key)})") == "f"


def test_replication_status_on_leader(mc):
    pc = mc.pc
    leader = leader_of(mc)
    kv_put(leader, "member/repl-probe", "x")

    def small_lag():
        rows = rows_of(leader, f"SELECT {', '.join(REPL_COLS)} FROM "
                               "pgraft_log_get_replication_status()", REPL_COLS)
        ok = len(rows) == 2 and all(r["lag"] <= 5 and r["recent_active"] for r in rows)
        if not ok:
            raise AssertionError(rows)
        return rows
    rows = wait_for("2 followers with a small lag", small_lag, 5)
    followers = {i.name for i in pc if i is not leader}
    assert {r["name"] for r in rows} == followers, rows
    for r in rows:
        assert r["node_id"] == mc.ids[r["name"]] and r["member_id"] == hex_id(r["node_id"]), r
        assert r["state"] == "replicate" and r["is_learner"] is False, r
        assert r["match_index"] > 0 and r["next_index"] > r["match_index"] - 1, r
    # a follower answers the same question by asking the leader (through its client URL)
    f = next(i for i in pc if i is not leader)
    rows_f = rows_of(f, f"SELECT {', '.join(REPL_COLS)} FROM "
                        "pgraft_log_get_replication_status()", REPL_COLS)
    assert {r["name"] for r in rows_f} == followers, rows_f


def test_failover_after_pg_ctl_stop_of_leader(mc):
    failover(mc, "stop")


def test_failover_after_kill_9_of_leader_postmaster(mc):
    failover(mc, "kill9")


def test_failover_after_kill_9_of_every_process_of_leader(mc):
    failover(mc, "crash")


def test_invalid_settings_refuse_to_start(mc):
    """Each bad configuration stops the server at startup with a FATAL "pgraft: ..." line
    that says what is wrong (one instance, reconfigured for each case)."""
    peer = free_ports(2)
    ic = f"a=127.0.0.1:{peer[0]},b=127.0.0.1:{peer[1]}"
    base = ["shared_preload_libraries = 'pgraft'"]
    cases = [
        ("name not in initial_cluster",
         ["pgraft.name = 'zz'", f"pgraft.initial_cluster = '{ic}'"],
         "pgraft.name 'zz' does not appear in pgraft.initial_cluster"),
        ("no name", [f"pgraft.initial_cluster = '{ic}'"], "pgraft.name must be set"),
        ("both modes",
         ["pgraft.name = 'a'", f"pgraft.initial_cluster = '{ic}'",
          "pgraft.endpoints = 'http://127.0.0.1:1'"], "both set"),
        ("bad cluster state",
         ["pgraft.name = 'a'", f"pgraft.initial_cluster = '{ic}'",
          "pgraft.initial_cluster_state = 'sometimes'"], "pgraft.initial_cluster_state"),
        ("election timeout below 5 heartbeats",
         ["pgraft.name = 'a'", f"pgraft.initial_cluster = '{ic}'",
          "pgraft.election_timeout = 100", "pgraft.heartbeat_interval = 50"],
         "pgraft.election_timeout"),
    ]
    pc = PgCluster(1, prefix="pgext-badconf", names=["bad"])
    try:
        inst = pc.instances[0]
        for what, lines, expect in cases:
            inst.set_conf(base + lines)
            rc, out, err = inst.start(timeout=20, check=False)
            log = inst.log_since()
            fatal = [ln for ln in log.splitlines() if "FATAL" in ln and "pgraft:" in ln]
            assert rc != 0 and not inst.running(), \
                f"{what}: the server started (pg_ctl exit {rc})\n{log[-2000:]}"
            assert fatal and expect in fatal[0], \
                f"{what}: no FATAL 'pgraft: ...{expect}...' line in the log:\n{log[-2000:]}"
        # and with the settings fixed (a one-member cluster) it starts
        inst.set_conf(base + ["pgraft.name = 'a'",
                              f"pgraft.initial_cluster = 'a=127.0.0.1:{peer[0]}'",
                              "pgraft.election_timeout = 300", "pgraft.heartbeat_interval = 50"])
        inst.start(timeout=20)
        sql(inst, "CREATE EXTENSION pgraft")
        wait_for("the one-member cluster serves SQL",
                 lambda: sql(inst, "SELECT pgraft_kv_put('k', 'v')") == "t", 15)
        assert kv_get(inst, "k") == "v"
    except AssertionError:
        print(f"\n{pc.describe()}\n{pc.log_tails(60)}")
        raise
    finally:
        pc.stop(cleanup=True)
