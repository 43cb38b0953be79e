"""scripts/pgraft-cluster, the README's quick start: init a 3-member cluster, status, writes
through etcdctl seen on every member, stop, start with the data kept, destroy.

The pgraftd mode runs always (with the pgraftd under test, $PGRAFTD); the postgres mode needs the
extension installed (skipped without it, failed with PGRAFT_REQUIRE_PGEXT=1) and also checks a
key written through SQL on one server is read through SQL on another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness import ETCDCTL_BIN, REPO_ROOT, daemon_work_root, etcdctl_env, pgraftd_path

TOOL = REPO_ROOT / "scripts" / "pgraft-cluster"


def tool(cluster_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PGRAFTD=str(pgraftd_path()))
    r = subprocess.run([sys.executable, str(TOOL), "--dir", str(cluster_dir), *args],
                       capture_output=True, text=True, timeout=180, env=env,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"pgraft-cluster {' '.join(args)} exited {r.returncode}:\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def status(cluster_dir: Path) -> list[dict]:
    return json.loads(tool(cluster_dir, "status", "--json").stdout)


def etcdctl(endpoint: str, *args: str) -> str:
    r = subprocess.run([ETCDCTL_BIN, f"--endpoints={endpoint}", *args], capture_output=True,
                       text=True, timeout=30, env=etcdctl_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def cluster_dir():
    parent = Path(tempfile.mkdtemp(prefix="cluster-tool-", dir=daemon_work_root()))
    os.chmod(parent, 0o755)  # the postgres mode's servers run as `postgres`
    d = parent / "c"
    yield d
    if (d / "cluster.json").exists():
        tool(d, "destroy", check=False)
    subprocess.run(["rm", "-rf", str(parent)], check=False)


def check_cluster(d: Path) -> list[dict]:
    rows = status(d)
    assert len(rows) == 3
    assert sorted(r["role"] for r in rows) == ["follower", "follower", "leader"], rows
    assert len({r["term"] for r in rows}) == 1
    assert len({r["id"] for r in rows}) == 3
    return rows


def test_pgraftd_mode_lifecycle(cluster_dir):
    out = tool(cluster_dir, "init", "--nodes", "3").stdout
    assert "leader" in out and "etcdctl --endpoints=" in out
    rows = check_cluster(cluster_dir)
    etcdctl(rows[0]["client_url"], "put", "quick", "start")
    for r in rows:
        assert etcdctl(r["client_url"], "get", "quick", "--print-value-only").strip() == "start"

    # A second init over it is refused, and changes nothing.
    again = tool(cluster_dir, "init", "--nodes", "3", check=False)
    assert again.returncode == 1 and "already holds a cluster" in again.stderr

    tool(cluster_dir, "stop")
    down = tool(cluster_dir, "status", check=False)
    assert down.returncode == 3
    assert all(r["role"] == "down" for r in status_or_down(cluster_dir))

    tool(cluster_dir, "start")
    rows = check_cluster(cluster_dir)
    assert etcdctl(rows[2]["client_url"], "get", "quick", "--print-value-only").strip() == "start"

    tool(cluster_dir, "destroy")
    assert not cluster_dir.exists()
    gone = tool(cluster_dir, "status", check=False)
    assert gone.returncode == 1 and "no cluster" in gone.stderr


def status_or_down(d: Path) -> list[dict]:
    r = tool(d, "status", "--json", check=False)
    return json.loads(r.stdout)


def test_postgres_mode(cluster_dir):
    from pgext_common import require_pgext
    require_pgext()
    tool(cluster_dir, "init", "--nodes", "3", "--mode", "postgres")
    rows = check_cluster(cluster_dir)
    assert all(r["pg_port"] for r in rows)
    state = json.loads((cluster_dir / "cluster.json").read_text())
    assert state["mode"] == "postgres"

    def psql(port: int, sql: str) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        r = subprocess.run(prefix + ["/usr/lib/postgresql/15/bin/psql", "-h", "127.0.0.1",
                                     "-p", str(port), "-U", "postgres", "-d", "postgres",
                                     "-XAtq", "-c", sql],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert psql(rows[0]["pg_port"], "SELECT pgraft_kv_put('tool/k', 'v1')") == "t"
    assert psql(rows[1]["pg_port"], "SELECT pgraft_kv_get('tool/k')") == "v1"
    assert etcdctl(rows[2]["client_url"], "get", "tool/k", "--print-value-only").strip() == "v1"
    tool(cluster_dir, "stop")
    tool(cluster_dir, "start")
    rows = check_cluster(cluster_dir)
    assert psql(rows[2]["pg_port"], "SELECT pgraft_kv_get('tool/k')") == "v1"
    tool(cluster_dir, "destroy")
    assert not cluster_dir.exists()
