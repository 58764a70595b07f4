#!/usr/bin/env bash
# Install the Debian packages the images and the real-node test tier need, idempotently (scripts/apt-install.sh):
# containerd + runc (the node's runtime; never crun, see shared notes), the CNI plugins (bridge, host-local,
# portmap, loopback), buildah (packs the images without a daemon), debootstrap (the images' root
# filesystems), iptables (one DNAT rule standing in for kube-proxy), gcc (the static pause binary).
# Nothing is started: the containerd package must not start a system containerd behind the tests' back.
set -euo pipefail
exec "$(dirname "$0")/apt-install.sh" realnode-deps \
  containerd runc containernetworking-plugins buildah debootstrap iptables gcc libc6-dev iproute2 xz-utils
