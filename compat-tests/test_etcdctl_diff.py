"""Differential test: one scripted etcdctl session, run against real etcd (the reference)
and against pgraftd (the candidate), each on a fresh data dir.  Every step's transcript
(command, exit code, stdout, stderr) is masked (see masking.py) and compared exactly.

One pytest item per step, so a mismatch names the step and shows a unified diff.

COMPAT_REFERENCE_ONLY=1 runs etcd as the candidate too: that run must pass, and it
validates the masking rules.
"""

from __future__ import annotations

import base64
import difflib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import pytest

from conftest import candidate_kind, session_cache
from harness import Server
from masking import TTL_TOLERANCE, Masker

WATCH_SECONDS = 2.0


# --------------------------------------------------------------------------- session DSL
@dataclass
class Step:
    name: str
    args: tuple = ()                 # etcdctl args; an item may be a callable(vars) -> str
    input: str | None = None         # stdin (e.g. for `txn -i`); may be a callable(vars)
    seconds: float | None = None     # run for this long, then kill (watch)
    expect_rc: object = 0            # expected exit code on the reference (sanity check)
    capture: Callable | None = None  # capture(stdout, vars) after the step
    run: Callable | None = None      # custom: run(server, vars) -> (cmd, input, rc, out, err)


STEPS: list[Step] = []


def step(name, *args, **kw):
    assert all(s.name != name for s in STEPS), name
    STEPS.append(Step(name, args, **kw))


def header_rev(var):
    """capture: vars[var] = header.revision of a `-w json` output."""
    def cap(out, vars):
        vars[var] = json.loads(out)["header"]["revision"]
    return cap


def lease_id(var):
    def cap(out, vars):
        m = re.search(r"^lease ([0-9a-f]+) granted with TTL\(\d+s\)$", out, re.M)
        vars[var] = m.group(1) if m else "LEASE-NOT-GRANTED"
    return cap


def V(fmt):
    """An argument computed from captured variables: V('--rev={r}') or a lambda."""
    return (lambda vars: fmt.format(**vars)) if isinstance(fmt, str) else fmt


def txn(*blocks):
    """stdin for `txn -i`: compares, success ops, failure ops (each a list of lines).

    A line may be V(...); then the whole input is computed when the step runs.
    """
    def render(vars=None):
        return "".join(
            "".join((line(vars) if callable(line) else line) + "\n" for line in b) + "\n"
            for b in blocks)
    if any(callable(line) for b in blocks for line in b):
        return render
    return render()


# ---- basic put / get -----------------------------------------------------------------
step("put_foo", "put", "foo", "bar")
step("put_foo_json", "put", "foo", "baz", "-w", "json")
step("get_foo", "get", "foo")
step("get_foo_json", "get", "foo", "-w", "json")
step("get_foo_fields", "get", "foo", "-w", "fields")
step("get_foo_hex", "get", "foo", "--hex")
step("get_foo_rev2", "get", "foo", "--rev=2", "-w", "json")
step("get_foo_rev2_plain", "get", "foo", "--rev=2")
step("get_missing", "get", "nosuchkey")
step("get_missing_json", "get", "nosuchkey", "-w", "json")
step("get_future_rev", "get", "foo", "--rev=1000", expect_rc=1)
step("get_empty_key", "get", "", expect_rc=1)
step("put_empty_key", "put", "", "x", expect_rc=1)
step("put_missing_value", "put", "onlykey", expect_rc=128)

