#!/usr/bin/env bash
# Install the Debian packages the images and the real-node test tier need, idempotently:
# containerd + runc (the node's runtime; never crun, see shared notes), the CNI plugins (bridge, host-local,
# portmap, loopback), buildah (packs the images without a daemon), debootstrap (the images' root
# filesystems), iptables (one DNAT rule standing in for kube-proxy), gcc (the static pause binary).
#
# Nothing is started: on hosts without a policy-rc.d we add one for the duration of the install, so the
# containerd package does not start a system containerd behind the tests' back.
set -euo pipefail

PKGS=(containerd runc containernetworking-plugins buildah debootstrap iptables gcc libc6-dev iproute2 xz-utils)
log() { echo "realnode-deps: $*" >&2; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root to install: ${missing[*]}"; exit 1
fi
log "installing ${missing[*]}"
added_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
trap '[ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists; an old list may lack the versions we ask for.
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
