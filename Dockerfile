# syntax=docker/dockerfile:1
# Courier's image: both binaries, `courier-api` (the default entrypoint; `serve`
# unless told `migrate`, `create-key`, ...) and `courier-worker` (run it by
# overriding the entrypoint/command, as the Helm chart and docker-compose.yml do).
#
#   docker build -t courier .
#
# Builds with the committed Cargo.lock (--locked). TLS is rustls throughout, so
# neither stage needs OpenSSL; ring compiles with the builder's C compiler.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The caches speed up rebuilds; the binaries are copied out of the cached
# target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p courier-api -p courier-worker \
    && install -D -m 0755 target/release/courier-api /out/courier-api \
    && install -D -m 0755 target/release/courier-worker /out/courier-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 courier \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin courier
COPY --from=builder /out/courier-api /out/courier-worker /usr/local/bin/
# Product files with `downloads.storage = local` (mount a volume here, or use s3).
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/courier/files
VOLUME /var/lib/courier/files
# Listen beyond the container's loopback: the API on 8080, the worker's
# /healthz, /readyz and /metrics on 9091.
ENV COURIER__API__BIND=0.0.0.0:8080 \
    COURIER__WORKER__HTTP_BIND=0.0.0.0:9091 \
    COURIER__DOWNLOADS__LOCAL_DIR=/var/lib/courier/files
USER 10001:10001
EXPOSE 8080 9091
STOPSIGNAL SIGTERM
ENTRYPOINT ["courier-api"]
CMD ["serve"]
