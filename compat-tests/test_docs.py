"""The documentation in docs/ against the code it describes:

- docs/src/flags.md is what scripts/gen-flag-docs.py makes from `pgraftd --help` (every flag,
  nothing else);
- docs/src/sql.md lists exactly the SQL functions the extension defines (#[pg_extern]);
- docs/src/settings.md lists exactly the `pgraft.*` settings it defines;
- every page is in SUMMARY.md, and every relative link in docs/ points at a file that exists."""

from __future__ import annotations

import re
import subprocess
import sys

from harness import REPO_ROOT, pgraftd_path

DOCS = REPO_ROOT / "docs" / "src"
PGEXT = REPO_ROOT / "pgext" / "src"


def test_flag_reference_is_generated_from_the_parser():
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen-flag-docs.py"),
                        str(pgraftd_path()), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    page = (DOCS / "flags.md").read_text()
    help_text = subprocess.run([str(pgraftd_path()), "--help"], capture_output=True, text=True,
                               timeout=30).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", help_text, re.M))
    flags -= {"--help", "--version"}
    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)`", page, re.M))
    assert flags == documented, (sorted(flags - documented), sorted(documented - flags))


def defined_functions() -> set[str]:
    src = "".join(p.read_text() for p in PGEXT.glob("*.rs") if p.name != "tests.rs")
    return set(re.findall(r"#\[pg_extern[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*fn (pgraft_\w+)", src))


def defined_settings() -> set[str]:
    src = (PGEXT / "settings.rs").read_text()
    # The GUC registrations name each setting as a C string literal.
    return set(re.findall(r'c"(pgraft\.\w+)"', src))


def test_sql_reference_lists_every_function():
    code = defined_functions()
    assert "pgraft_kv_put" in code and len(code) >= 10, code
    page = (DOCS / "sql.md").read_text()
    documented = set(re.findall(r"^\| `(pgraft_\w+)\(", page, re.M))
    assert code == documented, (sorted(code - documented), sorted(documented - code))


def test_settings_reference_lists_every_setting():
    code = defined_settings()
    assert "pgraft.initial_cluster" in code, code
    page = (DOCS / "settings.md").read_text()
    documented = set(re.findall(r"^\| `(pgraft\.\w+)`", page, re.M))
    assert code == documented, (sorted(code - documented), sorted(documented - code))


def test_every_page_is_in_the_summary_and_links_resolve():
    summary = (DOCS / "SUMMARY.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+\.md)\)", summary))
    pages = {p.name for p in DOCS.glob("*.md")} - {"SUMMARY.md"}
    assert pages == linked, (sorted(pages - linked), sorted(linked - pages))
    broken = []
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).resolve().exists():
                broken.append(f"{page.name} -> {target}")
    assert not broken, broken
