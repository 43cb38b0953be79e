"""Differential test of etcd's maintenance commands: one scripted etcdctl session against
real etcd (the reference) and pgraftd (the candidate), each a fresh single member with a
tiny `--quota-backend-bytes`, compared step by step after masking.

The session: `alarm list`, `endpoint status`, fill the backend until NOSPACE (the put error
text), what the raised alarm refuses and allows, delete, `compact`, `defrag`,
`alarm disarm`, `endpoint hashkv`.

Masked beyond masking.py's rules: decimal member IDs in alarm lines (`memberID:N`), hashes,
and revisions. How many puts fit the quota depends on the storage engine (bbolt pages against
fjall tables), so revisions after the fill differ by that count; the steps that depend on it
report facts instead ("deleted every key written", "dbSizeInUse went down").

COMPAT_REFERENCE_ONLY=1 runs etcd as the candidate too (validates the masking).
"""

from __future__ import annotations

import difflib
import json
import re

import pytest

from conftest import candidate_kind, session_cache
from harness import Server
from masking import Masker

# Small enough to fill in seconds; the same for both. `--snapshot-count` keeps pgraftd's raft
# log (part of its database, see README "Maintenance") to a few entries, as etcd's WAL is
# outside its quota.
QUOTA = 2_000_000
VALUE = "x" * 50_000
ARGS = [f"--quota-backend-bytes={QUOTA}", "--snapshot-count=5"]

MEMBER_DEC = re.compile(r"memberID:(\d+)")
REV_JSON = re.compile(r'"(revision|compact_revision|hash_revision|hash)":\s*-?\d+')
COMPACTED = re.compile(r"compacted revision \d+")
HASHKV_LINE = re.compile(r"^(<CLIENT_ADDR>), \d+$", re.M)


def fill(server: Server, vars: dict):
    """Puts big values until a put fails; the transcript shows only the failing put."""
    n = 0
    while n < 400:
        rc, out, err = server.etcdctl("put", f"big/{n:04d}", input=VALUE)
        if rc != 0:
            vars["filled"] = n
            return "etcdctl put big/NNNN < 50 kB", None, rc, f"filled some first: {n > 0}\n", err
        n += 1
    return "etcdctl put big/NNNN < 50 kB", None, "never refused", "", ""


def delete_all(server: Server, vars: dict):
    rc, out, err = server.etcdctl("del", "--prefix", "big/")
    # etcd at times stores the put it answered NOSPACE to (its quota check raced the apply
    # of the alarm), so one more key may be there.
    filled = vars.get("filled", -1)
    same = out.strip() in (str(filled), str(filled + 1))
    return "etcdctl del --prefix big/", None, rc, f"deleted every key written: {same}\n", err


def status_json(server: Server) -> dict:
    rc, out, _ = server.etcdctl("endpoint", "status", "-w", "json")
    return json.loads(out)[0]["Status"] if rc == 0 else {}


def compact_now(server: Server, vars: dict):
    rc, out, _ = server.etcdctl("get", "a", "-w", "json")
    rev = json.loads(out)["header"]["revision"] if rc == 0 else 0
    vars["in_use_before"] = status_json(server).get("dbSizeInUse", 0)
    rc, out, err = server.etcdctl("compact", str(rev), "--physical")
    return "etcdctl compact <REV> --physical", None, rc, out, err


def defrag(server: Server, vars: dict):
    rc, out, err = server.etcdctl("defrag")
    after = status_json(server).get("dbSizeInUse", 0)
    went_down = 0 < after < vars.get("in_use_before", 0)
    return "etcdctl defrag", None, rc, out + f"dbSizeInUse went down: {went_down}\n", err


