"""Differential test of etcd's auth: one scripted etcdctl 3.4.23 session (users, roles,
permissions, enabling, reads/writes/txns/watches as users with and without the permission,
wrong and missing passwords, revocations, a token that expired, disabling), run against real
etcd and against pgraftd, each on a fresh data dir, compared step by step after masking, as
test_etcdctl_diff.py does (whose runner and masking it reuses). The session runs twice: with
simple tokens (`test_step`) and with etcd's JWT tokens, RS256 (`test_step_jwt`).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from conftest import candidate_kind, session_cache
from harness import Server
from test_etcdctl_diff import V, Step, compare_step, lease_id, run_session

TOKEN_TTL = 3
WATCH_SECONDS = 2.0
ROOT = "--user=root:rootpw"
ALICE = "--user=alice:alicepw"
BOB = "--user=bob:bobpw"

STEPS: list[Step] = []


def step(name, *args, **kw):
    assert all(s.name != name for s in STEPS), name
    STEPS.append(Step(name, args, **kw))


def txn(compares, success, failure):
    return "".join(line + "\n" for line in compares) + "\n" + \
        "".join(line + "\n" for line in success) + "\n" + \
        "".join(line + "\n" for line in failure) + "\n"


# ---- users and roles, auth still off -----------------------------------------------------
step("enable_without_root", "auth", "enable", expect_rc=1)
step("user_add_root", "user", "add", "root:rootpw")
step("user_add_root_again", "user", "add", "root:other", expect_rc=1)
step("user_add_alice", "user", "add", "alice:alicepw")
step("user_add_bob", "user", "add", "bob:bobpw")
step("user_add_nopw", "user", "add", "carol", "--no-password")
step("role_add_reader", "role", "add", "reader")
step("role_add_reader_again", "role", "add", "reader", expect_rc=1)
step("role_add_writer", "role", "add", "writer")
step("grant_read_prefix", "role", "grant-permission", "reader", "read", "a/", "--prefix")
step("grant_rw_key", "role", "grant-permission", "writer", "readwrite", "w/1")
step("grant_write_range", "role", "grant-permission", "writer", "write", "w/2", "w/5")
step("grant_write_range_again", "role", "grant-permission", "writer", "write", "w/2", "w/5")
step("grant_missing_role", "role", "grant-permission", "nosuch", "read", "x", expect_rc=1)
# (No inverted range [z, a): etcd 3.4.23 grants it, 3.5 refuses it with `invalid auth
# management`, as pgraftd does; server/tests/auth.rs checks that.)
step("role_get_reader", "role", "get", "reader")
step("role_get_writer", "role", "get", "writer")
step("role_get_missing", "role", "get", "nosuch", expect_rc=1)
step("role_list", "role", "list")
step("user_grant_alice", "user", "grant-role", "alice", "reader")
step("user_grant_alice_writer", "user", "grant-role", "alice", "writer")
step("user_grant_alice_again", "user", "grant-role", "alice", "writer")
step("user_grant_bob", "user", "grant-role", "bob", "writer")
step("user_grant_missing_role", "user", "grant-role", "bob", "nosuch", expect_rc=1)
step("user_grant_missing_user", "user", "grant-role", "nosuch", "reader", expect_rc=1)
step("user_get_alice", "user", "get", "alice")
step("user_get_alice_detail", "user", "get", "alice", "--detail")
step("user_get_missing", "user", "get", "nosuch", expect_rc=1)
step("user_list", "user", "list")
step("put_a1", "put", "a/1", "one")
step("put_c", "put", "c", "see")

# ---- enabled (etcdctl adds role root and grants it to root, then retries) ------------------
step("enable", "auth", "enable")
step("enable_again_no_user", "auth", "enable", expect_rc=1)
step("enable_again_root", ROOT, "auth", "enable")
step("get_no_user", "get", "a/1", expect_rc=1)
step("put_no_user", "put", "a/1", "x", expect_rc=1)
step("alice_get", ALICE, "get", "a/1")
step("alice_get_prefix", ALICE, "get", "a/", "--prefix", "-w", "json")
step("alice_get_c_denied", ALICE, "get", "c", expect_rc=1)
step("alice_get_all_denied", ALICE, "get", "", "--prefix", expect_rc=1)
step("alice_put_a_denied", ALICE, "put", "a/1", "x", expect_rc=1)
step("alice_put_w1", ALICE, "put", "w/1", "v")
step("alice_put_w1_prev", ALICE, "put", "w/1", "v2", "--prev-kv")
step("bob_put_w3", BOB, "put", "w/3", "three")
step("bob_put_w3_prev_denied", BOB, "put", "w/3", "x", "--prev-kv", expect_rc=1)
step("bob_get_w3_denied", BOB, "get", "w/3", expect_rc=1)
step("bob_del_w3", BOB, "del", "w/3")
step("bob_del_prefix_denied", BOB, "del", "w/", "--prefix", expect_rc=1)
step("wrong_password", "--user=alice:wrong", "get", "a/1", expect_rc=2)
step("unknown_user", "--user=nobody:pw", "get", "a/1", expect_rc=2)
step("no_password_user_login", "--user=carol:x", "get", "a/1", expect_rc=2)
step("alice_txn", ALICE, "txn", "-i", input=txn(
    ['value("a/1") = "one"'], ["put w/1 t", "get a/1"], ["get w/1"]))
step("alice_txn_compare_denied", ALICE, "txn", "-i", input=txn(
    ['value("c") = "see"'], ["get a/1"], []), expect_rc=1)
step("alice_txn_failure_branch_denied", ALICE, "txn", "-i", input=txn(
    ['value("a/1") = "one"'], ["get a/1"], ["put c x"]), expect_rc=1)
step("root_get_all", ROOT, "get", "", "--prefix")
step("root_user_list", ROOT, "user", "list")
step("alice_user_get_self", ALICE, "user", "get", "alice")
step("alice_user_get_other_denied", ALICE, "user", "get", "bob", expect_rc=1)
step("alice_user_list_denied", ALICE, "user", "list", expect_rc=1)
step("alice_role_get_own", ALICE, "role", "get", "reader")
step("bob_role_get_other_denied", BOB, "role", "get", "reader", expect_rc=1)
step("alice_role_add_denied", ALICE, "role", "add", "x", expect_rc=1)
step("alice_user_add_denied", ALICE, "user", "add", "eve:pw", expect_rc=1)
step("root_delete_root_denied", ROOT, "user", "delete", "root", expect_rc=1)
step("root_revoke_root_role_denied", ROOT, "user", "revoke-role", "root", "root", expect_rc=1)
step("root_delete_root_role_denied", ROOT, "role", "delete", "root", expect_rc=1)
step("alice_watch", ALICE, "watch", "a/", "--prefix", "--rev=1", seconds=WATCH_SECONDS,
     expect_rc="killed")
step("alice_watch_denied", ALICE, "watch", "c", "--rev=1", seconds=WATCH_SECONDS, expect_rc=5)
# Compaction checks no permission in etcd (any user may compact), nor do these.
step("alice_compact", ALICE, "compaction", "2")
# Lock acts as its caller: READWRITE on the lock's keys is needed, READ is not enough.
step("root_grant_writer_locks", ROOT, "role", "grant-permission", "writer", "readwrite", "lk/",
     "--prefix")
step("alice_lock_exec", ALICE, "lock", "lk/one", "echo", "locked")
step("alice_lock_denied", ALICE, "lock", "a/one", "echo", "locked", expect_rc=1)
step("root_get_lock_keys", ROOT, "get", "", "--prefix", "--keys-only")
step("alice_member_list", ALICE, "member", "list", "-w", "json")
step("alice_endpoint_status", ALICE, "endpoint", "status", "-w", "json")
step("alice_alarm_list", ALICE, "alarm", "list")
step("alice_lease_grant", ALICE, "lease", "grant", "100", capture=lease_id("alice_lease"))
step("alice_put_leased", ALICE, "put", "w/1", "leased", V("--lease={alice_lease}"))
step("root_put_leased", ROOT, "put", "c", "leased", V("--lease={alice_lease}"))
step("alice_lease_revoke_denied", ALICE, "lease", "revoke", V("{alice_lease}"), expect_rc=1)
step("alice_lease_timetolive", ALICE, "lease", "timetolive", V("{alice_lease}"))
step("root_lease_revoke", ROOT, "lease", "revoke", V("{alice_lease}"))


def gateway(server: Server, path: str, body: dict, token: str | None = None):
    req = urllib.request.Request(
        f"http://{server.endpoint}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": token} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def expired_token(server: Server, vars):
    """A token used at once works; unused for longer than --auth-token-ttl it is refused."""
    code, body = gateway(server, "/v3/auth/authenticate", {"name": "alice", "password": "alicepw"})
    token = body.get("token", "")
    lines = [f"authenticate -> {code} token={'yes' if token else 'no'}"]
    key = base64.b64encode(b"a/1").decode()
    for wait in (0, TOKEN_TTL + 3):
        time.sleep(wait)
        code, body = gateway(server, "/v3/kv/range", {"key": key}, token)
        lines.append(f"range after {wait}s -> {code} count={body.get('count')} "
                     f"error={body.get('error')!r} code={body.get('code')}")
    return "(gateway) expired token", None, 0, "\n".join(lines) + "\n", ""


STEPS.append(Step("expired_token", run=expired_token))

# ---- revocations take effect at once ---------------------------------------------------------
step("revoke_perm", ROOT, "role", "revoke-permission", "reader", "a/", "--prefix")
step("alice_get_after_revoke", ALICE, "get", "a/1", expect_rc=1)
step("revoke_perm_again", ROOT, "role", "revoke-permission", "reader", "a/", "--prefix",
     expect_rc=1)
step("revoke_role", ROOT, "user", "revoke-role", "alice", "writer")
step("alice_put_w1_after_revoke", ALICE, "put", "w/1", "x", expect_rc=1)
step("revoke_role_again", ROOT, "user", "revoke-role", "alice", "writer", expect_rc=1)
step("change_password", ROOT, "user", "passwd", "bob", "--interactive=false", input="newpw\n")
step("bob_old_password", BOB, "put", "w/2", "x", expect_rc=2)
step("bob_new_password", "--user=bob:newpw", "put", "w/2", "x")
step("delete_role_writer", ROOT, "role", "delete", "writer")
step("bob_after_role_delete", "--user=bob:newpw", "put", "w/2", "y", expect_rc=1)
step("user_get_bob_after_role_delete", ROOT, "user", "get", "bob")
step("delete_bob", ROOT, "user", "delete", "bob")
step("bob_after_delete", "--user=bob:newpw", "get", "a/1", expect_rc=2)
step("delete_missing_user", ROOT, "user", "delete", "bob", expect_rc=1)

# ---- disabled ------------------------------------------------------------------------------
step("disable_alice_denied", ALICE, "auth", "disable", expect_rc=1)
step("disable", ROOT, "auth", "disable")
step("get_after_disable", "get", "a/1")
step("final_users", "user", "list")
step("final_roles", "role", "list")
step("final_dump", "get", "", "--prefix", "-w", "json")

# --------------------------------------------------------------------------- tests
CANDIDATE = candidate_kind()
_session = session_cache(
    lambda kind: run_session(kind, STEPS, extra_args=(f"--auth-token-ttl={TOKEN_TTL}",)))


@pytest.mark.parametrize("st", STEPS, ids=[s.name for s in STEPS])
def test_step(st: Step):
    compare_step(_session, STEPS, st)


# The same session with etcd's JWT tokens (RS256, the test keys of server/tests/keys).
KEYS = __import__("pathlib").Path(__file__).resolve().parent.parent / "server" / "tests" / "keys"
JWT_FLAG = (f"--auth-token=jwt,pub-key={KEYS}/rsa.pub,priv-key={KEYS}/rsa.key,"
            "sign-method=RS256,ttl=5s")
_jwt_session = session_cache(
    lambda kind: run_session(kind, STEPS, extra_args=(JWT_FLAG,)))


@pytest.mark.parametrize("st", STEPS, ids=[s.name for s in STEPS])
def test_step_jwt(st: Step):
    compare_step(_jwt_session, STEPS, st)
