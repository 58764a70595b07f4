#!/usr/bin/env bash
# Obtain kube-apiserver, etcd, kubectl, kube-controller-manager, kube-scheduler and kubelet for the test
# control plane and its real node.
#
# No registry ships these binaries, but the Go module proxy ships their source, so we build them
# once with the machine's Go and cache them outside git, keyed by version. People who already have
# envtest binaries skip the build: KUBEBUILDER_ASSETS, or matching binaries on PATH, win.
#
# Prints the directory holding the binaries on its last line of stdout; progress goes to stderr.
# Cold build here: about 10 minutes on 2 cores; warm (cache kept): a few seconds.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.0}"
BINARIES=(kube-apiserver kubectl etcd kube-controller-manager kube-scheduler kubelet)
CACHE_ROOT="${TOKENBUDGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}"
OUT="$CACHE_ROOT/k8s/$K8S_VERSION"

log() { echo "envtest: $*" >&2; }

have_all() {
  local dir=$1
  for b in "${BINARIES[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi

if have_all "$OUT"; then
  echo "$OUT"; exit 0
fi

# Binaries on PATH at the pinned version: link them into the cache dir so callers see one folder.
if command -v kube-apiserver >/dev/null && command -v etcd >/dev/null && command -v kubectl >/dev/null \
   && command -v kube-controller-manager >/dev/null && command -v kube-scheduler >/dev/null \
   && command -v kubelet >/dev/null \
   && kube-apiserver --version 2>/dev/null | grep -q "$K8S_VERSION"; then
  mkdir -p "$OUT"
  for b in "${BINARIES[@]}"; do ln -sf "$(command -v "$b")" "$OUT/$b"; done
  log "using binaries on PATH"
  echo "$OUT"; exit 0
fi

# One Go build at a time per cache (helm.sh takes the same lock): a second caller (another test run, another
# worktree) waits for the first, then finds its binaries. Two concurrent builds share GOCACHE, and each
# one's final `go clean -cache` would pull the build cache from under the other.
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.go-build.lock"
if ! flock -n 9; then
  log "another build holds $CACHE_ROOT/.go-build.lock: waiting for it"
  flock 9
fi
if have_all "$OUT"; then
  echo "$OUT"; exit 0
fi

command -v go >/dev/null || { log "Go is required to build the control plane (or set KUBEBUILDER_ASSETS)"; exit 1; }

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
WORK="$CACHE_ROOT/k8s/build-$K8S_VERSION"
mkdir -p "$WORK" "$OUT.tmp"
cd "$WORK"

start=$(date +%s)
log "building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION from the Go module proxy (first time: ~10 min)"
k8s_gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
minor="v0.${K8S_VERSION#v1.}"

{
  echo "module tokenbudget.local/envtest"
  echo
  echo "go 1.24"
  echo
  echo "require ("
  echo "  k8s.io/kubernetes $K8S_VERSION"
  echo "  go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo ")"
  echo
  # The kubernetes module replaces every staging module with ./staging/...; pin each to its release.
  grep -E '^\s*k8s.io/[^ ]+ => \./staging/' "$k8s_gomod" | awk -v v="$minor" '{print "replace " $1 " => " $1 " " v}'
} > go.mod

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO

go mod tidy >&2
major=1; kminor="${K8S_VERSION#v1.}"; kminor="${kminor%%.*}"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$major -X k8s.io/component-base/version.gitMinor=$kminor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
for cmd in kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet; do
  log "go build $cmd"
  go build -ldflags "$ldflags" -o "$OUT.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
done
log "go build etcd"
go build -ldflags "-s -w" -o "$OUT.tmp/etcd" go.etcd.io/etcd/server/v3 >&2

rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
# The build cache (~3 GB) is only needed to rebuild; the binaries are what we keep.
if [ -z "${TOKENBUDGET_KEEP_GOCACHE:-}" ]; then go clean -cache >&2 || true; fi
log "done in $(( $(date +%s) - start )) s; $(du -sh "$OUT" | cut -f1) in $OUT"
echo "$OUT"
