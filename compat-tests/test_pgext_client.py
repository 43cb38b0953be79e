"""The pgraft PostgreSQL extension in client mode, end to end and black box: a 3-member pgraftd
cluster (cluster.Cluster, election timeout 500 ms) and one PostgreSQL 15 instance `pgA` with
`shared_preload_libraries = 'pgraft'`, `pgraft.endpoints` = the three client URLs,
`pgraft.name = 'pgA'` and `pgraft.registration_ttl = 3`.

The SQL functions and etcdctl see each other's writes; the "pgraft registration" worker keeps
the key `pgraft/postgres/pgA` (JSON: name, host, port, in_recovery, pid, server_version) on a
3 s lease, which is revoked on `pg_ctl stop` (the key goes at once) and expires or is revoked
after `kill -9` of the postmaster (the key goes within the TTL; when every process of the
instance is killed at once, by lease expiry). Errors: with the cluster down a
call raises an ERROR "pgraft: ..." within pgraft.request_timeout (no silent false), and without
any pgraft setting the functions raise an ERROR saying it is not configured.

The tests share one setup (module fixtures) and run in file order; the last one stops the
pgraftd cluster. Measured numbers are printed as `MEASURE {...}` lines (pytest -s) and appended
to .work/measurements.jsonl. Skipped when the extension is not installed, unless
PGRAFT_REQUIRE_PGEXT=1 (then it fails).
"""

from __future__ import annotations

import json
import socket
import time
import types

import pytest

from cluster import Cluster, report, status
from pg_cluster import PgCluster, sql, try_sql, wait_for
from pgext_common import (NODE_COLS, etcd_get, etcdctl_ok, hex_id, kv_get, kv_put,
                          require_pgext, rows_of)

TTL = 3
REG_KEY = "pgraft/postgres/pgA"


@pytest.fixture(scope="module")
def env():
    require_pgext()
    c = Cluster("pgraftd", 3, election_ms=500, heartbeat_ms=50)
    st = types.SimpleNamespace(etcd=c, pc=None, pg=None)
    try:
        c.start()
        endpoints = ",".join(m.client_url for m in c.members)
        st.endpoints = ",".join(m.endpoint for m in c.members)  # etcdctl's form
        st.pc = PgCluster(1, prefix="pgext-client", names=["pgA"], conf=lambda inst: [
            "shared_preload_libraries = 'pgraft'",
            f"pgraft.endpoints = '{endpoints}'",
            "pgraft.name = 'pgA'",
            f"pgraft.registration_ttl = {TTL}",
        ])
        st.pg = st.pc.instances[0]
        st.pc.start()
        sql(st.pg, "CREATE EXTENSION pgraft")
        yield st
    finally:
        if st.pc is not None:
            st.pc.stop(cleanup=True)
        c.stop(cleanup=True)


@pytest.fixture(autouse=True)
def _logs_on_failure(request, env):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n{env.pc.describe()}\n{env.pc.log_tails(60)}")
        print(f"\n{env.etcd.describe()}\n{env.etcd.log_tails(30)}")


def registration(env) -> dict | None:
    """The registration key's value (parsed) and lease, or None if absent."""
    kv = etcd_get(env.endpoints, REG_KEY)
    if kv is None:
        return None
    return {**json.loads(kv["value"]), "_lease": kv["lease"]}


def wait_registration(env, present: bool, timeout: float, since: float) -> float:
    """Waits until the key is there (present) or gone; returns the seconds since `since`."""
    def check():
        r = registration(env)
        return (r is not None) == present and (r if present else True)
    wait_for(f"{REG_KEY} {'present' if present else 'gone'}", check, timeout, every=0.05)
    return time.monotonic() - since


# -------------------------------------------------------------------------------- tests
def test_sql_put_seen_by_etcdctl(env):
    assert kv_put(env.pg, "client/from-sql", "written through SQL") == "t"
    for m in env.etcd.members:
        got = etcd_get(m.endpoint, "client/from-sql")
        assert got is not None and got["value"] == "written through SQL", (m.name, got)
    # an overwrite and a delete through SQL, as etcdctl sees them
    assert kv_put(env.pg, "client/from-sql", "second") == "t"
    assert etcd_get(env.endpoints, "client/from-sql")["value"] == "second"
    assert etcd_get(env.endpoints, "client/from-sql")["version"] == 2
    assert sql(env.pg, "SELECT pgraft_kv_delete('client/from-sql')") == "t"
    assert etcd_get(env.endpoints, "client/from-sql") is None
    assert sql(env.pg, "SELECT pgraft_kv_delete('client/from-sql')") == "f"


