"""Crash test: every write that etcdctl saw acknowledged survives `kill -9` and a restart.

Run against pgraftd (the point) and against real etcd (to check the test itself).

Per cycle: N acknowledged puts (some overwrites, some deletes), a lease with a long TTL
and a key attached to it, a compaction; the revision of each write is taken from the
`-w json` answer.  Right after the last acknowledged write the server gets SIGKILL, then
it is restarted on the same data dir and ports, and we check:

* every key has exactly the acknowledged value, mod_revision and version, and no deleted
  key came back;
* the header revision is the last acknowledged revision, and the next write gets +1;
* the lease is listed, has its granted TTL, a positive remaining TTL and the attached key;
* a read below the compacted revision is still refused as compacted.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal

import pytest

from conftest import reference_only

N_PUTS = int(os.environ.get("COMPAT_CRASH_PUTS", "200"))
CYCLES = 2
LEASE_TTL = 3600


def ok(res, what):
    rc, out, err = res
    assert rc == 0, f"{what}: exit {rc}\nstdout: {out}\nstderr: {err}"
    return out


def put(s, key, value, *extra):
    out = ok(s.etcdctl("put", key, value, "-w", "json", *extra), f"put {key}")
    return json.loads(out)["header"]["revision"]


def dump(s):
    out = ok(s.etcdctl("get", "", "--prefix", "-w", "json"), "get all")
    d = json.loads(out)
    kvs = {
        base64.b64decode(kv["key"]).decode(): kv for kv in d.get("kvs", [])
    }
    return d["header"]["revision"], kvs


@pytest.mark.parametrize("kind", ["etcd", "pgraftd"])
def test_kill9_keeps_acknowledged_writes(kind, server_factory):
    if kind == "pgraftd" and reference_only():
        pytest.skip("COMPAT_REFERENCE_ONLY=1: pgraftd not tested")
    s = server_factory(kind)

    # expected state: key -> (value, create_rev, mod_rev, version, lease)
    expect: dict[str, tuple] = {}
    deleted: set[str] = set()
    last_rev = 1
    leases: dict[str, str] = {}  # lease hex id -> attached key
    compacted = None

    def record_put(key, value, rev, lease=0):
        nonlocal last_rev
        assert rev == last_rev + 1, f"put {key}: revision {rev}, expected {last_rev + 1}"
        last_rev = rev
        old = expect.get(key)
        create = old[1] if old else rev
        version = old[3] + 1 if old else 1
        expect[key] = (value, create, rev, version, lease)
        deleted.discard(key)

    for cycle in range(CYCLES):
        # a lease with a long TTL and a key attached to it
        out = ok(s.etcdctl("lease", "grant", str(LEASE_TTL)), "lease grant")
        m = re.fullmatch(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)\n", out)
        assert m and int(m.group(2)) == LEASE_TTL, out
        lease = m.group(1)
        lkey = f"crash/leased/{cycle}"
        rev = put(s, lkey, f"leased-{cycle}", f"--lease={lease}")
        record_put(lkey, f"leased-{cycle}", rev, int(lease, 16))
        leases[lease] = lkey

        for i in range(N_PUTS):
            if i % 50 == 25:  # compact now and then (history only; keys stay)
                ok(s.etcdctl("compaction", str(last_rev)), "compaction")
                compacted = last_rev
            nkeys = max(1, N_PUTS * 3 // 4)  # the last quarter of the puts overwrite
            key = f"crash/{cycle}/{i % nkeys:04d}"
            value = f"value-{cycle}-{i}"
            victim = f"crash/{cycle}/{(i - 7) % nkeys:04d}"
            if i % 40 == 39 and victim in expect:  # delete an earlier key now and then
                out = ok(s.etcdctl("del", victim, "-w", "json"), f"del {victim}")
                d = json.loads(out)
                assert d.get("deleted") == 1, out
                assert d["header"]["revision"] == last_rev + 1, out
                last_rev = d["header"]["revision"]
                expect.pop(victim)
                deleted.add(victim)
            record_put(key, value, put(s, key, value))

        # SIGKILL right after the last acknowledged write.
        s.kill(signal.SIGKILL)
        assert not s.alive()
        s.start()

        rev, kvs = dump(s)
        assert rev == last_rev, f"cycle {cycle}: header revision {rev} after restart, " \
                                f"last acknowledged {last_rev}"
        missing = sorted(set(expect) - set(kvs))
        assert not missing, f"cycle {cycle}: acknowledged keys lost: {missing[:20]}"
        back = sorted(deleted & set(kvs))
        assert not back, f"cycle {cycle}: deleted keys came back: {back[:20]}"
        extra = sorted(set(kvs) - set(expect))
        assert not extra, f"cycle {cycle}: unexpected keys: {extra[:20]}"
        wrong = []
        for key, (value, create, mod, version, lease_id) in expect.items():
            kv = kvs[key]
            got = (base64.b64decode(kv.get("value", "")).decode(), kv.get("create_revision"),
                   kv.get("mod_revision"), kv.get("version"), kv.get("lease", 0))
            if got != (value, create, mod, version, lease_id):
                wrong.append(f"{key}: got {got}, expected {(value, create, mod, version, lease_id)}")
        assert not wrong, f"cycle {cycle}: {len(wrong)} keys differ:\n" + "\n".join(wrong[:20])

        # leases
        out = ok(s.etcdctl("lease", "list"), "lease list")
        listed = set(out.split("\n")[1:]) - {""}
        assert listed == set(leases), f"lease list after restart: {out!r}, expected {leases}"
        for lid, lkey in leases.items():
            out = ok(s.etcdctl("lease", "timetolive", lid, "--keys", "-w", "json"), "timetolive")
            t = json.loads(out)
            assert t["granted-ttl"] == LEASE_TTL, out
            assert 0 < t["ttl"] <= LEASE_TTL, out
            assert [base64.b64decode(k).decode() for k in t["keys"]] == [lkey], out

        # compaction survives too
        if compacted is not None and compacted > 1:
            rc, out, err = s.etcdctl("get", "crash/", "--prefix", f"--rev={compacted - 1}")
            assert rc == 1 and "required revision has been compacted" in err, (rc, out, err)

        # the revision counter goes on from where it was
        key = f"crash/after-restart/{cycle}"
        record_put(key, "x", put(s, key, "x"))
