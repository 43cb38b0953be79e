# pgraftd image: build the server in a Rust stage, run it on a slim Debian as a non-root user.
# Configuration is etcd's: every flag can be given as an ETCD_* environment variable.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgraftd

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/pgraft --create-home pgraft
COPY --from=build /src/target/release/pgraftd /usr/local/bin/pgraftd
USER pgraft
VOLUME /var/lib/pgraft
ENV ETCD_DATA_DIR=/var/lib/pgraft/data \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/pgraftd"]
