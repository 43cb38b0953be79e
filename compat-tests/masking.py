"""Masking of etcdctl transcripts, so that a run against real etcd and a run against
pgraftd can be compared step by step.

The rules are deliberately few and explicit.  Everything not listed here is compared
exactly: revisions, create/mod revisions, versions, values, keys, counts, exit codes,
error messages (stderr included), field presence and order.

Masked (one Masker per transcript; placeholders are numbered in order of first
appearance, so "the same ID" must stay "the same ID" on both sides):

 1. client/peer URLs and addresses of *this* server (exact port numbers)
        -> <CLIENT_URL>, <CLIENT_ADDR>, <PEER_URL>, <PEER_ADDR>
 2. member IDs (JSON keys member_id, leader, MemberID, and "ID" inside "members";
    the ID column of tables)                          -> <MEMBER_n>
 3. cluster IDs (JSON key cluster_id, fields ClusterID) -> <CLUSTER_n>
 4. lease IDs: 16-hex-digit tokens in plain text, JSON keys id / ID (outside
    "members") / lease, fields "Lease"; 0 stays 0        -> <LEASE_n>
 5. raft term / index (JSON raft_term, raftTerm, raftIndex, raftAppliedIndex;
    fields RaftTerm; table columns RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX) -> <RAFT>
 6. db size (JSON dbSize, dbSizeInUse; table DB SIZE)  -> <DBSIZE>
 7. server version string (JSON string "version" of endpoint status; table VERSION)
                                                        -> <VERSION>
 8. durations: "took = ...", JSON "took", table TOOK     -> <DURATION>
 9. remaining TTL of a lease: "remaining(Ns)" and JSON "ttl" (timetolive) when >= 0
        -> <TTL~>, and the numbers are compared separately with a tolerance
10. etcdctl's own client log lines on stderr: "ts" and the random client UUID in
    "target"                                            -> <TS>, client-<UUID>
11. tables are re-rendered without padding (column widths follow the masked values).
12. (layout only) JSON lines are re-printed one field a line, so that a diff points at the field.
"""

from __future__ import annotations

import json
import re

TTL_TOLERANCE = 2  # seconds

HEX16 = re.compile(r"\b[0-9a-f]{16}\b")
TOOK = re.compile(r"took = \S+")
REMAINING = re.compile(r"remaining\((-?\d+)s\)")
FIELDS = re.compile(r'^"(ClusterID|MemberID|RaftTerm|Lease)" : (-?\d+)$')
CLIENT_UUID = re.compile(r"client-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

RAFT_KEYS = {"raft_term", "raftTerm", "raftIndex", "raftAppliedIndex"}
DBSIZE_KEYS = {"dbSize", "dbSizeInUse"}
MEMBER_KEYS = {"member_id", "leader"}
LEASE_KEYS = {"id", "lease"}

TABLE_COLUMNS = {
    "ID": "member",
    "VERSION": "<VERSION>",
    "DB SIZE": "<DBSIZE>",
    "RAFT TERM": "<RAFT>",
    "RAFT INDEX": "<RAFT>",
    "RAFT APPLIED INDEX": "<RAFT>",
    "TOOK": "<DURATION>",
}


class Masker:
    def __init__(self, client_port: int, peer_port: int, pretty_json: bool = False):
        """pretty_json: print JSON one field a line (line-level diffs); else compact."""
        self.indent = 1 if pretty_json else None
        self.urls = [
            (f"http://127.0.0.1:{client_port}", "<CLIENT_URL>"),
            (f"http://127.0.0.1:{peer_port}", "<PEER_URL>"),
            (f"127.0.0.1:{client_port}", "<CLIENT_ADDR>"),
            (f"127.0.0.1:{peer_port}", "<PEER_ADDR>"),
        ]
        self.ids: dict[tuple[str, int], str] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------ placeholders
    def ph(self, kind: str, value: int) -> str:
        if kind == "LEASE" and value == 0:
            return "0"
        key = (kind, value)
        if key not in self.ids:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.ids[key] = f"<{kind}_{self.counts[kind]}>"
        return self.ids[key]

    # ------------------------------------------------------------------- entry
    def mask(self, text: str) -> tuple[str, list[int]]:
        """Mask one output (stdout, stderr or a command line).

        Returns the masked text and the list of remaining-TTL values it contained
        (to be compared with a tolerance).
        """
        ttls: list[int] = []
        for url, name in self.urls:
            text = text.replace(url, name)
        out: list[str] = []
        header: list[str] | None = None
        for line in text.split("\n"):
            s = line.strip()
            if s.startswith("+-") and set(s) <= {"+", "-"}:
                out.append("+")  # table border
                continue
            if s.startswith("|") and s.endswith("|"):
                cells = [c.strip() for c in s[1:-1].split("|")]
                if header is None:
                    header = cells
                else:
                    cells = [self._table_cell(h, c) for h, c in zip(header, cells)]
                out.append("| " + " | ".join(cells) + " |")
                continue
            header = None
            if s[:1] in ("{", "["):
                try:
                    obj = json.loads(s)
                except ValueError:
                    pass
                else:
                    obj = self._json(obj, None, False, ttls)
                    out.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False,
                                          indent=self.indent))
                    continue
            m = FIELDS.match(s)
            if m:
                k, v = m.group(1), int(m.group(2))
                rep = {
                    "ClusterID": lambda: self.ph("CLUSTER", v),
                    "MemberID": lambda: self.ph("MEMBER", v),
                    "RaftTerm": lambda: "<RAFT>",
                    "Lease": lambda: self.ph("LEASE", v),
                }[k]()
                out.append(f'"{k}" : {rep}')
                continue
            line = TOOK.sub("took = <DURATION>", line)

            def rem(m):
                v = int(m.group(1))
                if v < 0:
                    return m.group(0)
                ttls.append(v)
                return "remaining(<TTL~>)"

            line = REMAINING.sub(rem, line)
            line = HEX16.sub(lambda m: self.ph("LEASE", int(m.group(0), 16)), line)
            out.append(line)
        return "\n".join(out), ttls

    def _table_cell(self, column: str, cell: str) -> str:
        rule = TABLE_COLUMNS.get(column)
        if rule is None or cell == "":
            return cell
        if rule == "member":
            try:
                return self.ph("MEMBER", int(cell, 16))
            except ValueError:
                return cell
        return rule

    def _json(self, obj, key, in_members, ttls):
        if isinstance(obj, dict):
            return {
                k: self._json(v, k, in_members or k == "members", ttls) for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self._json(v, key, in_members, ttls) for v in obj]
        if isinstance(obj, bool) or obj is None:
            return obj
        if key == "ts" and isinstance(obj, str):
            return "<TS>"
        if key == "target" and isinstance(obj, str):
            return CLIENT_UUID.sub("client-<UUID>", obj)
        if key == "took":
            return "<DURATION>"
        if key == "version" and isinstance(obj, str):
            return "<VERSION>"
        if not isinstance(obj, int):
            return obj
        if key == "cluster_id":
            return self.ph("CLUSTER", obj)
        if key in MEMBER_KEYS or (key == "ID" and in_members):
            return self.ph("MEMBER", obj)
        if key in LEASE_KEYS or key == "ID":
            return self.ph("LEASE", obj)
        if key in RAFT_KEYS:
            return "<RAFT>"
        if key in DBSIZE_KEYS:
            return "<DBSIZE>"
        if key == "ttl" and obj >= 0:
            ttls.append(obj)
            return "<TTL~>"
        return obj
