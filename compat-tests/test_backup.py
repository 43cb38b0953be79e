"""Backup and restore as an operator does it: `etcdctl snapshot save` (etcdctl 3.4.23) against a
3-member cluster under write load, the file checked with `snapshot status`, restored into the
data directories of 3 new members (`snapshot restore` with etcdutl's flags), and the new
cluster compared with the old one at the backup's revision through `etcdctl get --prefix -w json`.

pgraftd's backup is its own format, so status and restore are `pgraftd snapshot ...`; with
COMPAT_REFERENCE_ONLY=1 the same test runs against etcd 3.4 with `etcdctl snapshot ...` (the
flags and JSON are the same), which checks the test itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from cluster import Cluster, Writer, dump, ok, report
from harness import ETCDCTL_BIN, etcdctl_env, pgraftd_path


def snapshot_tool(kind: str) -> list[str]:
    """The command that reads backup files of `kind`'s servers."""
    return [str(pgraftd_path()), "snapshot"] if kind == "pgraftd" else [ETCDCTL_BIN, "snapshot"]


def run(argv: list[str], timeout: float = 120) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **etcdctl_env()})
    assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_save_under_load_restore_into_a_new_cluster(cluster_factory, cluster_kind, tmp_path):
    c = cluster_factory(3)
    leader = c.wait_leader()
    # Keys with several revisions, a deleted key, a compaction, a lease with a key.
    for rnd in range(3):
        for i in range(10):
            ok(leader.etcdctl("put", f"k/{i}", f"v{rnd}-{i}"), "put")
    ok(leader.etcdctl("del", "k/3"), "del")
    out = ok(leader.etcdctl("lease", "grant", "600", "-w", "json"), "lease grant")
    lease = json.loads(out)["ID"]
    ok(leader.etcdctl("put", "leased", "y", f"--lease={lease:x}"), "put with lease")
    rev, _ = dump(leader, serializable=False)
    ok(leader.etcdctl("compact", str(rev - 5)), "compact")

    w = Writer(lambda: c.voters(), prefix="w/", threads=2).start()
    try:
        w.wait_acked(30)
        src = next(m for m in c.members if m is not leader)  # from a follower
        path = tmp_path / "backup.db"
        t_start = time.monotonic()
        out = ok(src.etcdctl("snapshot", "save", str(path), timeout=120), "snapshot save")
        took = time.monotonic() - t_start
        assert "Snapshot saved at" in out, out
        w.wait_acked(10, since=time.monotonic())
    finally:
        w.stop()
    acked_before = {k: v[0] for k, v in w.acked.items() if v[2] < t_start}

    st = json.loads(run([*snapshot_tool(cluster_kind), "status", str(path), "-w", "json"]))
    assert set(st) == {"hash", "revision", "totalKey", "totalSize"}, st
    # The size of the state, the digest `snapshot save` appends not counted (etcd's too).
    assert st["totalSize"] == path.stat().st_size - 32, st
    backup_rev = st["revision"]
    assert backup_rev >= rev

    # The old cluster's state at the backup's revision (its history since the compaction).
    want_rev, want = dump(leader, serializable=False)
    assert want_rev > backup_rev, "writes went on during and after the save"
    out = ok(leader.etcdctl("get", "", "--prefix", f"--rev={backup_rev}", "-w", "json"),
             "get at the backup revision")
    at_backup = sorted(json.loads(out)["kvs"], key=lambda kv: kv["key"])

    # Three new members from the file, a new token: a new cluster.
    new = Cluster(cluster_kind, 3)
    try:
        for m in new.members:
            run([*snapshot_tool(cluster_kind), "restore", str(path),
                 "--name", m.name, "--data-dir", str(m.data_dir),
                 "--initial-cluster", m.initial_cluster,
                 "--initial-cluster-token", new.token,
                 "--initial-advertise-peer-urls", m.advertise_peer_url])
        t0 = time.monotonic()
        new.start()
        new_leader = new.wait_leader()
        ready = time.monotonic() - t0
        for m in new.members:
            out = ok(m.etcdctl("get", "", "--prefix", "-w", "json"), f"get on {m.name}")
            got = json.loads(out)
            assert got["header"]["revision"] == backup_rev, got["header"]
            assert got["header"]["cluster_id"] != json.loads(
                ok(leader.etcdctl("endpoint", "status", "-w", "json"), "status"))[0][
                    "Status"]["header"]["cluster_id"]
            # Same keys, values, create and mod revisions, versions and leases.
            assert sorted(got["kvs"], key=lambda kv: kv["key"]) == at_backup
        # Every write acknowledged before the save began is in the backup.
        _, restored = dump(new_leader, serializable=False)
        missing = [k for k, v in acked_before.items() if restored.get(k, (None,))[0] != v]
        assert not missing, f"{len(missing)} acknowledged writes missing: {missing[:5]}"
        assert restored["k/0"] == want["k/0"]
        # History kept since the compaction; before it, compacted.
        rc, _, err = new_leader.etcdctl("get", "k/0", f"--rev={rev - 6}")
        assert rc != 0 and "compacted" in err, err
        ok(new_leader.etcdctl("get", "k/0", f"--rev={rev - 4}"), "get after the compaction")
        leases = ok(new_leader.etcdctl("lease", "list"), "lease list")
        assert f"{lease:x}" in leases, leases
        ttl = json.loads(ok(new_leader.etcdctl("lease", "timetolive", f"{lease:x}", "--keys",
                                               "-w", "json"), "lease timetolive"))
        assert ttl["granted-ttl"] == 600 and len(ttl["keys"]) == 1, ttl
        # The new cluster goes on from the backup's revision.
        ok(new_leader.etcdctl("put", "after", "restore"), "put after restore")
        rev_after, _ = dump(new_leader, serializable=False)
        assert rev_after == backup_rev + 1
        report("backup_restore", kind=cluster_kind, save_s=round(took, 2),
               bytes=st["totalSize"], keys=len(at_backup), revision=backup_rev,
               acked_during_load=len(w.acked), restored_ready_s=round(ready, 2))
    finally:
        new.stop(cleanup=True)


