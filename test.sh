#!/usr/bin/env bash
# Run all tests: the Rust build and tests, then the etcd compatibility tests in compat-tests/.
#
#   ./test.sh                 cargo build --bins, cargo test, pytest compat-tests
#   ./test.sh --lint          also cargo fmt --check and cargo clippy (before the tests)
#   ./test.sh --no-cargo      only the compat tests (uses the pgraftd binary already built)
#   ./test.sh -- ARGS...      extra arguments for pytest (e.g. -- -k crash -x)
#
# Needs: /usr/bin/etcd and /usr/bin/etcdctl (apt-get install -y etcd-server etcd-client),
# and pytest, from .venv (python3 -m venv .venv && .venv/bin/pip install -r
# compat-tests/requirements.txt) or from the python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")"

lint=0
cargo=1
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lint) lint=1 ;;
    --no-cargo) cargo=0 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { echo; echo "==== [test.sh] $* ===="; }

if [ "$lint" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --all-targets -- -D warnings
fi

if [ "$cargo" = 1 ]; then
  step "cargo build --bins"
  cargo build --bins
  step "cargo test"
  cargo test
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
