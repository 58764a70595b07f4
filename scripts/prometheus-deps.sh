#!/usr/bin/env bash
# Install Prometheus and promtool from Debian's packages, idempotently, for the spend-history tests
# (tests/monitoring/): `prometheus` gives /usr/bin/prometheus and /usr/bin/promtool.
#
# Nothing is started: the package would enable and start a system Prometheus on :9090, so on hosts without
# a policy-rc.d we add one for the duration of the install (as scripts/realnode-deps.sh does). The tests
# start their own Prometheus on a free loopback port with their own configuration.
set -euo pipefail

PKGS=(prometheus)
log() { echo "prometheus-deps: $*" >&2; }

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
  log "package installed but prometheus/promtool not on PATH"; exit 1
fi
if ! command -v apt-get >/dev/null; then
  log "no apt-get here: install Prometheus (prometheus and promtool on PATH) yourself"; exit 1
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
# A fresh machine has no package lists; an old list may lack the version we ask for.
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
