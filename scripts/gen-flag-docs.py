#!/usr/bin/env python3
"""Writes docs/src/flags.md from `pgraftd --help`, so that the flag reference is the parser's
own: every flag, its ETCD_* variable, its default and its help text. compat-tests/test_docs.py
fails when the committed page differs from what this makes.

    scripts/gen-flag-docs.py [PGRAFTD] [--check]
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "src" / "flags.md"

HEAD = """# pgraftd flags

pgraftd takes etcd's flags, and each can also be given as its `ETCD_*` environment variable
(`--data-dir` = `ETCD_DATA_DIR`), so it drops in wherever etcd runs. This page is generated from
`pgraftd --help` by `scripts/gen-flag-docs.py` (a test checks it is current).

| flag | environment | default | meaning |
|---|---|---|---|
"""


def parse(help_text: str) -> list[tuple[str, str, str, str]]:
    rows = []
    lines = help_text.splitlines()
    i = 0
    while i < len(lines):
        # `--flag <VALUE>`, `--flag [<VALUE>]`, or a Go-style bool's `--flag[=<BOOL>]`.
        m = re.match(r"^\s+(?:-\w, )?(--[a-z0-9-]+)(?: [\[<].*|\[=<.*)?$", lines[i])
        if not m:
            i += 1
            continue
        flag = m.group(1)
        desc_lines = []
        i += 1
        while i < len(lines) and lines[i].startswith("          "):
            desc_lines.append(lines[i].strip())
            i += 1
        desc = " ".join(desc_lines)
        # A secret's variable is printed without its value (`[env: NAME]`).
        env = re.search(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]", desc)
        default = re.search(r"\[default: ([^\]]*)\]", desc)
        possible = re.search(r"\[possible values: ([^\]]*)\]", desc)
        text = re.sub(r"\s*\[(env|default|possible values): [^\]]*\]", "", desc).strip()
        if possible:
            text += f" (one of: {possible.group(1)})"
        if flag in ("--help", "--version"):
            continue
        rows.append((flag, env.group(1) if env else "", default.group(1) if default else "",
                     text))
    return rows


def render(rows) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    body = "".join(f"| `{f}` | {f'`{e}`' if e else ''} | {f'`{cell(d)}`' if d else ''} | "
                   f"{cell(t)} |\n" for f, e, d, t in rows)
    return HEAD + body


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    binary = args[0] if args else str(REPO / "target" / "debug" / "pgraftd")
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
    page = render(parse(out))
    if check:
        if PAGE.read_text() != page:
            print(f"{PAGE} is out of date: run scripts/gen-flag-docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
