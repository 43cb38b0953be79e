"""What test_pgext_member.py and test_pgext_client.py share: the check that the pgraft extension
is installed (skip, or fail with PGRAFT_REQUIRE_PGEXT=1), a fixture hook that prints the
PostgreSQL logs of a failed test, and small SQL
helpers for the pgraft_* functions."""

from __future__ import annotations

import base64
import json

import pytest

from harness import HarnessError, run_etcdctl
from pg_cluster import PgInstance, pgext_missing_reason, pgext_required, sql, sql_rows

U64 = 1 << 64


def require_pgext() -> None:
    """Skips the module when the extension is not installed (fails with
    PGRAFT_REQUIRE_PGEXT=1), and fails when PostgreSQL 15 itself is missing."""
    reason = pgext_missing_reason()
    if reason:
        if pgext_required():
            pytest.fail(f"PGRAFT_REQUIRE_PGEXT=1: {reason}", pytrace=False)
        pytest.skip(reason)


def hex_id(node_id: int) -> str:
    """etcdctl's hex member ID of a node_id (the same 64 bits read as a signed bigint)."""
    return format(node_id % U64, "x")


# ----------------------------------------------------------------------------- SQL views
STATUS_COLS = ("node_id", "member_id", "name", "state", "leader_id", "current_term",
               "num_nodes", "num_voters", "commit_index", "applied_index", "last_index",
               "elections_triggered", "leader_changes", "cluster_id")
NODE_COLS = ("node_id", "member_id", "name", "address", "port", "peer_urls", "client_urls",
             "is_leader", "is_learner", "is_self")
REPL_COLS = ("node_id", "member_id", "name", "match_index", "next_index", "lag", "state",
             "recent_active", "is_learner")

INT_COLS = {"node_id", "leader_id", "current_term", "num_nodes", "num_voters", "commit_index",
            "applied_index", "last_index", "elections_triggered", "leader_changes", "port",
            "match_index", "next_index", "lag"}
BOOL_COLS = {"is_leader", "is_learner", "is_self", "recent_active"}


def _typed(col: str, v: str):
    if v == "":
        return None
    if col in INT_COLS:
        return int(v)
    if col in BOOL_COLS:
        return v == "t"
    if col in ("peer_urls", "client_urls"):
        return v.strip("{}").split(",") if v != "{}" else []
    return v


def rows_of(inst: PgInstance, query: str, cols) -> list[dict]:
    return [dict(zip(cols, (_typed(c, v) for c, v in zip(cols, r))))
            for r in sql_rows(inst, query)]


def cluster_status(inst: PgInstance) -> dict:
    """pgraft_get_cluster_status() plus pgraft_is_leader() (as is_leader), in one call."""
    rows = sql_rows(inst, f"SELECT {', '.join('s.' + c for c in STATUS_COLS)}, "
                          f"pgraft_is_leader() FROM pgraft_get_cluster_status() s")
    assert len(rows) == 1, f"pgraft_get_cluster_status() on {inst.name}: {rows}"
    d = {c: _typed(c, v) for c, v in zip(STATUS_COLS, rows[0])}
    d["is_leader"] = rows[0][-1] == "t"
    return d


def nodes(inst: PgInstance) -> list[dict]:
    return rows_of(inst, f"SELECT {', '.join(NODE_COLS)} FROM pgraft_get_nodes()", NODE_COLS)


def q(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def kv_get(inst: PgInstance, key: str) -> str | None:
    """pgraft_kv_get(key), None for NULL."""
    out = sql(inst, f"SELECT coalesce(pgraft_kv_get({q(key)}), '<NULL>')")
    return None if out == "<NULL>" else out


def kv_put(inst: PgInstance, key: str, value: str) -> str:
    return sql(inst, f"SELECT pgraft_kv_put({q(key)}, {q(value)})")


# ------------------------------------------------------------------------------ etcdctl
def etcdctl_ok(endpoints: str, *args: str, input: str | None = None) -> str:
    rc, out, err = run_etcdctl(endpoints, *args, input=input)
    assert rc == 0, f"etcdctl --endpoints={endpoints} {' '.join(args)}: exit {rc}\n{out}\n{err}"
    return out


def etcd_get(endpoints: str, key: str) -> dict | None:
    """{value, lease, ...} of `key` read with etcdctl (linearizable), None if absent."""
    out = etcdctl_ok(endpoints, "get", key, "-w", "json")
    kvs = json.loads(out).get("kvs") or []
    if not kvs:
        return None
    kv = kvs[0]
    return {"value": base64.b64decode(kv.get("value", "")).decode(),
            "lease": int(kv.get("lease", 0)), "version": kv.get("version")}


def etcd_keys(endpoints: str, prefix: str) -> list[str]:
    out = etcdctl_ok(endpoints, "get", prefix, "--prefix", "--keys-only", "-w", "json")
    return [base64.b64decode(kv["key"]).decode() for kv in json.loads(out).get("kvs") or []]


def etcd_put_many(endpoints: str, items: list[tuple[str, str]], batch: int = 100) -> None:
    """Puts many keys with few requests: `etcdctl txn`, `batch` puts per transaction."""
    for i in range(0, len(items), batch):
        ops = "".join(f'put "{k}" "{v}"\n' for k, v in items[i:i + batch])
        out = etcdctl_ok(endpoints, "txn", input=f"\n{ops}\n\n")
        if not out.startswith("SUCCESS"):
            raise HarnessError(f"etcdctl txn did not succeed: {out[:300]}")