# ---- data for ranges: versions of a/1, a/2, a/3 are 1, 2, 3 (unique, so sorts have no ties)
step("put_a1", "put", "a/1", "v1")
step("put_a2_first", "put", "a/2", "v2", "-w", "json", capture=header_rev("r_a2"))
step("put_a3", "put", "a/3", "v3")
step("put_b1", "put", "b/1", "z")
step("put_b2", "put", "b/2", "y")
step("put_c", "put", "c", "x")
step("put_a2_again", "put", "a/2", "v2b")
step("put_a3_again", "put", "a/3", "v3b")
step("put_a3_third", "put", "a/3", "v0")
step("get_prefix", "get", "a/", "--prefix")
step("get_prefix_json", "get", "a/", "--prefix", "-w", "json")
step("get_prefix_limit_json", "get", "a/", "--prefix", "--limit=2", "-w", "json")
step("get_prefix_limit_plain", "get", "a/", "--prefix", "--limit=1")
step("get_from_key", "get", "b", "--from-key")
step("get_from_key_limit_json", "get", "a/2", "--from-key", "--limit=2", "-w", "json")
step("get_range", "get", "a/2", "b/2")
step("get_range_json", "get", "a/2", "b/2", "-w", "json")
step("get_old_rev", "get", "a/2", V("--rev={r_a2}"), "-w", "json")
step("get_prefix_old_rev", "get", "a/", "--prefix", V("--rev={r_a2}"))
step("get_order_desc", "get", "a/", "--prefix", "--order=DESCEND")
step("get_sort_modify_desc", "get", "a/", "--prefix", "--sort-by=MODIFY", "--order=DESCEND")
step("get_sort_value", "get", "a/", "--prefix", "--sort-by=VALUE")
step("get_sort_value_desc_json", "get", "a/", "--prefix", "--sort-by=VALUE", "--order=DESCEND",
     "-w", "json")
step("get_sort_create_asc", "get", "a/", "--prefix", "--sort-by=CREATE", "--order=ASCEND")
step("get_sort_version_desc_json", "get", "a/", "--prefix", "--sort-by=VERSION",
     "--order=DESCEND", "-w", "json")
step("get_sort_key_desc_limit", "get", "a/", "--prefix", "--sort-by=KEY", "--order=DESCEND",
     "--limit=2", "-w", "json")
step("get_sort_modify_limit1", "get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND",
     "--limit=1", "-w", "json")
step("get_keys_only", "get", "a/", "--prefix", "--keys-only")
step("get_keys_only_json", "get", "a/", "--prefix", "--keys-only", "-w", "json")
step("get_print_value_only", "get", "a/", "--prefix", "--print-value-only")
step("get_serializable", "get", "a/1", "--consistency=s", "-w", "json")
step("get_all_keys", "get", "", "--prefix", "--keys-only")
step("get_all_from_key_json", "get", "", "--from-key", "--limit=3", "-w", "json")
step("get_bad_sort", "get", "a/", "--prefix", "--sort-by=BOGUS", expect_rc=4)

# ---- put flags ---------------------------------------------------------------------------
step("put_prev_kv", "put", "a/1", "v1b", "--prev-kv")
step("put_prev_kv_json", "put", "a/1", "v1c", "--prev-kv", "-w", "json")
step("put_prev_kv_new_key", "put", "n/1", "new", "--prev-kv")
step("put_ignore_value", "put", "a/1", "--ignore-value", "-w", "json")
step("get_after_ignore_value", "get", "a/1", "-w", "json")
step("put_ignore_value_missing", "put", "nokey", "--ignore-value", expect_rc=1)
step("put_ignore_value_with_value", "put", "a/1", "x", "--ignore-value", expect_rc=128)
step("put_ignore_lease_missing", "put", "nokey", "v", "--ignore-lease", expect_rc=1)
step("put_ignore_lease_no_lease", "put", "a/1", "v1d", "--ignore-lease", "-w", "json")
step("put_fields", "put", "a/1", "v1e", "-w", "fields")
step("get_a1_json", "get", "a/1", "-w", "json")

# ---- del -----------------------------------------------------------------------------------
step("del_one", "del", "c")
step("del_missing", "del", "c")
step("del_missing_json", "del", "c", "-w", "json")
step("del_prefix_prev_kv", "del", "b/", "--prefix", "--prev-kv")
step("del_json", "del", "n/1", "-w", "json")
step("put_z1", "put", "z/1", "last1")
step("put_z2", "put", "z/2", "last2")
step("put_y", "put", "y", "why")
step("del_from_key_prev_kv", "del", "z/", "--from-key", "--prev-kv")
step("del_prefix_prev_kv_json", "del", "y", "--prefix", "--prev-kv", "-w", "json")
step("get_all_after_del", "get", "", "--prefix")

