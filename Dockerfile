# syntax=docker/dockerfile:1
# The smsvoice image: the stripped release binary on Debian bookworm slim,
# running as the non-root user 65532 (the Helm chart's securityContext).
#
#   docker build -t smsvoice-pipeline:0.1.0 .
#   buildah bud -t smsvoice-pipeline:0.1.0 .     # daemonless
#
# Build stage: rdkafka's default build (bundled librdkafka through its
# configure script, linked to the system OpenSSL and zlib; "ssl" feature),
# aws-lc-sys (C and assembly; cmake for its CMake builder). The release
# profile of Cargo.toml keeps debug info for profiling; the image's binary
# is built without it and stripped (273 MiB -> about 30 MiB).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything cargo reads to build the binary (benches: declared targets of
# Cargo.toml; config/ and samples/: embedded with include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY samples ./samples
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true \
    CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin smsvoice \
 && install -D -m 0755 target/release/smsvoice /out/smsvoice \
 && /out/smsvoice --version

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim AS runtime
# libssl3 (librdkafka's TLS), CA certificates (MSK's public CA, S3),
# zlib1g and libgcc-s1 come with the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/smsvoice /usr/local/bin/smsvoice
# A config file and secrets are mounted at run time (the Helm chart mounts
# /etc/smsvoice/config.toml); without one, `smsvoice run` needs --config.
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/smsvoice"]
CMD ["run", "--config", "/etc/smsvoice/config.toml"]
