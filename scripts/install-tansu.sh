#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker used by the Kafka integration tests
# and benchmarks (tests/kafka_infra.rs, benches/bare_consumer.rs).
#
# Idempotent: does nothing when the binary is already installed and runs.
# Installs into ${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/tansu and prints
# the binary's path on its last line. The tests find it there, or wherever
# TANSU_BIN points.
set -euo pipefail

VERSION=0.6.0
TOOLS="${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}"
ROOT="$TOOLS/tansu"
BIN="$ROOT/bin/tansu"

works() {
    [ -x "$BIN" ] && { "$BIN" --version >/dev/null 2>&1 || "$BIN" --help >/dev/null 2>&1; }
}

if works; then
    echo "tansu already installed: $("$BIN" --version 2>/dev/null || echo "$VERSION")" >&2
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "install-tansu.sh: cargo is needed to build tansu" >&2
        exit 1
    fi
    echo "Building tansu $VERSION from crates.io into $ROOT (takes about 10 minutes on 2 cores)..." >&2
    mkdir -p "$ROOT"
    cargo install tansu --version "$VERSION" --locked --features dynostore,libsql --root "$ROOT"
    if ! works; then
        echo "install-tansu.sh: $BIN was built but does not run" >&2
        exit 1
    fi
fi
echo "$BIN"