# ---- txn -i --------------------------------------------------------------------------------
step("txn_success", "txn", "-i", input=txn(
    ['value("a/1") = "v1e"', 'mod("a/2") > "0"', V('create("a/2") = "{r_a2}"'), 'version("a/3") = "3"'],
    ["put t/1 one", "get a/1"],
    ["put t/2 two"]))
step("txn_failure", "txn", "-i", input=txn(
    ['value("a/1") = "v1e"', 'value("a/2") = "nope"'],
    ["put t/1 never"],
    ["put t/2 two", "get t/ --prefix", "del t/1 --prev-kv"]))
step("txn_json", "txn", "-i", "-w", "json", input=txn(
    ['version("a/2") != "1"', 'mod("a/2") < "1000"'],
    ["put t/3 three", "get a/ --prefix --keys-only", "del t/2"],
    []))
step("txn_failure_json", "txn", "-i", "-w", "json", input=txn(
    ['create("a/1") > "1000"'],
    [],
    ["get a/1", "put t/4 four --prev-kv"]))
step("txn_missing_key_create_zero", "txn", "-i", input=txn(
    ['create("nokey") = "0"', 'version("nokey") = "0"'],
    ["put t/5 five"],
    []))
step("txn_missing_key_value", "txn", "-i", input=txn(
    ['value("nokey") = ""'],
    ["put t/6 six"],
    ["get nokey"]))
step("txn_no_compares", "txn", "-i", input=txn([], ["put t/7 seven"], ["put t/8 eight"]))
step("txn_duplicate_put", "txn", "-i", input=txn(
    ['mod("a/1") > "0"'], ["put t/9 a", "put t/9 b"], []), expect_rc=1)
step("txn_malformed", "txn", "-i", input=txn(["bogus compare"]), expect_rc=3)
step("get_t_prefix_json", "get", "t/", "--prefix", "-w", "json")

# ---- leases ----------------------------------------------------------------------------------
step("lease_grant_1", "lease", "grant", "300", capture=lease_id("L1"))
step("lease_grant_2", "lease", "grant", "600", capture=lease_id("L2"))
step("put_with_lease", "put", "lk", "lv", V("--lease={L1}"))
step("get_leased_json", "get", "lk", "-w", "json")
step("get_leased_fields", "get", "lk", "-w", "fields")
step("lease_ttl", "lease", "timetolive", V("{L1}"))
step("lease_ttl_keys", "lease", "timetolive", V("{L1}"), "--keys")
step("lease_ttl_keys_json", "lease", "timetolive", V("{L1}"), "--keys", "-w", "json")
step("lease_list", "lease", "list")
step("lease_list_json", "lease", "list", "-w", "json")
step("lease_keepalive_once", "lease", "keep-alive", "--once", V("{L1}"))
step("lease_keepalive_once_json", "lease", "keep-alive", "--once", V("{L1}"), "-w", "json")
step("put_ignore_lease_keeps_lease", "put", "lk", "lv2", "--ignore-lease")
step("get_leased_after_ignore", "get", "lk", "-w", "json")
step("put_second_leased_key", "put", "lk2", "x", V("--lease={L1}"))
step("put_key_on_lease_2", "put", "lk3", "y", V("--lease={L2}"))
# (no `lease("k") = "<id>"` compare: etcdctl 3.4.23 panics parsing it, "panic: bad value")
step("put_detach_lease", "put", "lk3", "y2")
step("lease_ttl_keys_2_empty", "lease", "timetolive", V("{L2}"), "--keys")
step("get_lk3_detached_json", "get", "lk3", "-w", "json")
step("lease_revoke", "lease", "revoke", V("{L1}"))
step("get_after_revoke", "get", "lk", "--prefix", "-w", "json")
step("lease_revoke_again", "lease", "revoke", V("{L1}"), expect_rc=1)
step("lease_ttl_revoked", "lease", "timetolive", V("{L1}"))
step("lease_ttl_revoked_json", "lease", "timetolive", V("{L1}"), "-w", "json")
step("lease_ttl_unknown_json", "lease", "timetolive", "1234", "--keys", "-w", "json")
step("lease_keepalive_unknown", "lease", "keep-alive", "--once", "1234", expect_rc=2)
step("put_unknown_lease", "put", "x", "y", "--lease=1234", expect_rc=1)
step("put_bad_lease_syntax", "put", "x", "y", "--lease=zz", expect_rc=128)
step("lease_revoke_unknown", "lease", "revoke", "1234", expect_rc=1)
step("lease_grant_tiny", "lease", "grant", "1", capture=lease_id("L3"))
step("lease_revoke_tiny", "lease", "revoke", V("{L3}"))
step("lease_list_after", "lease", "list")

