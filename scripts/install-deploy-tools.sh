#!/usr/bin/env bash
# Installs the tools the deployment tests (tests/deploy_chart.rs,
# tests/deploy_metrics.rs) need, if they are missing:
#   - helm (v4.3.2, built from its Go module with `go install`; v3.21.4 if
#     v4 does not build): lints and renders the chart in helm/smsvoice-pipeline.
#   - promtool (Prometheus 2.42.0, Debian bookworm's package `prometheus`,
#     downloaded with `apt-get download` and unpacked with `dpkg-deb -x`:
#     only the promtool binary is taken, nothing is installed or started;
#     without apt-get: `go install` of Prometheus v0.316.0's promtool).
#   - kubernetes-validate 1.37.x (PyPI): validates rendered objects against
#     the Kubernetes OpenAPI schemas.
#   - the prometheus-operator CRDs of ServiceMonitor and PrometheusRule
#     (v0.85.0, from the Go module's example/prometheus-operator-crd, fetched
#     with `go mod download`), copied to $TOOLS/prometheus-operator-crds-v0.85.0:
#     tests/deploy_chart.rs validates those kinds against their openAPIV3Schema.
# helm and promtool go into ${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}/bin,
# which is looked at first (then PATH). Idempotent: a tool that is present and
# runs is left alone. Prints where each tool is on its last four lines.
# Called by scripts/test.sh (and so by CI); safe to run by hand.
set -euo pipefail

TOOLS="${SMSVOICE_TOOLS:-$HOME/.cache/smsvoice-tools}"
BIN="$TOOLS/bin"
PYTHON="${PYTHON:-python3}"
HELM_V4="helm.sh/helm/v4/cmd/helm@v4.3.2"
HELM_V3="helm.sh/helm/v3/cmd/helm@v3.21.4"
PROMTOOL_GO="github.com/prometheus/prometheus/cmd/promtool@v0.316.0"
PROM_OPERATOR_VERSION=v0.85.0
CRDS="$TOOLS/prometheus-operator-crds-$PROM_OPERATOR_VERSION"
KV_SPEC='kubernetes-validate>=1.37,<1.38'
mkdir -p "$BIN"

log() { echo "install-deploy-tools: $*" >&2; }

# The first of the cache and PATH holding a runnable $1 (checked with "$2").
find_tool() {
    local name="$1" check="$2"
    if [ -x "$BIN/$name" ] && "$BIN/$name" $check >/dev/null 2>&1; then
        echo "$BIN/$name"
    elif command -v "$name" >/dev/null 2>&1 && "$name" $check >/dev/null 2>&1; then
        command -v "$name"
    fi
}

go_bin() {
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [ -x /usr/local/go/bin/go ]; then
        echo /usr/local/go/bin/go
    fi
}

# --- helm -------------------------------------------------------------------
HELM="$(find_tool helm version)"
if [ -z "$HELM" ]; then
    GO="$(go_bin)"
    if [ -z "$GO" ]; then
        log "helm is missing and Go is not installed (needed to build helm)"
        exit 1
    fi
    log "building helm: go install $HELM_V4 (a few minutes)"
    if ! GOBIN="$BIN" GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$GO" install "$HELM_V4" >&2; then
        log "helm v4 did not build; trying $HELM_V3"
        GOBIN="$BIN" GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$GO" install "$HELM_V3" >&2
    fi
    HELM="$(find_tool helm version)"
    [ -n "$HELM" ] || { log "helm was built but does not run"; exit 1; }
fi

# --- promtool ---------------------------------------------------------------
PROMTOOL="$(find_tool promtool --version)"
if [ -z "$PROMTOOL" ]; then
    done_promtool=false
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
        log "promtool: apt-get download prometheus (Debian's package), taking usr/bin/promtool only"
        work="$(mktemp -d)"
        if (cd "$work" && { apt-get download prometheus >&2 ||
                              { apt-get update >&2 && apt-get download prometheus >&2; }; }); then
            dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
            install -m 0755 "$work/x/usr/bin/promtool" "$BIN/promtool"
            done_promtool=true
        fi
        rm -rf "$work"
    fi
    if ! $done_promtool; then
        GO="$(go_bin)"
        [ -n "$GO" ] || { log "promtool: neither apt-get nor Go is available"; exit 1; }
        log "promtool: go install $PROMTOOL_GO (several minutes)"
        GOBIN="$BIN" GOFLAGS=-buildvcs=false CGO_ENABLED=0 "$GO" install "$PROMTOOL_GO" >&2
    fi
    PROMTOOL="$(find_tool promtool --version)"
    [ -n "$PROMTOOL" ] || { log "promtool was installed but does not run"; exit 1; }
fi

# --- kubernetes-validate ----------------------------------------------------
kv_ok() {
    "$PYTHON" - <<'PY' >/dev/null 2>&1
import importlib.metadata as m
v = tuple(int(x) for x in m.version("kubernetes-validate").split(".")[:2])
raise SystemExit(0 if v == (1, 37) else 1)
PY
}
if ! kv_ok; then
    log "installing $KV_SPEC"
    PIP=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input
         --root-user-action=ignore)
    # A system Python marked "externally managed" (PEP 668) refuses plain
    # installs; retry with the override there (CI machines are throwaway).
    if ! "${PIP[@]}" "$KV_SPEC"; then
        log "retrying with --break-system-packages"
        "${PIP[@]}" --break-system-packages "$KV_SPEC"
    fi
    kv_ok || { log "kubernetes-validate 1.37.x still not importable"; exit 1; }
fi
KV="$("$PYTHON" -c 'import shutil, sys; print(shutil.which("kubernetes-validate") or sys.executable + " -m kubernetes_validate")')"

# --- prometheus-operator CRDs -------------------------------------------------
if [ ! -s "$CRDS/monitoring.coreos.com_servicemonitors.yaml" ] ||
   [ ! -s "$CRDS/monitoring.coreos.com_prometheusrules.yaml" ]; then
    GO="$(go_bin)"
    [ -n "$GO" ] || { log "the prometheus-operator CRDs need Go (go mod download)"; exit 1; }
    log "prometheus-operator $PROM_OPERATOR_VERSION CRDs: go mod download"
    work="$(mktemp -d)"
    dir="$(cd "$work" && GOFLAGS=-mod=mod "$GO" mod download -json \
            "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION" |
           "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    rm -rf "$work" "$CRDS.tmp"
    mkdir -p "$CRDS.tmp"
    for kind in servicemonitors prometheusrules; do
        cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$CRDS.tmp/"
    done
    chmod u+w "$CRDS.tmp"/*
    rm -rf "$CRDS"
    mv "$CRDS.tmp" "$CRDS"
fi

echo "helm: $HELM ($("$HELM" version --short 2>/dev/null || true))"
echo "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n1))"
echo "kubernetes-validate: $KV"
echo "prometheus-operator CRDs: $CRDS"
