#!/usr/bin/env bash
# Run all tests: the Rust build and tests, then the etcd compatibility tests in compat-tests/.
# First installs whatever the tests need and the machine lacks (scripts/test-deps.sh: Debian
# packages, cargo-pgrx, the .venv); on a machine that has it all, that step installs nothing.
#
#   ./test.sh                 set up, cargo build --bins, cargo test, pytest compat-tests
#   ./test.sh --no-setup      do not install anything (fail where something is missing)
#   ./test.sh --lint          also cargo fmt --check and cargo clippy (before the tests)
#   ./test.sh --no-cargo      only the compat tests (uses the pgraftd binary already built)
#   ./test.sh --no-pgext      skip the PostgreSQL extension (its pgrx tests, its install,
#                             and the compat tests that need it)
#   ./test.sh -- ARGS...      extra arguments for pytest (e.g. -- -k crash -x)
#
# Needs (scripts/test-deps.sh installs them on Debian 12, as root or with sudo): the Rust
# toolchain; /usr/bin/etcd and /usr/bin/etcdctl; for the extension PostgreSQL 15 with its
# server headers, clang, sudo and cargo-pgrx 0.18.0; pytest and the rest of
# compat-tests/requirements.txt in .venv.
set -euo pipefail
cd "$(dirname "$0")"

lint=0
cargo=1
pgext=1
setup=1
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lint) lint=1 ;;
    --no-cargo) cargo=0 ;;
    --no-pgext) pgext=0 ;;
    --no-setup) setup=0 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { echo; echo "==== [test.sh] $* ===="; }

if [ "$setup" = 1 ]; then
  step "set up: install what is missing (scripts/test-deps.sh)"
  if [ "$pgext" = 1 ]; then
    bash scripts/test-deps.sh
  else
    bash scripts/test-deps.sh --no-pgext
  fi
  # Installed by the setup: the dashboard's browser test must run, not skip.
  export PGRAFT_REQUIRE_BROWSER=1
fi

if [ "$lint" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --all-targets -- -D warnings
  if [ "$pgext" = 1 ]; then
    cargo clippy -p pgraft --all-targets -- -D warnings
  fi
fi

if [ "$cargo" = 1 ]; then
  step "cargo build --bins"
  cargo build --bins
  step "cargo test"
  cargo test
fi

if [ "$pgext" = 1 ]; then
  if ! cargo pgrx --version >/dev/null 2>&1; then
    echo "test.sh: cargo-pgrx is not installed (cargo install cargo-pgrx --version 0.18.0 --locked;" >&2
    echo "  cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config), or pass --no-pgext" >&2
    exit 1
  fi
  pg_config=/usr/lib/postgresql/15/bin/pg_config
  if [ "$cargo" = 1 ]; then
    # The test server runs as `postgres` (PostgreSQL refuses root) in a data directory it owns.
    pgdata="${TMPDIR:-/tmp}/pgraft-pgrx-test"
    rm -rf "$pgdata" && mkdir -p "$pgdata"
    runas=()
    if [ "$(id -u)" = 0 ]; then
      chown postgres "$pgdata"
      runas=(--runas postgres)
    fi
    step "pgext: cargo pgrx test pg15"
    (cd pgext && cargo pgrx test pg15 ${runas[@]+"${runas[@]}"} --pgdata "$pgdata")
  fi
  # Last, so that the compat tests get the plain build (pgrx test installs its test build).
  step "pgext: cargo pgrx install (into $($pg_config --pkglibdir))"
  (cd pgext && cargo pgrx install --pg-config "$pg_config")
  export PGRAFT_REQUIRE_PGEXT=1
fi

if [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
if ! "$py" -c 'import pytest' 2>/dev/null; then
  echo "test.sh: pytest is not installed for $py; run:" >&2
  echo "  python3 -m venv .venv && .venv/bin/pip install -r compat-tests/requirements.txt" >&2
  exit 1
fi

export PGRAFTD="${PGRAFTD:-$PWD/${CARGO_TARGET_DIR:-target}/debug/pgraftd}"
step "pytest compat-tests (PGRAFTD=$PGRAFTD)"
"$py" -m pytest -q compat-tests ${pytest_args[@]+"${pytest_args[@]}"}
