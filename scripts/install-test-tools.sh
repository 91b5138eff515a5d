#!/usr/bin/env bash
# Installs the tools the integration tests need, if they are missing:
#   - moto[server] 5.1.x: a real S3-compatible HTTP server, run by
#     tests/support/s3_server.rs on 127.0.0.1. 5.1.x because moto 5.2.0 to
#     (at least) 5.2.5 answer CompleteMultipartUpload with a
#     <CompleteMultipartUploadResponse> root that the AWS SDK for Rust refuses
#     (moto issue #10055); an installed 5.2.x is replaced.
#   - duckdb: reads the archived Parquet files back in tests.
#   - prometheus_client: its text-format parser reads /metrics in the HTTP
#     tests (the real Prometheus exposition parser of the Python client).
# Idempotent: does nothing when all are present in a usable version.
# Called by CI (.ci/run) on a fresh machine; safe to run by hand.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install-test-tools: $PYTHON not found; install Python 3 first" >&2
    exit 1
fi

# Exit status 0 when moto (with its server extras) and duckdb import and
# moto is a 5.x release below 5.2.
check() {
    "$PYTHON" - <<'PY' >/dev/null 2>&1
import moto, moto.server, flask, flask_cors, duckdb
import prometheus_client.parser
major, minor = (int(x) for x in moto.__version__.split(".")[:2])
raise SystemExit(0 if (major, minor) >= (5, 0) and (major, minor) < (5, 2) else 1)
PY
}

if check; then
    echo "install-test-tools: moto[server], duckdb and prometheus_client already present"
    exit 0
fi

echo "install-test-tools: installing moto[server] 5.1.x, duckdb and prometheus_client"
PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input
     --root-user-action=ignore)
PKGS=('moto[server]>=5.1,<5.2' duckdb prometheus_client)
# A system Python marked "externally managed" (PEP 668) refuses plain
# installs; retry with the override there (CI machines are throwaway).
if ! "${PIP[@]}" "${PKGS[@]}"; then
    echo "install-test-tools: retrying with --break-system-packages" >&2
    "${PIP[@]}" --break-system-packages "${PKGS[@]}"
fi

if ! check; then
    echo "install-test-tools: moto[server] 5.1.x / duckdb / prometheus_client still not importable" >&2
    exit 1
fi
echo "install-test-tools: done"
