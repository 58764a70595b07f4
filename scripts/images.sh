#!/usr/bin/env bash
# Build the OCI image archives without a Docker daemon: debootstrap (Debian's packages) + the project's
# wheels, packed by buildah (`--isolation chroot`, vfs storage under the cache).
#
#   scripts/images.sh [TARGET...]     TARGET: sidecar operator (default), testapp, pause
#
# Writes $IMAGES_OUT (default: $CACHE/images/out/<source key>) /<target>.oci.tar (ref localhost/tokenbudget-<target>:<tag>),
# <target>.cdx.json (CycloneDX SBOM: Debian packages + Python distributions actually installed) and
# <target>.digest (the manifest digest). Prints the output directory on its last stdout line.
#
# images/Containerfile builds the same images with Docker or podman; tests/images/test_containerfile.py keeps
# the two installing the same things (the variables below and its stages).
#
# Reproducible: the base root filesystem is made once per (suite, packages, mirror) and cached; file times
# are clamped to SOURCE_DATE_EPOCH (the commit's time); bytecode is compiled with unchecked hashes; the
# Python wheels are pinned (images/requirements-*.txt) and the project's wheel is built with the same epoch.
# Same cache + same commit -> same digest (seen by building twice; not a test: a rebuild takes minutes).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE_ROOT="${TOKENBUDGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokenbudget}"
OUT_ROOT="$CACHE_ROOT/images/out"
WORK="$CACHE_ROOT/images"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

# ---- what goes in (the Containerfile says the same; a test compares) ----------------------------------------
SUITE=bookworm
RUNTIME_DEBS=(python3 ca-certificates tzdata)  # on top of debootstrap's minbase
SIDECAR_REQ='tokenbudget[sidecar]'
OPERATOR_REQ='tokenbudget[operator]'
TESTAPP_REQ='tokenbudget-testing'              # the stand-in upstream + the official SDKs (tests only)
PIP_VERSION=25.3
CYCLONEDX_VERSION=7.5.0
VENV=/opt/tokenbudget
TIKTOKEN_DIR=/opt/tokenbudget/tiktoken
UID_GID=65532
# --------------------------------------------------------------------------------------------------------------

log() { echo "images: $*" >&2; }
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(sidecar operator)

"$REPO/scripts/realnode-deps.sh"
mkdir -p "$WORK"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
REVISION="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
SOURCE_URL="${TOKENBUDGET_SOURCE_URL:-https://github.com/tokenbudget/tokenbudget}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}"
TAG="${IMAGE_TAG:-$VERSION}"
# What the images are made of, beyond the pins: the commit and any uncommitted change to the shipped code.
SRC_KEY="$( { echo "$REVISION"; git -C "$REPO" diff HEAD -- pyproject.toml api operator sidecar testing 2>/dev/null
  git -C "$REPO" ls-files --others --exclude-standard -- api operator sidecar testing 2>/dev/null \
  | (cd "$REPO" && xargs -r sha256sum); } | sha256sum | cut -c1-16)"