# ---- watch: replay of history (each runs WATCH_SECONDS, then is killed) ----------------------
step("watch_history_prefix", "watch", "a/", "--prefix", "--rev=1", seconds=WATCH_SECONDS,
     expect_rc="killed")
step("watch_history_json", "watch", "a/2", "--rev=1", "-w", "json", seconds=WATCH_SECONDS,
     expect_rc="killed")
step("watch_history_prev_kv", "watch", "b/", "--prefix", "--rev=1", "--prev-kv",
     seconds=WATCH_SECONDS, expect_rc="killed")
step("watch_history_range_prev_kv_json", "watch", "t/", "t/5", "--rev=1", "--prev-kv",
     "-w", "json", seconds=WATCH_SECONDS, expect_rc="killed")
step("watch_history_from_rev", "watch", "", "--prefix", V("--rev={r_a2}"), seconds=WATCH_SECONDS,
     expect_rc="killed")
step("current_rev", "get", "a/1", "-w", "json", capture=header_rev("r_now"))


def live_watch(json_out: bool, what=("live/", "--prefix")):
    """Start `watch <what> --rev=<next>` (default: `live/ --prefix`) in the background, write,
    collect."""
    def run(server: Server, vars):
        args = ["watch", *what, f"--rev={vars['r_now'] + 1}"]
        if json_out:
            args += ["-w", "json"]
        p = server.popen_etcdctl(*args)
        # --rev makes the events the same whenever the watch gets registered; the pause
        # makes it register before the writes, so that -w json shows one response per
        # revision (a replay would batch them).
        time.sleep(1.0)
        writes = [("put", "live/1", "one"), ("put", "live/2", "two"), ("put", "live/1", "uno"),
                  ("del", "live/", "--prefix")]
        notes = []
        for w in writes:
            rc, out, err = server.etcdctl(*w)
            notes.append(f"# {' '.join(w)} -> {rc} {out.strip()} {err.strip()}".rstrip())
        rc, out, err = server.finish_popen(p, 1.5)
        vars["r_now"] += len(writes)
        cmd = "etcdctl " + " ".join(args) + "   # while:\n" + "\n".join(notes)
        return cmd, None, rc, out, err
    return run


step("watch_live", run=live_watch(False), expect_rc="killed")
step("watch_live_json", run=live_watch(True), expect_rc="killed")
# Ranges other than prefixes: found through the servers' range index (etcd's interval tree).
step("watch_live_range", run=live_watch(False, ("live/1", "live/2")), expect_rc="killed")
step("watch_live_range_json", run=live_watch(True, ("live/2", "m")), expect_rc="killed")

