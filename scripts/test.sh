#!/usr/bin/env bash
# Runs the whole test suite: unit tests, property tests, and the integration
# tests against real parts (S3-compatible server, DuckDB), after installing
# the tools those need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f scripts/install-test-tools.sh ]; then
  bash scripts/install-test-tools.sh
fi
cargo test --locked --all-features "$@"