def test_corrupted_backup_is_refused(cluster_factory, cluster_kind, tmp_path):
    c = cluster_factory(1)
    m = c.wait_leader()
    for i in range(50):
        ok(m.etcdctl("put", f"k/{i:02}", "x" * 200), "put")
    path = tmp_path / "backup.db"
    ok(m.etcdctl("snapshot", "save", str(path)), "snapshot save")
    data = bytearray(path.read_bytes())
    at = data.index(b"x" * 200) + 100
    data[at] ^= 0x20
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    p = subprocess.run([*snapshot_tool(cluster_kind), "restore", str(bad),
                        "--data-dir", str(tmp_path / "restored")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    assert "sha256" in p.stderr.lower() or "SHA-256" in p.stderr, p.stderr
    if cluster_kind == "pgraftd":
        # (etcd leaves a half-made data directory behind; pgraftd builds it under another
        # name and removes that when the file turns out bad.)
        assert not (tmp_path / "restored").exists()
        assert not (tmp_path / "restored.restoring").exists()


def test_gateway_snapshot_is_the_same_stream(cluster_factory, cluster_kind, tmp_path):
    """`POST /v3/maintenance/snapshot` streams the backup as JSON lines (etcd's gateway): the
    blobs, then the SHA-256 of them; with no write in between, the same bytes as
    `etcdctl snapshot save` wrote (pgraftd's backups of one state are identical)."""
    import base64
    import hashlib
    import urllib.request

    c = cluster_factory(1)
    m = c.wait_leader()
    for i in range(20):
        ok(m.etcdctl("put", f"g/{i:02}", "v" * 100), "put")
    ok(m.etcdctl("put", "big", input="b" * 300_000), "put a value of several chunks")
    path = tmp_path / "backup.db"
    ok(m.etcdctl("snapshot", "save", str(path)), "snapshot save")
    req = urllib.request.Request(f"{m.client_url}/v3/maintenance/snapshot", data=b"{}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        lines = [json.loads(ln) for ln in r.read().decode().splitlines() if ln.strip()]
    results = [ln["result"] for ln in lines]
    blobs = [base64.b64decode(x.get("blob", "")) for x in results]
    data, digest = b"".join(blobs[:-1]), blobs[-1]
    assert hashlib.sha256(data).digest() == digest
    assert int(results[0].get("remaining_bytes", 0)) == len(data) - len(blobs[0]), results[0]
    assert len(blobs) > 3, len(blobs)
    assert all(set(x) <= {"blob", "remaining_bytes"} for x in results), results[0].keys()
    assert int(results[-1].get("remaining_bytes", 0)) == 0
    if cluster_kind == "pgraftd":
        assert data + digest == path.read_bytes()
