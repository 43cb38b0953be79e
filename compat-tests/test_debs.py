"""The Debian packages built by scripts/build-debs.sh (debug builds, to be quick):

- pgraft: its files, control data and conffile; then installed with dpkg (as root, in CI or with
  PGRAFT_TEST_DPKG=1: it changes the machine), which makes the `pgraft` user and
  /var/lib/pgraft; pgraftd started as that user with the settings of /etc/default/pgraft
  answers etcdctl; purged again.
- postgresql-15-pgraft (where the extension can be built: cargo-pgrx installed): its files are
  where PostgreSQL 15 looks for them; installed with dpkg under the same condition, and left
  installed (the files are those `cargo pgrx install` put there before the tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness import ETCDCTL_BIN, REPO_ROOT, etcdctl_env, free_ports

SCRIPT = REPO_ROOT / "scripts" / "build-debs.sh"


def may_install() -> bool:
    return os.geteuid() == 0 and (os.environ.get("CI") == "true"
                                  or os.environ.get("PGRAFT_TEST_DPKG") == "1")


def pgext_buildable() -> bool:
    r = subprocess.run(["cargo", "pgrx", "--version"], capture_output=True, text=True)
    return r.returncode == 0 and " 0.18.0" in r.stdout


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, Path]:
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not found")
    out = tmp_path_factory.mktemp("debs")
    args = ["bash", str(SCRIPT), "--debug", "--out", str(out)]
    if not pgext_buildable():
        if os.environ.get("PGRAFT_REQUIRE_PGEXT") == "1":
            pytest.fail("PGRAFT_REQUIRE_PGEXT=1 but cargo-pgrx 0.18.0 is missing", pytrace=False)
        args.append("--no-pgext")
    r = subprocess.run(args, capture_output=True, text=True, timeout=1200, cwd=REPO_ROOT,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert "pgraft" in found, r.stdout
    return found


def contents(deb: Path) -> set[str]:
    out = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1].lstrip(".") for line in out.splitlines()}


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_pgraft_package_contents(debs):
    deb = debs["pgraft"]
    files = contents(deb)
    for f in ("/usr/bin/pgraftd", "/lib/systemd/system/pgraft.service", "/etc/default/pgraft",
              "/usr/share/doc/pgraft/copyright"):
        assert f in files, sorted(files)
    assert field(deb, "Package") == "pgraft"
    assert "adduser" in field(deb, "Depends")
    info = subprocess.run(["dpkg-deb", "--info", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    assert "conffiles" in info and "postinst" in info


def test_pgraft_package_installs_and_runs(debs, tmp_path):
    if not may_install():
        pytest.skip("installs a package: runs as root with CI=true or PGRAFT_TEST_DPKG=1")
    deb = debs["pgraft"]
    subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True, timeout=120)
    proc = None
    try:
        assert subprocess.run(["getent", "passwd", "pgraft"], capture_output=True).returncode == 0
        st = os.stat("/var/lib/pgraft")
        assert st.st_uid == int(subprocess.run(["id", "-u", "pgraft"], capture_output=True,
                                               text=True).stdout)
        # The service's command line: pgraftd as `pgraft`, settings from /etc/default/pgraft
        # (ports moved to free ones, as a test must; systemd is not running here).
        env = {"PATH": "/usr/bin:/bin"}
        for line in Path("/etc/default/pgraft").read_text().splitlines():
            if line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k] = v
        client, peer = free_ports(2)
        env.update({
            "ETCD_DATA_DIR": "/var/lib/pgraft/test.etcd",
            "ETCD_LISTEN_CLIENT_URLS": f"http://127.0.0.1:{client}",
            "ETCD_ADVERTISE_CLIENT_URLS": f"http://127.0.0.1:{client}",
            "ETCD_LISTEN_PEER_URLS": f"http://127.0.0.1:{peer}",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"http://127.0.0.1:{peer}",
            "ETCD_INITIAL_CLUSTER": f"default=http://127.0.0.1:{peer}",
        })
        proc = subprocess.Popen([shutil.which("runuser") or "/usr/sbin/runuser", "-u", "pgraft", "--", "/usr/bin/pgraftd"], env=env,
                                cwd="/var/lib/pgraft", stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run([ETCDCTL_BIN, f"--endpoints=127.0.0.1:{client}", "put", "k", "v"],
                               capture_output=True, text=True, env=etcdctl_env(), timeout=10)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, r.stderr
            time.sleep(0.2)
        assert Path("/var/lib/pgraft/test.etcd").stat().st_uid == st.st_uid
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree("/var/lib/pgraft/test.etcd", ignore_errors=True)
        subprocess.run(["dpkg", "--purge", "pgraft"], capture_output=True, timeout=120)
    assert not Path("/usr/bin/pgraftd").exists()
    assert subprocess.run(["getent", "passwd", "pgraft"], capture_output=True).returncode != 0


def test_extension_package(debs):
    if "postgresql-15-pgraft" not in debs:
        pytest.skip("the extension cannot be built here (cargo-pgrx 0.18.0 missing)")
    deb = debs["postgresql-15-pgraft"]
    files = contents(deb)
    assert "/usr/share/postgresql/15/extension/pgraft.control" in files, sorted(files)
    assert any(f.startswith("/usr/lib/postgresql/15/lib/pgraft") and f.endswith(".so")
               for f in files), sorted(files)
    assert any(f.startswith("/usr/share/postgresql/15/extension/pgraft--") and f.endswith(".sql")
               for f in files), sorted(files)
    assert "postgresql-15" in field(deb, "Depends")
    if not may_install():
        return
    subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True, timeout=120)
    owner = subprocess.run(["dpkg", "-S", "/usr/share/postgresql/15/extension/pgraft.control"],
                           capture_output=True, text=True)
    assert owner.stdout.startswith("postgresql-15-pgraft:"), owner.stdout + owner.stderr
