#!/usr/bin/env bash
# Runs the whole test suite: unit tests, property tests, and the integration
# tests against real parts (Apache Kafka, an S3-compatible server, DuckDB),
# after installing the tools those need when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-tools.sh      # moto[server] (S3-compatible server), duckdb
bash scripts/install-kafka.sh >/dev/null # Apache Kafka broker from Maven Central (cached under ~/.cache/smsvoice-tools)
bash scripts/install-deploy-tools.sh    # helm, promtool, kubernetes-validate, prometheus-operator CRDs (deployment tests)
cargo test --locked --all-features "$@"