def test_etcdctl_put_seen_by_sql(env):
    for m in env.etcd.members:
        etcdctl_ok(m.endpoint, "put", f"client/from-etcdctl/{m.name}", f"via {m.name}")
    for m in env.etcd.members:
        assert kv_get(env.pg, f"client/from-etcdctl/{m.name}") == f"via {m.name}"
    assert sql(env.pg, "SELECT pgraft_kv_exists('client/from-etcdctl/m2')") == "t"
    assert sql(env.pg, "SELECT pgraft_kv_list_keys('client/from-etcdctl/')").splitlines() == \
        [f"client/from-etcdctl/{m.name}" for m in env.etcd.members]
    assert kv_get(env.pg, "client/absent") is None


def test_cluster_views_through_sql(env):
    c = env.etcd
    leader = c.wait_leader(timeout=10)
    lid = c.member_id(leader)
    signed = lid - (1 << 64) if lid >= 1 << 63 else lid
    assert sql(env.pg, "SELECT pgraft_get_leader()") == str(signed)
    rows = rows_of(env.pg, f"SELECT {', '.join(NODE_COLS)} FROM pgraft_get_nodes()", NODE_COLS)
    assert [r["name"] for r in rows] == [m.name for m in c.members], rows
    for r, m in zip(rows, c.members):
        assert r["member_id"] == hex_id(c.member_id(m)) == hex_id(r["node_id"]), r
        assert r["client_urls"] == [m.client_url] and r["port"] == m.peer_port, r
        assert r["is_leader"] == (m is leader), r
    # the session talks to the first endpoint (m1)
    assert [r["name"] for r in rows if r["is_self"]] == ["m1"], rows
    term = int(status(leader)["header"]["raft_term"])
    assert int(sql(env.pg, "SELECT pgraft_get_term()")) == term
    # an etcd error comes back as an SQL ERROR with etcd's message
    rc, out, err = try_sql(env.pg, "SELECT pgraft_remove_node(12345)")
    assert rc != 0 and "ERROR:" in err and "pgraft: etcdserver: member not found" in err, \
        (rc, out, err)


def test_registration_key(env):
    t0 = time.monotonic()
    r = wait_for(f"{REG_KEY} registered", lambda: registration(env), 5, every=0.1)
    report("pgext_client_registration", seconds_to_first_seen=round(time.monotonic() - t0, 2))
    assert r["name"] == "pgA" and r["port"] == env.pg.port, r
    assert r["in_recovery"] is False, r
    assert r["host"] == socket.gethostname(), r
    assert isinstance(r["pid"], int) and r["pid"] in env.pg.processes(), \
        (r, env.pg.processes_describe())
    assert r["server_version"], r
    assert r["_lease"] != 0, r
    ttl = json.loads(etcdctl_ok(env.endpoints, "lease", "timetolive", format(r["_lease"], "x"),
                                "-w", "json"))
    assert ttl["granted-ttl"] == TTL and 0 < ttl["ttl"] <= TTL, ttl
    # the lease is kept alive: the key is still there after more than one TTL
    time.sleep(TTL + 1)
    r2 = registration(env)
    assert r2 is not None and r2["_lease"] == r["_lease"], (r, r2)


def test_registration_removed_on_stop_and_back_on_start(env):
    pg = env.pg
    assert wait_for("registered", lambda: registration(env), 5)
    t0 = time.monotonic()
    pg.stop(mode="fast")
    t_done = time.monotonic()
    gone_s = wait_registration(env, False, timeout=2.0, since=t_done)
    t1 = time.monotonic()
    pg.start()
    back_s = wait_registration(env, True, timeout=10, since=t1)
    r = registration(env)
    assert r["port"] == pg.port and r["pid"] in pg.processes(), (r, pg.processes_describe())
    assert kv_get(pg, "client/from-etcdctl/m1") == "via m1"
    report("pgext_client_registration_stop", ttl=TTL, seconds_stop_took=round(t_done - t0, 2),
           seconds_key_gone_after_stop=round(gone_s, 3),
           seconds_key_back_after_start=round(back_s, 2))


