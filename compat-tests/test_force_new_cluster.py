"""etcd's disaster recovery, `--force-new-cluster`, on etcd 3.4.23 and pgraftd alike: a 3-member
cluster loses two members for good (SIGKILL, data gone), so the survivor can never reach a
quorum again; restarted with `--force-new-cluster` it becomes a one-member cluster that keeps
every committed key, takes writes, stays that way over a plain restart, and grows again with
`member add` of a member with an empty data directory."""

from __future__ import annotations

import time

import pytest

from cluster import Cluster, _reconfig, dump, get, member_list, put, status

KEYS = 40


def values(m, serializable: bool = True) -> dict[str, str]:
    """Every /fnc/ key and its value on member m."""
    return {k: v[0] for k, v in dump(m, "/fnc/", serializable=serializable)[1].items()}


def wait_put(m, key: str, value: str, timeout: float = 30) -> None:
    """A put through m, retried until it is acknowledged (a leader has to be elected first)."""
    deadline = time.monotonic() + timeout
    while True:
        rc, _, err = put(m, key, value, command_timeout="3s", timeout=10)
        if rc == 0:
            return
        assert time.monotonic() < deadline, f"put {key} through {m.name} failed: {err}"
        time.sleep(0.3)


@pytest.mark.parametrize("kind", ["etcd", "pgraftd"])
def test_force_new_cluster_recovers_a_lost_quorum(kind):
    cl = Cluster(kind, 3)
    cl.start()
    try:
        leader = cl.wait_leader()
        for i in range(KEYS):
            wait_put(leader, f"/fnc/{i:03d}", f"v{i}")
        m1, m2, m3 = (cl.member(n) for n in ("m1", "m2", "m3"))
        # m1 has every committed key before the others go (a serializable read is local).
        deadline = time.monotonic() + 20
        while len(values(m1)) < KEYS:
            assert time.monotonic() < deadline, "m1 did not catch up"
            time.sleep(0.2)

        # Two members lost for good: no quorum, no writes.
        cl.kill(m2)
        cl.kill(m3)
        m2.stop(cleanup=True)
        m3.stop(cleanup=True)
        rc, _, _ = put(m1, "/fnc/lost", "x", command_timeout="2s", timeout=10)
        assert rc != 0, "a write was acknowledged without a quorum"

        # The survivor restarted as a new one-member cluster, its data kept.
        m1.stop(cleanup=False)
        m1.extra_args.append("--force-new-cluster")
        cl.in_cluster = ["m1"]
        m1.start()
        wait_put(m1, "/fnc/after", "yes")
        members = member_list(m1)
        assert [m["name"] for m in members] == ["m1"], members
        got = values(m1, serializable=False)
        want = {f"/fnc/{i:03d}": f"v{i}" for i in range(KEYS)} | {"/fnc/after": "yes"}
        assert got == want, f"keys after recovery: {sorted(set(got) ^ set(want))}"
        assert get(m1, "/fnc/lost")[1] is None

        # A plain restart keeps it a one-member cluster (the recovery is in its log).
        m1.extra_args.remove("--force-new-cluster")
        m1.restart()
        wait_put(m1, "/fnc/restarted", "yes")
        assert [m["name"] for m in member_list(m1)] == ["m1"]

        # It grows again: a member added from an empty directory gets the whole state.
        new = cl.new_member()
        rc, _, err = _reconfig(m1, "member", "add", new.name,
                               f"--peer-urls={new.advertise_peer_url}", timeout=30)
        assert rc == 0, err
        cl.in_cluster.append(new.name)
        new.initial_cluster = cl.initial_cluster_spec()
        new.ready_check = "status"
        cl.start_member(new)
        want["/fnc/restarted"] = "yes"
        deadline = time.monotonic() + 30
        while values(new) != want:
            assert time.monotonic() < deadline, "the new member did not catch up"
            time.sleep(0.3)
        wait_put(m1, "/fnc/two", "members")
        st = status(new)
        assert st is not None and int(st["leader"]) == int(status(m1)["header"]["member_id"])
    finally:
        cl.stop()
