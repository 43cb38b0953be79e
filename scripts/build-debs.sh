#!/usr/bin/env bash
# Builds the Debian packages, into target/debian/ (or --out DIR):
#   pgraft_<version>_<arch>.deb                 pgraftd, a systemd unit (pgraft.service) reading
#                                               /etc/default/pgraft (ETCD_* variables), the
#                                               `pgraft` system user, /var/lib/pgraft
#   postgresql-15-pgraft_<version>_<arch>.deb   the extension for PostgreSQL 15 (cargo pgrx package)
#
#   scripts/build-debs.sh              release builds
#   scripts/build-debs.sh --debug      debug builds (quick, for tests)
#   scripts/build-debs.sh --no-pgext   only the pgraftd package
# Needs dpkg-deb; for the extension, what ./test.sh's setup installs (cargo-pgrx, PostgreSQL 15
# headers, clang). Checked by compat-tests/test_debs.py.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
pgext=1
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) profile=debug ;;
    --no-pgext) pgext=0 ;;
    --out) out="$2"; shift ;;
    *) echo "build-debs.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="${out:-$target/debian}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
pg_config=/usr/lib/postgresql/15/bin/pg_config
# Debug packages are for tests: quick compression.
compress=()
[ "$profile" = debug ] && compress=(-Zgzip -z1)
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# --- pgraft: pgraftd and its service ---------------------------------------------------------
if [ "$profile" = release ]; then
  cargo build --release --locked --bin pgraftd
else
  cargo build --bin pgraftd
fi
root="$stage/pgraft"
install -D -m 0755 "$target/$profile/pgraftd" "$root/usr/bin/pgraftd"
strip --strip-debug "$root/usr/bin/pgraftd"
install -D -m 0644 packaging/deb/pgraft.service "$root/lib/systemd/system/pgraft.service"
install -D -m 0644 packaging/deb/default "$root/etc/default/pgraft"
install -D -m 0644 LICENSE "$root/usr/share/doc/pgraft/copyright"
install -D -m 0644 README.md "$root/usr/share/doc/pgraft/README.md"
install -d "$root/DEBIAN"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
echo /etc/default/pgraft > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: pgraft
Version: $version
Architecture: $arch
Maintainer: pgraft developers <pgraft@localhost>
Section: database
Priority: optional
Depends: adduser, libc6
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: etcd v3 compatible, Raft-replicated key-value store
 pgraftd speaks etcd's v3 API (gRPC and the JSON gateway) and takes etcd's flags and
 ETCD_* variables, so it runs wherever etcd runs; Patroni can use it as its DCS.
 The pgraft service reads its settings from /etc/default/pgraft.
CONTROL
dpkg-deb ${compress[@]+"${compress[@]}"} --root-owner-group --build "$root" "$out/pgraft_${version}_${arch}.deb" >/dev/null
echo "$out/pgraft_${version}_${arch}.deb"

# --- postgresql-15-pgraft: the extension -------------------------------------------------------
if [ "$pgext" = 1 ]; then
  pkgdir="$stage/pgrx-package"
  flags=()
  [ "$profile" = debug ] && flags+=(--debug)
  (cd pgext && cargo pgrx package --pg-config "$pg_config" --out-dir "$pkgdir" ${flags[@]+"${flags[@]}"}) >/dev/null
  root="$stage/pgext"
  mkdir -p "$root"
  cp -a "$pkgdir/." "$root/"
  install -D -m 0644 LICENSE "$root/usr/share/doc/postgresql-15-pgraft/copyright"
  install -D -m 0644 pgext/README.md "$root/usr/share/doc/postgresql-15-pgraft/README.md"
  install -d "$root/DEBIAN"
  cat > "$root/DEBIAN/control" <<CONTROL
Package: postgresql-15-pgraft
Version: $version
Architecture: $arch
Maintainer: pgraft developers <pgraft@localhost>
Section: database
Priority: optional
Depends: postgresql-15, libc6
Installed-Size: $(du -sk "$root/usr" | cut -f1)
Description: pgraft extension for PostgreSQL 15
 A PostgreSQL extension that hosts a pgraft member (member mode) or reaches a pgraft or
 etcd cluster (client mode), with pgraft_* SQL functions over the replicated key-value state.
CONTROL
  dpkg-deb ${compress[@]+"${compress[@]}"} --root-owner-group --build "$root" "$out/postgresql-15-pgraft_${version}_${arch}.deb" >/dev/null
  echo "$out/postgresql-15-pgraft_${version}_${arch}.deb"
fi
