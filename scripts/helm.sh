#!/usr/bin/env bash
# Obtain the helm binary the chart tests render and lint with (tests/chart/test_chart.py, make deploy).
#
# No registry we can reach ships helm, but the Go module proxy ships its source (helm has no `replace`
# lines, so a plain `go install` works): build it once with the machine's Go and cache it outside git,
# keyed by version. People who already have helm skip the build: HELM (a path to a binary), or helm of
# the pinned version on PATH, wins.
#
# Prints the binary's path on its last line of stdout; progress goes to stderr.
# Cold build here (empty Go caches): 78 s on 2 cores, 76 MB; later runs reuse the cached binary.
set -euo pipefail

# Helm 3: what Argo CD renders charts with, and what most platform teams run. HELM_VERSION=v4.x.y works too.
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE_ROOT="${TOKENBUDGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}"
OUT="$CACHE_ROOT/helm/$HELM_VERSION"

log() { echo "helm: $*" >&2; }

if [ -n "${HELM:-}" ]; then
  if [ -f "$HELM" ] && [ -x "$HELM" ]; then
    log "using HELM=$HELM"
    echo "$HELM"; exit 0
  fi
  log "HELM=$HELM is not an executable file; ignoring it"
fi

if [ -x "$OUT/helm" ]; then
  echo "$OUT/helm"; exit 0
fi

# helm on PATH at the pinned version: link it into the cache dir so callers see one place.
if command -v helm >/dev/null && [ "$(helm version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
  mkdir -p "$OUT"
  ln -sf "$(command -v helm)" "$OUT/helm"
  log "using helm on PATH"
  echo "$OUT/helm"; exit 0
fi

# One Go build at a time per cache (see envtest.sh: they share GOCACHE and each cleans it at the end).
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.go-build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE_ROOT/.go-build.lock: waiting for it"
  flock 9
fi
if [ -x "$OUT/helm" ]; then
  echo "$OUT/helm"; exit 0
fi

command -v go >/dev/null || { log "Go is required to build helm (or set HELM)"; exit 1; }

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"

start=$(date +%s)
log "building helm $HELM_VERSION from the Go module proxy (first time: ~1.5 min)"
major="${HELM_VERSION%%.*}"
# Stamp the version (else `helm version` says v3.x-dev / v4.x-dev), strip symbols like envtest.sh does.
GOBIN="$OUT.tmp" go install -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" >&2
got="$("$OUT.tmp/helm" version --template '{{.Version}}')"
[ "$got" = "$HELM_VERSION" ] || { log "built helm reports $got, not $HELM_VERSION"; exit 1; }

rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
# The build cache (~1 GB) is only needed to rebuild; the binary is what we keep.
if [ -z "${TOKENBUDGET_KEEP_GOCACHE:-}" ]; then go clean -cache >&2 || true; fi
log "done in $(( $(date +%s) - start )) s; $(du -sh "$OUT" | cut -f1) in $OUT"
echo "$OUT/helm"