# One output directory per source state: checkouts building at once (other worktrees, CI) never overwrite each
# other's archives; the last few are kept.
OUT="${IMAGES_OUT:-$OUT_ROOT/$SRC_KEY}"
mkdir -p "$OUT"
if [ -z "${IMAGES_OUT:-}" ]; then
  ls -1dt "$OUT_ROOT"/*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf
fi
BUILDAH=(buildah --root "$WORK/containers" --runroot /run/tokenbudget-buildah --storage-driver vfs)

mirror() {
  local uri
  uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)"
  [ -n "$uri" ] || uri="$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1 || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

# The base root filesystem: minbase + RUNTIME_DEBS, trimmed, with the non-root user. Cached as a tarball.
base_rootfs() {
  local m key tarball tmp
  m="$(mirror)"
  key="$(printf '%s %s %s v1' "$SUITE" "${RUNTIME_DEBS[*]}" "$m" | sha256sum | cut -c1-16)"
  tarball="$WORK/rootfs-$SUITE-$key.tar"
  if [ ! -s "$tarball" ]; then
    log "debootstrap $SUITE minbase + ${RUNTIME_DEBS[*]} from $m (first time: ~1.5 min)"
    tmp="$(mktemp -d "$WORK/rootfs.XXXXXX")"
    debootstrap --variant=minbase --include="$(IFS=,; echo "${RUNTIME_DEBS[*]}")" "$SUITE" "$tmp/r" "$m" >&2
    (
      cd "$tmp/r"
      # Caches, logs and docs (copyright files stay: licences), and the things that differ per run.
      rm -rf var/cache/apt/* var/lib/apt/lists/* var/log/* var/cache/ldconfig/aux-cache debootstrap \
        usr/share/man usr/share/info usr/share/locale usr/share/lintian tmp/* run/* var/cache/debconf/*-old
      find usr/share/doc -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
      : > etc/machine-id
      echo "nonroot:x:$UID_GID:$UID_GID:nonroot:/nonexistent:/usr/sbin/nologin" >> etc/passwd
      echo "nonroot:x:$UID_GID:" >> etc/group
      echo "nonroot:*:0:0:99999:7:::" >> etc/shadow
    )
    tar --sort=name --numeric-owner --xattrs -C "$tmp/r" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$tmp"
  fi
  echo "$tarball"
}

# Wheels: the project's own (built at SOURCE_DATE_EPOCH) + the pinned dependencies + pip to install them.
wheelhouse() {
  local wh="$WORK/wheels-$SRC_KEY"
  if [ ! -f "$wh/.done" ]; then
    rm -rf "$wh" && mkdir -p "$wh"
    log "wheels into $wh"
    # setuptools' scratch directory (gitignored): a build interrupted there makes the next one fail.
    rm -rf "$REPO/build" "$REPO/testing/build"
    "$PYTHON" -m pip wheel -q --no-deps -w "$wh" "$REPO" >&2
    "$PYTHON" -m pip wheel -q --no-deps -w "$wh" "$REPO/testing" >&2
    "$PYTHON" -m pip download -q --only-binary=:all: -d "$wh" "pip==$PIP_VERSION" \
      -r "$REPO/images/requirements-sidecar.txt" -r "$REPO/images/requirements-operator.txt" \
      -r "$REPO/images/requirements-testapp.txt" >&2
    touch "$wh/.done"
  fi
  echo "$wh"
}

cyclonedx() {
  local venv="$WORK/tools-venv"
  if [ ! -x "$venv/bin/cyclonedx-py" ]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q "cyclonedx-bom==$CYCLONEDX_VERSION" >&2
  fi
  echo "$venv/bin/cyclonedx-py"
}

build_python_image() {
  local target=$1 req=$2 lock=$3 entrypoint=$4 ref="localhost/tokenbudget-$1:$TAG"
  local tarball wh ctr mnt sbom
  tarball="$(base_rootfs)"
  wh="$(wheelhouse)"
  log "building $ref"
  ctr="$("${BUILDAH[@]}" from --format oci scratch)"
  # shellcheck disable=SC2064
  trap "'${BUILDAH[0]}' ${BUILDAH[*]:1} rm $ctr >/dev/null 2>&1 || true" RETURN
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  tar --numeric-owner --xattrs -C "$mnt" -xf "$tarball"
  mkdir -p "$mnt/tmp/wheels" && cp "$wh"/*.whl "$REPO/images/$lock" "$mnt/tmp/wheels/"
  # No pip in the image: the venv is made without it and pip runs from its wheel.
  "${BUILDAH[@]}" run --isolation chroot "$ctr" -- sh -euc "
    set -f
    python3 -m venv --without-pip $VENV
    $VENV/bin/python /tmp/wheels/pip-$PIP_VERSION-py3-none-any.whl/pip install -q --no-index --no-compile \
      --disable-pip-version-check --find-links /tmp/wheels -c /tmp/wheels/$lock $req
    $VENV/bin/python -m compileall -q -j1 --invalidation-mode unchecked-hash $VENV/lib
  " >&2
  if [ "$target" = sidecar ] || [ "$target" = testapp ]; then
    # The encodings tiktoken checks by sha256 at every load; filled once into the cache, offline after.
    "$PYTHON" "$REPO/scripts/tiktoken_cache.py" "$CACHE_ROOT/tiktoken" >&2
    mkdir -p "$mnt$TIKTOKEN_DIR" && cp "$CACHE_ROOT/tiktoken"/* "$mnt$TIKTOKEN_DIR/"
  fi
  rm -rf "$mnt/tmp/wheels"
  # SBOM of what is installed: cyclonedx-py asks an interpreter for sys.path and reads the distributions there.
  # The image's own interpreter answers (run in the rootfs), its paths seen from the host.
  local wrapper="$OUT/.chroot-python-$target"
  cat > "$wrapper" <<SH
#!/bin/sh
chroot "$mnt" $VENV/bin/python "\$@" | python3 -c 'import json, sys; json.dump(["$mnt" + p if p.startswith("/") else p for p in json.load(sys.stdin)], sys.stdout)'
SH
  chmod +x "$wrapper"
  sbom="$OUT/$target.cdx.json"
  "$(cyclonedx)" environment --output-reproducible --of JSON -o "$sbom.py" "$wrapper" >&2
  rm -f "$wrapper"
  "$PYTHON" "$REPO/scripts/sbom_debs.py" "$sbom.py" "$mnt" "$ref" "$VERSION" > "$sbom"
  rm -f "$sbom.py"
  mkdir -p "$mnt/usr/share/doc/tokenbudget" && cp "$sbom" "$mnt/usr/share/doc/tokenbudget/sbom.cdx.json"
  # Reproducible file times: clamp everything to the commit's time.
  find "$mnt" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} + 2>/dev/null || true
  local env_args=(--env "PATH=$VENV/bin:/usr/local/bin:/usr/bin:/bin" --env PYTHONDONTWRITEBYTECODE=1
                  --env PYTHONUNBUFFERED=1)
  [ "$target" = operator ] || env_args+=(--env "TIKTOKEN_CACHE_DIR=$TIKTOKEN_DIR")
  "${BUILDAH[@]}" config "${env_args[@]}" \
    --user "$UID_GID:$UID_GID" --workingdir / --entrypoint "[\"$entrypoint\"]" --cmd '' \
    --label "org.opencontainers.image.source=$SOURCE_URL" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.title=tokenbudget-$target" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    --label "io.tokenbudget.sbom=/usr/share/doc/tokenbudget/sbom.cdx.json" \
    "$ctr"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  commit_and_push "$target" "$ref" "$ctr"
}

commit_and_push() {
  local target=$1 ref=$2 ctr=$3 archive="$OUT/$1.oci.tar"
  local local_ref="localhost/tokenbudget-build-$1:$SRC_KEY-$$"  # private to this run in the shared storage
  "${BUILDAH[@]}" commit -q --format oci --timestamp "$SOURCE_DATE_EPOCH" --rm "$ctr" "$local_ref" >/dev/null
  rm -f "$archive"
  # A ref name inside the archive: `ctr images import` silently imports nothing without one.
  "${BUILDAH[@]}" push -q "$local_ref" "oci-archive:$archive:$ref" >&2
  "${BUILDAH[@]}" rmi -f "$local_ref" >/dev/null 2>&1 || true
  "$PYTHON" - "$archive" > "$OUT/$target.digest" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    index = json.load(tar.extractfile("index.json"))
print(index["manifests"][0]["digest"])
PY
  log "$ref: $(cat "$OUT/$target.digest"), $(du -h "$archive" | cut -f1) archive"
}

build_pause() {
  local ref="localhost/tokenbudget-pause:$TAG" ctr mnt
  ctr="$("${BUILDAH[@]}" from --format oci scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  gcc -Os -static -s -o "$mnt/pause" "$REPO/images/pause.c"
  touch -h -d "@$SOURCE_DATE_EPOCH" "$mnt/pause"
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 \
    --label "org.opencontainers.image.source=$SOURCE_URL" --label "org.opencontainers.image.revision=$REVISION" "$ctr"
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  commit_and_push pause "$ref" "$ctr"
}

inputs_key() {
  { echo "$1 $SRC_KEY $TAG $SOURCE_DATE_EPOCH"; cat "$0" "$REPO/images/pause.c" "$REPO"/images/requirements-*.txt; } \
    | sha256sum | cut -c1-64
}

for t in "${TARGETS[@]}"; do
  key="$(inputs_key "$t")"
  if [ -z "${IMAGES_REBUILD:-}" ] && [ -s "$OUT/$t.oci.tar" ] && [ "$(cat "$OUT/$t.inputs" 2>/dev/null)" = "$key" ]; then
    log "$t: up to date ($(cat "$OUT/$t.digest"))"
    continue
  fi
  rm -f "$OUT/$t.inputs"
  case "$t" in
    sidecar) build_python_image sidecar "$SIDECAR_REQ" requirements-sidecar.txt tokenbudget-sidecar ;;
    operator) build_python_image operator "$OPERATOR_REQ" requirements-operator.txt tokenbudget-operator ;;
    testapp) build_python_image testapp "$TESTAPP_REQ" requirements-testapp.txt python3 ;;
    pause) build_pause ;;
    *) log "unknown target $t (sidecar, operator, testapp, pause)"; exit 2 ;;
  esac
  echo "$key" > "$OUT/$t.inputs"
done
echo "$OUT"