def test_registration_gone_after_kill_9(env):
    pg = env.pg
    r0 = wait_for("registered", lambda: registration(env), 5)
    t0 = time.monotonic()
    pg.kill9()
    gone_s = wait_registration(env, False, timeout=TTL + 5, since=t0)
    pg.wait_processes_gone(timeout=15)
    t1 = time.monotonic()
    pg.start()
    back_s = wait_registration(env, True, timeout=10, since=t1)
    r = registration(env)
    assert r["pid"] != r0["pid"] and r["pid"] in pg.processes(), (r0, r)

    # a host crash: every process of the instance killed at once, the registration worker
    # included, so nobody revokes the lease: the key goes when the lease expires, within the
    # TTL of its last renewal (renewed every TTL/3), so not at once
    r1 = wait_for("registered", lambda: registration(env), 5)
    t2 = time.monotonic()
    killed = pg.kill9_all()
    expire_s = wait_registration(env, False, timeout=TTL + 5, since=t2)
    assert r1["pid"] in killed, (r1, killed)
    t3 = time.monotonic()
    pg.start()
    back2_s = wait_registration(env, True, timeout=10, since=t3)
    report("pgext_client_registration_kill9", ttl=TTL,
           seconds_key_gone_after_postmaster_kill=round(gone_s, 3),
           seconds_key_back_after_start=round(back_s, 2),
           seconds_key_gone_after_killing_every_process=round(expire_s, 3),
           seconds_key_back_after_second_start=round(back2_s, 2))
    assert expire_s >= TTL * 2 / 3 - 0.5, \
        f"the key went {expire_s:.2f}s after the crash: too soon for a lease expiry"


def test_unconfigured_functions_raise(env):
    """No pgraft.* setting: every function raises an ERROR saying what to set. First with the
    library preloaded, then without shared_preload_libraries at all (the library is then loaded
    by CREATE EXTENSION / the first call)."""
    pc = PgCluster(1, prefix="pgext-unconf", names=["plain"],
                   conf=lambda inst: ["shared_preload_libraries = 'pgraft'"])
    try:
        inst = pc.instances[0]
        inst.start()
        sql(inst, "CREATE EXTENSION pgraft")
        for call in ("pgraft_kv_get('k')", "pgraft_kv_put('k', 'v')", "pgraft_is_leader()",
                     "pgraft_kv_list_keys()", "pgraft_get_nodes()"):
            rc, out, err = try_sql(inst, f"SELECT {call}")
            assert rc != 0 and "ERROR:" in err and "pgraft: not configured" in err \
                and "pgraft.endpoints" in err, (call, rc, out, err)
        assert sql(inst, "SELECT pgraft_version()").startswith("pgraft ")

        # without shared_preload_libraries
        inst.stop()
        inst.set_conf([])
        inst.start()
        rc, out, err = try_sql(inst, "SELECT pgraft_kv_get('k')")
        # Outside shared_preload_libraries the settings are reloadable (sighup) ones, and a
        # call explains what is missing instead of killing the backend.
        assert rc == 1 and "ERROR:" in err and "pgraft: not configured" in err, (
            f"without shared_preload_libraries: psql exit {rc}: {' '.join(err.split())[:160]}")
    except AssertionError:
        print(f"\n{pc.describe()}\n{pc.log_tails(40)}")
        raise
    finally:
        pc.stop(cleanup=True)


def test_errors_when_the_cluster_is_down(env):
    """Last: stops every pgraftd member. A call then raises an ERROR "pgraft: ..." within
    pgraft.request_timeout (SET per session), for writes as for reads: no silent false/NULL."""
    pg = env.pg
    assert kv_put(pg, "client/before-down", "x") == "t"
    for m in env.etcd.members:
        m.stop(cleanup=False)
    timings = {}
    for call in ("pgraft_kv_put('client/while-down', 'x')", "pgraft_kv_get('client/before-down')",
                 "pgraft_kv_exists('client/before-down')", "pgraft_kv_delete('client/before-down')",
                 "pgraft_is_leader()"):
        t0 = time.monotonic()
        rc, out, err = try_sql(pg, "SET pgraft.request_timeout = 1000", f"SELECT {call}",
                               timeout=30)
        timings[call.split("(")[0]] = round(time.monotonic() - t0, 2)
        assert rc != 0 and "ERROR:" in err and "pgraft:" in err and out.strip() == "", \
            (call, rc, out, err)
        assert time.monotonic() - t0 < 5, (call, time.monotonic() - t0, err)
    # the error says why
    rc, out, err = try_sql(pg, "SET pgraft.request_timeout = 500", "SELECT pgraft_kv_get('k')")
    assert "cannot reach the cluster" in err or "timed out" in err, err
    # and the server itself is fine
    assert sql(pg, "SELECT 1") == "1"
    report("pgext_client_cluster_down", seconds_per_failed_call=timings)
