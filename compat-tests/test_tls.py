"""TLS on the client port, differential (issue 14): etcd 3.4.23 and pgraftd each serve
`https://` with `--cert-file`, `--key-file`, `--trusted-ca-file` and `--client-cert-auth`, with
certificates made here by openssl. One etcdctl 3.4.23 session runs against each and the
outcomes must match: client certificates required, a wrong CA refused, plain HTTP refused, the
JSON gateway over TLS (curl), then auth enabled and the certificate's common name taken as the
user (root may do everything, alice only her keys, an unknown name nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import candidate_kind
from harness import Server, etcdctl_argv, etcdctl_env

OPENSSL = "openssl"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    """A CA in `d`: `<name>.pem` and `<name>.key` (EC P-256)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3",
             "-subj", f"/CN={name}", cwd=d)


def issue(d: Path, ca: str, cn: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost with common name `cn`, signed by CA `ca`,
    usable by servers and clients: (cert, key) paths."""
    (d / f"{cn}.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{cn}.pem", "-days", "3", "-extfile", f"{cn}.ext",
             cwd=d)
    return d / f"{cn}.pem", d / f"{cn}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    for cn in ("server", "root", "alice", "mallory"):
        issue(d, "ca", cn)
    issue(d, "other-ca", "stranger")
    return d


def tls_flags(pki: Path, cn: str | None, ca: str = "ca") -> list[str]:
    flags = [f"--cacert={pki / f'{ca}.pem'}"]
    if cn:
        flags += [f"--cert={pki / f'{cn}.pem'}", f"--key={pki / f'{cn}.key'}"]
    return flags


class TlsServer(Server):
    """A member serving clients on https:// only, client certificates required; its own
    etcdctl calls (readiness included) present root's certificate."""

    def __init__(self, kind: str, pki: Path, extra_args: tuple[str, ...] = ()):
        super().__init__(kind, name=f"tls-{kind}", extra_args=[
            f"--cert-file={pki / 'server.pem'}", f"--key-file={pki / 'server.key'}",
            f"--trusted-ca-file={pki / 'ca.pem'}", "--client-cert-auth", *extra_args,
        ])
        self.pki = pki
        self.client_url = f"https://127.0.0.1:{self.client_port}"
        self.endpoint = self.client_url

    def etcdctl(self, *args: str, input: str | None = None, timeout: float = 20):
        return self.ctl("root", *args, timeout=timeout)

    def ctl(self, cn: str | None, *args: str, ca: str = "ca", endpoint: str | None = None,
            timeout: float = 20):
        argv = etcdctl_argv(endpoint or self.endpoint, *tls_flags(self.pki, cn, ca), *args)
        cp = subprocess.run(argv, capture_output=True, text=True, env=etcdctl_env(),
                            stdin=subprocess.DEVNULL, timeout=timeout)
        return cp.returncode, cp.stdout, cp.stderr

    def curl(self, cn: str | None, path: str, body: dict) -> tuple[int, str]:
        argv = ["curl", "-sS", "--max-time", "10", "--cacert", str(self.pki / "ca.pem")]
        if cn:
            argv += ["--cert", str(self.pki / f"{cn}.pem"), "--key", str(self.pki / f"{cn}.key")]
        argv += [f"{self.client_url}{path}", "-d", json.dumps(body)]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return cp.returncode, cp.stdout


def _outcome(r) -> tuple:
    """What must match between etcd and pgraftd: success or failure, stdout, and for a failure
    the etcd error it names (transport errors are worded by each TLS stack; only failing
    matters)."""
    rc, out, err = r
    named = re.findall(r"etcdserver: [a-z ]+", err)
    return (rc == 0, out.strip(), named[:1])


def session(s: TlsServer) -> dict[str, tuple]:
    got: dict[str, tuple] = {}

    def ctl(name, cn, *args, **kw):
        got[name] = _outcome(s.ctl(cn, *args, **kw))

    ctl("put_root", "root", "put", "a", "1")
    ctl("get_root", "root", "get", "a")
    ctl("get_alice", "alice", "get", "a")
    ctl("no_client_cert", None, "get", "a")
    ctl("cert_from_other_ca", "stranger", "get", "a")
    ctl("server_not_trusted", "root", "get", "a", ca="other-ca")
    ctl("plain_http", None, "get", "a", endpoint=f"http://127.0.0.1:{s.client_port}")
    rc, out = s.curl("root", "/v3/kv/range", {"key": "YQ=="})
    got["gateway_range"] = (rc, json.loads(out)["kvs"][0]["value"] if rc == 0 else out)
    rc, _ = s.curl(None, "/v3/kv/range", {"key": "YQ=="})
    got["gateway_no_cert"] = (rc == 0,)

    # Auth on: the certificate's CN is the user for gRPC requests without --user.
    ctl("user_add_root", "root", "user", "add", "root:rootpw")
    ctl("user_add_alice", "root", "user", "add", "alice:alicepw")
    ctl("role_add", "root", "role", "add", "a-only")
    ctl("grant", "root", "role", "grant-permission", "a-only", "readwrite", "a")
    ctl("grant_role", "root", "user", "grant-role", "alice", "a-only")
    ctl("auth_enable", "root", "auth", "enable")
    ctl("alice_put_a", "alice", "put", "a", "2")
    ctl("alice_get_a", "alice", "get", "a")
    ctl("alice_put_b", "alice", "put", "b", "1")
    ctl("alice_user_list", "alice", "user", "list")
    ctl("mallory_get_a", "mallory", "get", "a")
    ctl("root_put_b", "root", "put", "b", "1")
    ctl("root_user_list", "root", "user", "list")
    ctl("password_beats_cert", "alice", "--user=root:rootpw", "get", "b")
    ctl("wrong_password", "root", "--user=root:nope", "get", "b")
    return got


@pytest.fixture(scope="module")
def outcomes(pki):
    result = {}
    for kind in ("etcd", candidate_kind()):
        if kind in result:
            continue
        s = TlsServer(kind, pki)
        try:
            s.start()
            result[kind] = session(s)
        finally:
            s.stop()
    return result


def test_tls_session_matches_etcd(outcomes):
    etcd = outcomes["etcd"]
    ours = outcomes[candidate_kind()]
    assert list(etcd) == list(ours)
    diffs = {k: (etcd[k], ours[k]) for k in etcd if etcd[k] != ours[k]}
    assert not diffs, json.dumps(diffs, indent=1)
    # And the session shows what it is meant to (on both): refusals refused, users limited.
    for refused in ("no_client_cert", "cert_from_other_ca", "server_not_trusted", "plain_http",
                    "alice_put_b", "alice_user_list", "mallory_get_a", "wrong_password"):
        assert etcd[refused][0] is False, (refused, etcd[refused])
    for fine in ("put_root", "get_alice", "alice_put_a", "root_put_b", "password_beats_cert"):
        assert etcd[fine][0] is True, (fine, etcd[fine])
    assert etcd["alice_put_b"][2] == ["etcdserver: permission denied"]
    assert etcd["gateway_range"] == (0, "MQ==")


PATRONI_NAMESPACE = "/pgraft-compat/"


@contextlib.contextmanager
def readable_pki(cns, files: dict[str, str] | None = None):
    """A CA `ca` and a certificate per common name in `cns` (plus `files`: name -> text) in a
    directory PostgreSQL's OS user (Patroni, the extension) can read: outside pytest's private
    temporary tree, as PatroniCluster's own directories are. Removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="pgraft-pki-", dir=os.environ.get("PATRONI_TMP") or "/tmp"))
    try:
        make_ca(d, "ca")
        for cn in cns:
            issue(d, "ca", cn)
        for name, text in (files or {}).items():
            (d / name).write_text(text)
        for p in [d, *d.iterdir()]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_pki():
    with readable_pki(("server", "root", "patroni")) as d:
        yield d


def test_patroni_over_https_with_auth(shared_pki):
    """Patroni's etcd3 DCS with `protocol: https`, `cacert`, `cert`, `key`, `username` and
    `password` against a member serving https only with client certificates required and auth
    on: a leader and a streaming replica bootstrap, their keys are in the DCS."""
    from patroni_cluster import PatroniCluster, check_patroni_runnable
    check_patroni_runnable()
    pki = shared_pki
    s = TlsServer(candidate_kind(), pki)
    s.start()
    try:
        for args in (("user", "add", "root:rootpw"), ("role", "add", "patroni"),
                     ("role", "grant-permission", "patroni", "readwrite", PATRONI_NAMESPACE,
                      "--prefix"),
                     ("user", "add", "patroni:patroni-pw"),
                     ("user", "grant-role", "patroni", "patroni"), ("auth", "enable")):
            rc, out, err = s.ctl("root", *args)
            assert rc == 0, (args, out, err)
        pc = PatroniCluster([s.endpoint.removeprefix("https://")], 2, ttl=20, loop_wait=2,
                            retry_timeout=5, etcd3_auth={
                                "protocol": "https",
                                "cacert": str(pki / "ca.pem"),
                                "cert": str(pki / "patroni.pem"),
                                "key": str(pki / "patroni.key"),
                                "username": "patroni", "password": "patroni-pw"})
        try:
            pc.start()
            leader, _ = pc.wait_healthy(timeout=180, replicas=1)
            rc, out, err = pc.patronictl("list", timeout=30)
            assert rc == 0 and leader in out and out.count("streaming") == 1, \
                f"{rc}\n{out}\n{err}"
            rc, out, err = s.ctl("root", "--user=root:rootpw", "get",
                                 f"{PATRONI_NAMESPACE}{pc.scope}/leader", "--print-value-only")
            assert rc == 0 and out.strip() == leader, (out, err)
        except Exception:
            print(f"\n{pc.describe()}\n{pc.log_tails(80)}\n{s.describe()}\n{s.log_tail(40)}")
            raise
        finally:
            pc.stop(cleanup=True)
    finally:
        s.stop()