# ---- compaction ---------------------------------------------------------------------------------
step("rev_before_compact", "put", "cmp", "1", "-w", "json", capture=header_rev("r_c"))
step("put_cmp_2", "put", "cmp", "2")
step("put_cmp_3", "put", "cmp", "3")
step("compaction", "compaction", V("{r_c}"))
step("get_below_compact", "get", "cmp", V(lambda v: f"--rev={v['r_c'] - 1}"), expect_rc=1)
step("get_at_compact", "get", "cmp", V("--rev={r_c}"), "-w", "json")
step("compaction_again", "compaction", V("{r_c}"), expect_rc=1)
step("compaction_older", "compaction", V(lambda v: str(v["r_c"] - 1)), expect_rc=1)
step("compaction_future", "compaction", "100000", expect_rc=1)
step("compaction_physical", "compaction", V(lambda v: str(v["r_c"] + 1)), "--physical")
step("get_below_physical_compact", "get", "cmp", V("--rev={r_c}"), "-w", "json", expect_rc=1)
step("watch_compacted", "watch", "cmp", V("--rev={r_c}"), seconds=WATCH_SECONDS, expect_rc=5)
step("watch_compacted_json", "watch", "cmp", "--rev=1", "-w", "json", seconds=WATCH_SECONDS,
     expect_rc=5)
step("watch_at_compact_rev", "watch", "cmp", V(lambda v: f"--rev={v['r_c'] + 1}"),
     seconds=WATCH_SECONDS, expect_rc="killed")
step("get_cmp_json", "get", "cmp", "-w", "json")

# ---- cluster / maintenance -------------------------------------------------------------------------
step("endpoint_status_json", "endpoint", "status", "-w", "json")
step("endpoint_status_table", "endpoint", "status", "-w", "table")
step("member_list_table", "member", "list", "-w", "table")
step("member_list_json", "member", "list", "-w", "json")
step("endpoint_health", "endpoint", "health")
step("endpoint_health_json", "endpoint", "health", "-w", "json")
step("endpoint_health_table", "endpoint", "health", "-w", "table")

# ---- final state ----------------------------------------------------------------------------------
step("final_dump_json", "get", "", "--prefix", "-w", "json")
step("final_count_keys", "get", "", "--from-key", "--keys-only")


# --------------------------------------------------------------------------- running
@dataclass
class Entry:
    name: str
    cmd: str
    input: str | None
    rc: object
    stdout: str
    stderr: str
    masked: str = ""
    ttls: list = field(default_factory=list)


def run_session(kind: str, steps: list[Step] | None = None,
                extra_args: tuple[str, ...] = ()) -> tuple[list[Entry], Server]:
    """Runs `steps` (default: this module's session) on a fresh `kind` server started with
    `extra_args`; test_auth_diff.py runs its own session through this too."""
    server = Server(kind, extra_args=extra_args)
    server.start()
    vars: dict = {}
    entries = []
    try:
        for st in (STEPS if steps is None else steps):
            try:
                if st.run is not None:
                    cmd, inp, rc, out, err = st.run(server, vars)
                else:
                    args = [a(vars) if callable(a) else a for a in st.args]
                    inp = st.input(vars) if callable(st.input) else st.input
                    cmd = "etcdctl " + " ".join(_quote(a) for a in args)
                    if st.seconds is not None:
                        rc, out, err = server.etcdctl_for(*args, seconds=st.seconds, input=inp)
                    else:
                        rc, out, err = server.etcdctl(*args, input=inp)
                if st.capture is not None:
                    try:
                        st.capture(out, vars)
                    except Exception as e:  # keep going; the step's diff shows why
                        err += f"\n[harness: capture failed: {e!r}]"
            except KeyError as e:
                cmd, inp, rc, out, err = f"(step needs variable {e})", None, "skipped", "", ""
            entries.append(Entry(st.name, cmd, inp, rc, out, err))
    finally:
        server.stop(cleanup=True)
    mask_entries(entries, server)
    write_transcripts(entries, server)
    return entries, server


