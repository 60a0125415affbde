# syntax=docker/dockerfile:1.7
#
# The `firetower` binary in a small image: every role (metastore, distributor, edge,
# dashboard) and every tool (certs, token, api-key, status, publish, config check) is a
# subcommand of it. docs/deployment.md says how the image is run; deploy/ holds the
# compose file and the Kubernetes manifests that use it.
#
#   docker build -t firetower:local .
#   docker run --rm firetower:local config defaults edge
#
# Stage 1 builds with cargo; its registry and target directory live in BuildKit cache
# mounts, so a rebuild after a source change recompiles only what changed and downloads
# nothing again. Stage 2 is debian:bookworm-slim (the same glibc as the builder) with the
# binary alone, run as an unprivileged user. Nothing is fetched at run time.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to resolve it (sim/ and
# benches/ are members), and the edge embeds clients/js/firetower.js and its demo page.
# .dockerignore keeps target/, target-sim/, node_modules, fuzz/ and .git out.
COPY . .
# protobuf is compiled by protox (a crate): no protoc, no system packages beyond the
# image's C compiler (ring). --locked: exactly the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin firetower \
    && install -D -m 0755 target/release/firetower /out/firetower

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed uid/gid (10001), so that Kubernetes' runAsUser/fsGroup and the compose file can
# name it; /var/lib/firetower is the metastore's data (a volume) and the working directory.
RUN groupadd --system --gid 10001 firetower \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/firetower --shell /usr/sbin/nologin firetower \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/firetower \
    && install -d -o 10001 -g 10001 -m 0755 /etc/firetower
COPY --from=build /out/firetower /usr/local/bin/firetower
USER 10001:10001
WORKDIR /var/lib/firetower
# metastore: 7101 gRPC (Raft + API, TLS), 7201 HTTP /metrics /healthz /readyz
# distributor: 6667 gRPC (publish API, TLS), 6666/udp QUIC relay, 6601 HTTP metrics
# edge: 9999 HTTP + WebSocket (/ws, /metrics, /healthz, /readyz, /firetower.js, demo)
# dashboard: 9990 HTTP
EXPOSE 7101 7201 6667 6666/udp 6601 9999 9990
# No HEALTHCHECK: one image serves every role, each on its own port; Kubernetes probes
# and the compose file's healthchecks name the role's /readyz (docs/deployment.md).
ENTRYPOINT ["/usr/local/bin/firetower"]
CMD ["--help"]