# (name, etcdctl args, or a custom run(server, vars), stdin, expected exit code on etcd)
STEPS: list[tuple] = [
    ("alarm_list_empty", ("alarm", "list"), None, 0),
    ("status_fresh", ("endpoint", "status", "-w", "json"), None, 0),
    ("put_small", ("put", "a", "1"), None, 0),
    ("fill_until_nospace", fill, None, 1),
    ("alarm_list_nospace", ("alarm", "list"), None, 0),
    ("status_with_alarm", ("endpoint", "status", "-w", "json"), None, 0),
    ("status_with_alarm_table", ("endpoint", "status", "-w", "table"), None, 0),
    ("put_refused", ("put", "a", "2"), None, 1),
    ("txn_put_refused", ("txn", "-i"), "\nput a 3\n\n\n", 1),
    ("lease_grant_refused", ("lease", "grant", "60"), None, 1),
    ("get_works", ("get", "a"), None, 0),
    ("delete_works", delete_all, None, 0),
    ("compact", compact_now, None, 0),
    ("defrag", defrag, None, 0),
    ("put_still_refused", ("put", "a", "4"), None, 1),
    ("alarm_disarm", ("alarm", "disarm"), None, 0),
    ("alarm_list_after_disarm", ("alarm", "list"), None, 0),
    ("put_after_disarm", ("put", "a", "5"), None, 0),
    ("status_after_disarm", ("endpoint", "status", "-w", "json"), None, 0),
    ("hashkv", ("endpoint", "hashkv"), None, 0),
    ("hashkv_json", ("endpoint", "hashkv", "-w", "json"), None, 0),
    ("hashkv_compacted", ("endpoint", "hashkv", "--rev=2"), None, 1),
    ("hashkv_future", ("endpoint", "hashkv", "--rev=100000"), None, 1),
    ("alarm_disarm_none", ("alarm", "disarm"), None, 0),
]


def mask(m: Masker, text: str | None) -> str | None:
    if text is None:
        return None
    text = MEMBER_DEC.sub(lambda g: "memberID:" + m.ph("MEMBER", int(g.group(1))), text)
    text, _ = m.mask(text)
    text = REV_JSON.sub(lambda g: f'"{g.group(1)}":<N>', text)
    text = COMPACTED.sub("compacted revision <REV>", text)
    return HASHKV_LINE.sub(r"\1, <HASH>", text)


def run_session(kind: str):
    server = Server(kind, extra_args=ARGS)
    server.start()
    vars: dict = {}
    raw = []
    try:
        for name, what, stdin, _ in STEPS:
            if callable(what):
                cmd, stdin, rc, out, err = what(server, vars)
            else:
                rc, out, err = server.etcdctl(*what, input=stdin)
                cmd = "etcdctl " + " ".join(what)
            raw.append((name, cmd, stdin, rc, out, err))
    finally:
        server.stop(cleanup=True)
    m = Masker(server.client_port, server.peer_port, pretty_json=True)
    masked = {}
    for name, cmd, stdin, rc, out, err in raw:
        masked[name] = (f"$ {mask(m, cmd)}\n[exit] {rc}\n[stdout]\n{mask(m, out)}\n"
                        f"[stderr]\n{mask(m, err)}\n")
    (server.workdir / "transcript.masked.txt").write_text(
        "".join(f"=== {k}\n{v}" for k, v in masked.items()))
    return masked, {name: rc for name, _, _, rc, _, _ in raw}, server


_session = session_cache(run_session)


@pytest.mark.parametrize("name,expect_rc", [(s[0], s[3]) for s in STEPS],
                         ids=[s[0] for s in STEPS])
def test_step(name, expect_rc):
    ref, ref_rcs, _ = _session("reference")
    assert ref_rcs[name] == expect_rc, f"the script is wrong for etcd:\n{ref[name]}"
    cand, _, cand_server = _session("candidate")
    if cand[name] != ref[name]:
        diff = "".join(difflib.unified_diff(
            ref[name].splitlines(True), cand[name].splitlines(True),
            fromfile=f"etcd/{name}", tofile=f"{candidate_kind()}/{name}", n=8))
        pytest.fail(f"transcripts differ after masking:\n{diff}\n"
                    f"server log: {cand_server.log_path}", pytrace=False)