def write_transcripts(entries: list[Entry], server: Server) -> None:
    """Keep both forms next to the server log, for reading and for diffing by hand."""
    raw, masked = [], []
    for e in entries:
        raw.append(f"=== {e.name}\n$ {e.cmd}\n" + (f"[stdin]\n{e.input}" if e.input else "")
                   + f"[exit] {e.rc}\n[stdout]\n{e.stdout}[stderr]\n{e.stderr}\n")
        masked.append(f"=== {e.name}\n{e.masked}" + (f"[ttls] {e.ttls}\n" if e.ttls else ""))
    (server.workdir / "transcript.txt").write_text("".join(raw))
    (server.workdir / "transcript.masked.txt").write_text("".join(masked))


def _quote(a: str) -> str:
    return a if a and re.fullmatch(r"[\w./:=,@+-]+", a) else json.dumps(a)


def mask_entries(entries: list[Entry], server: Server) -> None:
    m = Masker(server.client_port, server.peer_port, pretty_json=True)
    for e in entries:
        parts, ttls = [], []
        for label, text in (("$", e.cmd), ("[stdin]", e.input), ("[exit]", str(e.rc)),
                            ("[stdout]", e.stdout), ("[stderr]", e.stderr)):
            if text is None:
                continue
            masked, t = m.mask(text)
            ttls += t
            parts.append(f"{label} {masked}" if label in ("$", "[exit]") else f"{label}\n{masked}")
        e.masked = "\n".join(parts) + "\n"
        e.ttls = ttls


# --------------------------------------------------------------------------- tests
CANDIDATE = candidate_kind()
_session = session_cache(run_session)


@pytest.mark.parametrize("st", STEPS, ids=[s.name for s in STEPS])
def test_step(st: Step):
    compare_step(_session, STEPS, st)


def compare_step(session, steps: list[Step], st: Step) -> None:
    """Fails unless step `st` of the session `session` runs gives the same masked transcript
    (and TTLs within the tolerance) on the candidate as on the reference."""
    ref_entries, ref_server = session("reference")
    idx = steps.index(st)
    ref = ref_entries[idx]
    # Sanity of the script itself: the reference must do what the step intends.
    assert ref.rc == st.expect_rc, (
        f"reference etcd gave exit code {ref.rc!r} (expected {st.expect_rc!r}) for step "
        f"{st.name}; the session script is wrong:\n{ref.masked}")
    cand_entries, cand_server = session("candidate")
    cand = cand_entries[idx]
    problems = []
    if cand.masked != ref.masked:
        diff = "".join(difflib.unified_diff(
            ref.masked.splitlines(True), cand.masked.splitlines(True),
            fromfile=f"etcd/{st.name}", tofile=f"{cand_server.kind}/{st.name}", n=6))
        problems.append(f"transcripts differ after masking:\n{diff}")
    elif len(cand.ttls) != len(ref.ttls) or any(
            abs(a - b) > TTL_TOLERANCE for a, b in zip(ref.ttls, cand.ttls)):
        problems.append(f"remaining TTLs differ by more than {TTL_TOLERANCE}s: "
                        f"etcd {ref.ttls} vs {cand_server.kind} {cand.ttls}")
    if problems:
        problems.append(f"raw {cand_server.kind} output:\n$ {cand.cmd}\n[exit] {cand.rc}\n"
                        f"[stdout]\n{cand.stdout}[stderr]\n{cand.stderr}")
        problems.append(f"{cand_server.kind} server log: {cand_server.log_path}")
        pytest.fail("\n".join(problems), pytrace=False)


def test_session_decodes():
    """The reference's final dump is what the script means to leave behind."""
    ref_entries, _ = _session("reference")
    dump = json.loads(next(e for e in ref_entries if e.name == "final_dump_json").stdout)
    kv = {base64.b64decode(k["key"]).decode(): base64.b64decode(k.get("value", "")).decode()
          for k in dump["kvs"]}
    assert kv["a/1"] == "v1e" and kv["a/3"] == "v0" and kv["cmp"] == "3", kv
    assert "lk" not in kv and "lk2" not in kv and "lk3" in kv, kv
