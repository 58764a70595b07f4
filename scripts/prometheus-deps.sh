#!/usr/bin/env bash
# Install Prometheus and promtool from Debian's packages, idempotently (scripts/apt-install.sh), for the
# spend-history tests (tests/monitoring/): `prometheus` gives /usr/bin/prometheus and /usr/bin/promtool.
# Nothing is started (the package would start a system Prometheus on :9090): the tests start their own on a
# free loopback port with their own configuration.
set -euo pipefail
"$(dirname "$0")/apt-install.sh" prometheus-deps prometheus
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "prometheus-deps: package installed but prometheus/promtool not on PATH" >&2; exit 1
fi
