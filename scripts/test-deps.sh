#!/usr/bin/env bash
# Installs what ./test.sh needs and is missing, and nothing else: re-running it on a machine
# that has everything installs nothing (each step checks first). Called by ./test.sh (skip it
# with --no-setup); it can also be run alone: `bash scripts/test-deps.sh [--no-pgext]`.
#
# What it makes sure of, on Debian 12 (as root, or a user with sudo):
#   Debian packages  etcd-server etcd-client (the differential tests' etcd 3.4.23 and etcdctl),
#                    python3-venv, postgresql-15 (Patroni and extension tests); for the
#                    extension also postgresql-server-dev-15, libclang-dev, clang (pgrx runs
#                    bindgen over the server headers) and sudo (`cargo pgrx test --runas`);
#                    chromium and chromium-driver (the dashboard's browser test)
#   cargo-pgrx       0.18.0, the extension's build tool (must match pgext's pgrx =0.18.0),
#                    and pgrx registered with the system PostgreSQL 15 (no download, no initdb)
#   .venv            a virtualenv with compat-tests/requirements.txt (pytest, etcd3gw, Patroni,
#                    Schemathesis, Selenium)
set -euo pipefail
cd "$(dirname "$0")/.."

pgext=1
for a in "$@"; do
  case "$a" in
    --no-pgext) pgext=0 ;;
    *) echo "test-deps.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

say() { echo "[setup] $*"; }
export DEBIAN_FRONTEND=noninteractive

as_root=()
if [ "$(id -u)" != 0 ]; then
  as_root=(sudo -n)
fi

# Debian packages: install only the missing ones (one apt-get update, only when needed).
# gdb: a scale-test member that stops answering gets its threads dumped into the failure.
# libfaketime: the robustness runs' clock-jump fault moves one member's wall clock.
# chromium, chromium-driver: the dashboard's browser test (compat-tests/test_admin.py).
pkgs=(etcd-server etcd-client python3-venv postgresql-15 gdb libfaketime chromium chromium-driver)
if [ "$pgext" = 1 ]; then
  pkgs+=(postgresql-server-dev-15 libclang-dev clang sudo)
fi
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "test-deps.sh: missing ${missing[*]} and no apt-get: install them by hand" >&2
    exit 1
  fi
  say "apt-get install ${missing[*]}"
  "${as_root[@]}" apt-get update -q </dev/null
  "${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
  say "Debian packages: all present"
fi

# cargo-pgrx, and pgrx's registration of the system PostgreSQL 15.
if [ "$pgext" = 1 ]; then
  if ! cargo pgrx --version 2>/dev/null | grep -q ' 0\.18\.0'; then
    say "cargo install cargo-pgrx 0.18.0 (a few minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked </dev/null
  else
    say "cargo-pgrx 0.18.0: present"
  fi
  pg_config=/usr/lib/postgresql/15/bin/pg_config
  pgrx_config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
  if ! grep -qs "pg15 = \"$pg_config\"" "$pgrx_config"; then
    say "cargo pgrx init --pg15 $pg_config"
    cargo pgrx init --pg15 "$pg_config" </dev/null
  fi
fi

# The virtualenv. test_patroni.py runs Patroni (and so PostgreSQL) as the `postgres` OS user,
# which must be able to enter every directory above the virtualenv and above its interpreter.
# This clone may sit in a directory `postgres` cannot enter, and the python3 on PATH may be a
# build under /root. So, as root, the virtualenv is made with Debian's /usr/bin/python3 in
# /opt/pgraft-venv (override: PGRAFT_VENV), made world-readable, and .venv is a symlink to it.
# As another user, .venv is a plain virtualenv here. See compat-tests/README.md, "Patroni".
if [ ! -e .venv ]; then
  if [ "$(id -u)" = 0 ]; then
    venv="${PGRAFT_VENV:-/opt/pgraft-venv}"
    if [ -e "$venv" ] && ! grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg" 2>/dev/null; then
      if [ -f "$venv/pyvenv.cfg" ]; then
        rm -rf "$venv" # a virtualenv on another interpreter: remake it
      else
        echo "test-deps.sh: $venv exists and is not a virtualenv; set PGRAFT_VENV" >&2
        exit 1
      fi
    fi
    if [ ! -x "$venv/bin/python" ]; then
      mkdir -p "$(dirname "$venv")"
      say "virtualenv $venv"
      /usr/bin/python3 -m venv "$venv"
    fi
    ln -s "$venv" .venv
  else
    say "virtualenv .venv"
    /usr/bin/python3 -m venv .venv
  fi
fi
venv_real="$(readlink -f .venv)"
# pip runs through the real path, which it writes into the scripts' shebangs.
if ! "$venv_real/bin/python" - compat-tests/requirements.txt <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    r = Requirement(line)
    try:
        ok &= r.specifier.contains(version(r.name), prereleases=True)
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PY
  say "pip install -r compat-tests/requirements.txt"
  "$venv_real/bin/python" -m pip install -q --disable-pip-version-check \
    -r compat-tests/requirements.txt </dev/null
else
  say "python packages: all present"
fi
if [ "$(id -u)" = 0 ]; then
  chmod -R a+rX "$venv_real"
fi
say "ready: $(etcd --version | sed -n 1p); $("$venv_real/bin/python" -m pytest --version 2>&1)"
