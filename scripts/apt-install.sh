#!/usr/bin/env bash
# Install Debian packages idempotently, starting nothing: `scripts/apt-install.sh WHO PACKAGE...`.
# WHO names the caller in messages (e.g. realnode-deps). Exits 0 at once when every package is installed.
#
# Packages such as containerd, prometheus or nginx start a system service on install; on hosts without a
# policy-rc.d we add one for the duration of the install, so nothing runs behind the tests' back.
set -euo pipefail

who=$1; shift
log() { echo "$who: $*" >&2; }

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  log "no apt-get here: install ${missing[*]} yourself"; exit 1
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
