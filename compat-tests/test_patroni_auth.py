"""Patroni's etcd3 DCS with `username`/`password` on pgraft with auth enabled (issue 14): a
3-member pgraftd cluster (etcd 3.4.23 with COMPAT_REFERENCE_ONLY=1) where etcdctl created
root, a role with READWRITE on Patroni's namespace only and a user holding it, then enabled
auth. Two PostgreSQL 15 instances under Patroni 4.1 log in (`/v3/auth/authenticate`, then the
token in `Authorization`) and bootstrap a leader and a streaming replica; their keys are in
the DCS, and a client without a user is refused there.
"""

from __future__ import annotations

import os

import pytest

from cluster import Cluster
from patroni_cluster import PatroniCluster, check_patroni_runnable

NAMESPACE = "/pgraft-compat/"
PATRONI_USER, PATRONI_PASSWORD = "patroni", "patroni-pw"
ROOT = "--user=root:root-pw"


def _reference_only() -> bool:
    return os.environ.get("COMPAT_REFERENCE_ONLY", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def dcs():
    kind = "etcd" if _reference_only() else "pgraftd"
    check_patroni_runnable()
    c = Cluster(kind, 3)
    try:
        c.start()
        yield c
    finally:
        c.stop(cleanup=True)


def ctl(member, *args, ok=True):
    rc, out, err = member.etcdctl(*args, timeout=30)
    if ok:
        assert rc == 0, f"etcdctl {' '.join(args)}: exit {rc}\n{out}\n{err}"
    return rc, out, err


def test_patroni_with_username_and_password(dcs):
    m = dcs.members[0]
    ctl(m, "user", "add", "root:root-pw")
    ctl(m, "role", "add", "patroni")
    ctl(m, "role", "grant-permission", "patroni", "readwrite", NAMESPACE, "--prefix")
    ctl(m, "user", "add", f"{PATRONI_USER}:{PATRONI_PASSWORD}")
    ctl(m, "user", "grant-role", PATRONI_USER, "patroni")
    ctl(m, "auth", "enable")

    pc = PatroniCluster([x.endpoint for x in dcs.members], 2, ttl=20, loop_wait=2,
                        retry_timeout=5,
                        etcd3_auth={"username": PATRONI_USER, "password": PATRONI_PASSWORD})
    try:
        pc.start()
        leader, rows = pc.wait_healthy(timeout=180, replicas=1)
        rc, out, err = pc.patronictl("list", timeout=30)
        assert rc == 0 and leader in out and out.count("streaming") == 1, f"{rc}\n{out}\n{err}"
        # Patroni's keys, written with its token, are where its role allows.
        _, out, _ = ctl(m, ROOT, "get", NAMESPACE, "--prefix", "--keys-only")
        assert f"{NAMESPACE}{pc.scope}/leader" in out, out
        _, out, _ = ctl(m, ROOT, "get", f"{NAMESPACE}{pc.scope}/leader", "--print-value-only")
        assert out.strip() == leader, out
        # Without a user, and outside its namespace as Patroni, the DCS refuses.
        rc, _, err = ctl(m, "get", NAMESPACE, "--prefix", ok=False)
        assert rc != 0 and "user name is empty" in err, err
        rc, _, err = ctl(m, f"--user={PATRONI_USER}:{PATRONI_PASSWORD}", "put", "/other", "x",
                         ok=False)
        assert rc != 0 and "permission denied" in err, err
    except Exception:
        print(f"\n{pc.describe()}\n{pc.log_tails(80)}\n{dcs.describe()}\n{dcs.log_tails(40)}")
        raise
    finally:
        pc.stop(cleanup=True)
