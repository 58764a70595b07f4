#!/usr/bin/env bash
# Obtain the helm binary the chart tests render with (tests/test_chart.py).
#
# No registry we can reach ships helm, but the Go module proxy ships its source: build it once with the
# machine's Go, cached outside git and keyed by version. HELM (a path), or helm of that version on PATH,
# wins. Prints the binary's path on its last line of stdout; progress goes to stderr.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.1}"
CACHE_ROOT="${TOKENBUDGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}"
OUT="$CACHE_ROOT/helm/$HELM_VERSION"

log() { echo "helm: $*" >&2; }

if [ -n "${HELM:-}" ] && [ -x "$HELM" ]; then
  echo "$HELM"; exit 0
fi
if [ -x "$OUT/helm" ]; then
  echo "$OUT/helm"; exit 0
fi
if command -v helm >/dev/null && helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  command -v helm; exit 0
fi

command -v go >/dev/null || { log "Go is required to build helm (or set HELM)"; exit 1; }
export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
mkdir -p "$OUT.tmp"
start=$(date +%s)
log "building helm $HELM_VERSION from the Go module proxy (first time only)"
major="${HELM_VERSION%%.*}"
GOBIN="$OUT.tmp" go install -ldflags "-X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" >&2
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "built in $(( $(date +%s) - start )) s"
echo "$OUT/helm"
