#!/usr/bin/env bash
# Print the directory holding the Prometheus Operator's CRDs (monitoring.coreos.com: PodMonitor,
# PrometheusRule, ...), so the chart tests can have the test kube-apiserver validate the chart's monitoring
# objects against the real schemas. They come from the prometheus-operator Go module (its
# example/prometheus-operator-crd/), fetched once from the Go module proxy with the machine's Go into the
# same module cache as scripts/envtest.sh (~4 MB), never into git.
set -euo pipefail

VERSION="${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
CACHE_ROOT="${TOKENBUDGET_CACHE:-$HOME/.cache/tokenbudget}"
export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOFLAGS=-mod=mod
log() { echo "prometheus-operator-crds: $*" >&2; }

command -v go >/dev/null || { log "needs Go (1.24+) on PATH"; exit 1; }
dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$VERSION" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or ""); sys.exit(1 if d.get("Error") else 0)')
found="$dir/example/prometheus-operator-crd"
[ -f "$found/monitoring.coreos.com_podmonitors.yaml" ] || { log "no CRDs in $found"; exit 1; }
echo "$found"
