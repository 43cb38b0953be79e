"""pytest fixtures for the compat tests (see harness.py)."""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import WORK_ROOT, HarnessError, Server  # noqa: E402
from cluster import Cluster  # noqa: E402


def pytest_sessionstart(session):
    """Drop work dirs (server logs, transcripts) of runs older than a day."""
    if WORK_ROOT.is_dir():
        cutoff = time.time() - 86400
        for d in WORK_ROOT.iterdir():
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


def reference_only() -> bool:
    """COMPAT_REFERENCE_ONLY=1: use real etcd where pgraftd would run (validates the tests)."""
    return os.environ.get("COMPAT_REFERENCE_ONLY", "") not in ("", "0", "false", "no")


def candidate_kind() -> str:
    """The server under test: pgraftd, or etcd with COMPAT_REFERENCE_ONLY=1."""
    return "etcd" if reference_only() else "pgraftd"


def session_cache(run_session):
    """For the differential tests: `get(role)` runs `run_session(kind)` once per pytest run for
    role "reference" (real etcd) and "candidate" ([`candidate_kind`]), and fails the asking
    test, not the whole run, when a session could not run."""
    cache: dict = {}

    def get(role: str):
        if role not in cache:
            kind = "etcd" if role == "reference" else candidate_kind()
            try:
                cache[role] = run_session(kind)
            except HarnessError as e:
                cache[role] = e
        got = cache[role]
        if isinstance(got, Exception):
            pytest.fail(f"could not run the {role} session: {got}", pytrace=False)
        return got

    return get


def pytest_terminal_summary(terminalreporter):
    """Lists the measurements of this run (cluster.report), also without -s."""
    import cluster
    if cluster.REPORTED:
        terminalreporter.section("measurements (also in .work/measurements.jsonl)")
        for line in cluster.REPORTED:
            terminalreporter.write_line(line)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def server_factory(request):
    """server_factory(kind) -> started Server; all are stopped at teardown.

    When the test failed, the tail of each server's log is printed (pytest shows it
    under "Captured stdout teardown").
    """
    servers: list[Server] = []

    def make(kind: str, start: bool = True, **kw) -> Server:
        s = Server(kind, **kw)
        servers.append(s)
        if start:
            s.start()
        return s

    yield make

    failed = any(
        getattr(request.node, "rep_" + w, None) is not None
        and getattr(request.node, "rep_" + w).failed
        for w in ("setup", "call")
    )
    for s in servers:
        if failed:
            print(f"\n{s.describe()}\n{s.log_tail(60)}")
        s.stop(cleanup=True)


def _failed(request) -> bool:
    return any(
        getattr(request.node, "rep_" + w, None) is not None
        and getattr(request.node, "rep_" + w).failed
        for w in ("setup", "call")
    )


@pytest.fixture
def cluster_kind() -> str:
    """The server the cluster tests run: pgraftd, or etcd with COMPAT_REFERENCE_ONLY=1."""
    return candidate_kind()


@pytest.fixture
def cluster_factory(request, cluster_kind):
    """cluster_factory(size, **kw) -> a started cluster.Cluster of `cluster_kind`; every
    member (and the fault proxy) is stopped at teardown. When the test failed, the cluster's
    state, the proxy's events and the tail of every member's log are printed."""
    clusters: list[Cluster] = []

    def make(size: int = 3, start: bool = True, **kw) -> Cluster:
        c = Cluster(cluster_kind, size, **kw)
        clusters.append(c)
        if start:
            c.start()
        return c

    yield make

    failed = _failed(request)
    for c in clusters:
        if failed:
            print(f"\n{c.describe()}\n{c.log_tails(60)}")
        c.stop(cleanup=True)
