"""The extension with TLS and etcd auth (issue 14): PostgreSQL reaches a cluster that serves
https only, requires client certificates and has auth on, with `pgraft.ca_file`,
`pgraft.cert_file`, `pgraft.key_file`, `pgraft.username` and `pgraft.password_file`; and three
member-mode instances whose peers talk mutual TLS. Certificates are made by openssl (see
test_tls.py).

Client mode: the SQL functions act as `pgraft.username` (its permissions apply: a key outside
its role is refused), the registration worker registers under its token, an expired token is
replaced without the caller noticing, and a wrong password is refused with etcd's error.
Member mode: https:// peer URLs with `pgraft.ca_file` mean peer mTLS; the members elect a
leader and replicate, and their https client address refuses a client without a certificate.
"""

from __future__ import annotations

import os
import time
import types

import pytest

from harness import free_ports
from pg_cluster import PgCluster, sql, try_sql, wait_for
from pgext_common import require_pgext
from test_tls import TlsServer, readable_pki

USER, PASSWORD = "pguser", "pg-secret"


@pytest.fixture(scope="module")
def pki():
    """Certificates readable by PostgreSQL's OS user, and the user's password files."""
    require_pgext()
    with readable_pki(("server", "root", "pgclient", "n1", "n2", "n3"),
                      files={"password": PASSWORD + "\n", "wrong-password": "nope\n"}) as d:
        yield d


def test_client_mode_over_tls_with_a_user(pki):
    # Simple tokens live 2 s without use here, so that one expires during the test.
    s = TlsServer("pgraftd", pki, extra_args=("--auth-token-ttl=2",))
    s.start()
    pc = None
    try:
        for args in (("user", "add", "root:rootpw"), ("role", "add", "pg"),
                     ("role", "grant-permission", "pg", "readwrite", "pg/", "--prefix"),
                     ("role", "grant-permission", "pg", "readwrite", "pgraft/postgres/",
                      "--prefix"),
                     ("user", "add", f"{USER}:{PASSWORD}"), ("user", "grant-role", USER, "pg"),
                     ("auth", "enable")):
            rc, out, err = s.ctl("root", *args)
            assert rc == 0, (args, out, err)

        def conf(inst):
            return [
                "shared_preload_libraries = 'pgraft'",
                f"pgraft.endpoints = '{s.client_url}'",
                "pgraft.name = 'pgT'",
                "pgraft.registration_ttl = 5",
                f"pgraft.ca_file = '{pki / 'ca.pem'}'",
                f"pgraft.cert_file = '{pki / 'pgclient.pem'}'",
                f"pgraft.key_file = '{pki / 'pgclient.key'}'",
                f"pgraft.username = '{USER}'",
                f"pgraft.password_file = '{pki / 'password'}'",
            ]

        pc = PgCluster(1, prefix="pgext-tls-client", names=["pgT"], conf=conf)
        pg = pc.instances[0]
        pc.start()
        sql(pg, "CREATE EXTENSION pgraft")
        assert sql(pg, "SELECT pgraft_kv_put('pg/a', '1')") == "t"
        rc, out, _ = s.ctl("root", "--user=root:rootpw", "get", "pg/a", "--print-value-only")
        assert rc == 0 and out.strip() == "1"
        # The role's limits apply to SQL too.
        rc, _, err = try_sql(pg, "SELECT pgraft_kv_put('other', 'x')")
        assert rc != 0 and "permission denied" in err, err
        # The registration worker logged in too.
        wait_for("registration key", lambda: s.ctl(
            "root", "--user=root:rootpw", "get", "pgraft/postgres/pgT", "--keys-only"
        )[1].strip() == "pgraft/postgres/pgT" or None, 20)
        # One session, idle past the token's life: its next call logs in again by itself.
        rc, out, err = try_sql(pg, "SELECT pgraft_kv_put('pg/b', '1')", "SELECT pg_sleep(3)",
                               "SELECT pgraft_kv_get('pg/b')", timeout=60)
        assert rc == 0 and out.split() == ["t", "1"], (out, err)
        # A wrong password: etcd's error, nothing written.
        pg.set_conf(conf(pg)[:-1] + [f"pgraft.password_file = '{pki / 'wrong-password'}'"])
        pg.restart()
        rc, _, err = try_sql(pg, "SELECT pgraft_kv_put('pg/c', '1')")
        assert rc != 0 and "authentication failed" in err, err
        rc, out, _ = s.ctl("root", "--user=root:rootpw", "get", "pg/c")
        assert rc == 0 and out == "", out
    except Exception:
        if pc is not None:
            print(f"\n{pc.describe()}\n{pc.log_tails(60)}")
        print(f"\n{s.describe()}\n{s.log_tail(40)}")
        raise
    finally:
        if pc is not None:
            pc.stop(cleanup=True)
        s.stop()


def test_members_hosted_by_postgresql_talk_mutual_tls(pki):
    names = ("n1", "n2", "n3")
    peer = free_ports(3)
    client = free_ports(3)
    initial = ",".join(f"{n}=https://127.0.0.1:{p}" for n, p in zip(names, peer))
    token = f"compat-pgext-tls-{os.getpid()}-{time.monotonic_ns() % 10**9}"

    def conf(inst):
        i = names.index(inst.name)
        return [
            "shared_preload_libraries = 'pgraft'",
            f"pgraft.name = '{inst.name}'",
            f"pgraft.initial_cluster = '{initial}'",
            f"pgraft.client_address = 'https://127.0.0.1:{client[i]}'",
            "pgraft.election_timeout = 1000",
            "pgraft.heartbeat_interval = 100",
            f"pgraft.cluster_token = '{token}'",
            f"pgraft.ca_file = '{pki / 'ca.pem'}'",
            f"pgraft.cert_file = '{pki / f'{inst.name}.pem'}'",
            f"pgraft.key_file = '{pki / f'{inst.name}.key'}'",
        ]

    pc = PgCluster(3, conf=conf, prefix="pgext-tls-member", names=names)
    try:
        pc.start()
        for inst in pc:
            sql(inst, "CREATE EXTENSION pgraft")
        wait_for("a leader over peer TLS", lambda: any(
            sql(i, "SELECT pgraft_is_leader()") == "t" for i in pc) or None, 30)
        n1, n3 = pc.instance("n1"), pc.instance("n3")
        assert sql(n1, "SELECT pgraft_kv_put('k', 'over-tls')") == "t"
        assert sql(n3, "SELECT pgraft_kv_get('k')") == "over-tls"
        # The https client address: a client certificate from the CA is required.
        probe = types.SimpleNamespace(pki=pki)
        url = f"https://127.0.0.1:{client[0]}"
        ok = TlsServer.ctl(probe, "root", "get", "k", "--print-value-only", endpoint=url)
        assert ok[0] == 0 and ok[1].strip() == "over-tls", ok
        refused = TlsServer.ctl(probe, None, "get", "k", endpoint=url)
        assert refused[0] != 0, refused
    except Exception:
        print(f"\n{pc.describe()}\n{pc.log_tails(60)}")
        raise
    finally:
        pc.stop(cleanup=True)
