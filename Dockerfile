# Two images from one file:
#   docker build -t pgraft/pgraftd .                            pgraftd, the etcd-compatible server
#   docker build --target postgres -t pgraft/postgres-pgraft .   PostgreSQL 15 with the pgraft extension
# pgraftd is configured as etcd is: every flag can be given as an ETCD_* environment variable.
# Checked by compat-tests/test_packaging.py (hadolint).

# ---- build: pgraftd ----------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgraftd \
 && strip target/release/pgraftd

# ---- build: the extension, packaged by cargo-pgrx for the system PostgreSQL 15 ----------------
FROM rust:1.95-bookworm AS pgext-build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-server-dev-15 libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-pgrx --version 0.18.0 --locked \
 && cargo pgrx init --pg15 /usr/lib/postgresql/15/bin/pg_config
WORKDIR /src
COPY . .
WORKDIR /src/pgext
RUN cargo pgrx package --pg-config /usr/lib/postgresql/15/bin/pg_config --out-dir /pkg

# ---- image: PostgreSQL 15 with the extension (member or client mode, see pgext/README.md) -----
FROM postgres:15-bookworm AS postgres
COPY --from=pgext-build /pkg/usr/ /usr/
# The extension's member mode needs shared_preload_libraries = 'pgraft' and pgraft.* settings:
# pass them as `postgres -c ...` arguments or in postgresql.conf.

# ---- image: pgraftd (the default target) --------------------------------------------------------
FROM debian:bookworm-slim AS pgraftd
# curl only for the HEALTHCHECK.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/pgraft --create-home pgraft
COPY --from=build /src/target/release/pgraftd /usr/local/bin/pgraftd
USER 10001
VOLUME /var/lib/pgraft
# The rest (ETCD_INITIAL_CLUSTER, ETCD_ADVERTISE_CLIENT_URLS, ...) as for etcd's image.
ENV ETCD_DATA_DIR=/var/lib/pgraft/data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380
EXPOSE 2379 2380
# /health answers 200 while the member has a leader and no alarm (etcd's check).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:2379/health"]
ENTRYPOINT ["/usr/local/bin/pgraftd"]
