# Two entry points a newcomer needs: `make demo` and `make test`. Both set up everything themselves:
# a virtual environment in .venv, offline tiktoken encodings and (for tests) the control-plane binaries,
# all cached outside git under $(CACHE).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(or $(TOKENBUDGET_CACHE),$(HOME)/.cache/tokenbudget)
export TOKENBUDGET_CACHE := $(CACHE)
export TIKTOKEN_CACHE_DIR ?= $(CACHE)/tiktoken

.PHONY: setup tiktoken envtest helm images lint test test-fast test-realnode demo crds deploy chart-readme benchmarks clean \
	fuzz soak chaos

$(VENV)/.installed: pyproject.toml testing/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]' -e './testing[demo]'
	touch $@

setup: $(VENV)/.installed tiktoken

tiktoken: $(VENV)/.installed
	$(PY) scripts/tiktoken_cache.py "$(TIKTOKEN_CACHE_DIR)"

envtest:
	@scripts/envtest.sh >/dev/null

helm:
	@scripts/helm.sh >/dev/null

# The sidecar and operator images as OCI archives, without a Docker daemon (debootstrap + buildah; root).
images: setup
	PYTHON=$(PY) scripts/images.sh sidecar operator

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The CRDs and the admin API's OpenAPI document, both generated from the pydantic models.
crds: $(VENV)/.installed
	$(PY) -m tokenbudget_api.crdgen
	$(PY) -m tokenbudget_api.openapi

# deploy/rbac.yaml is rendered from the chart (tests/chart/test_chart.py checks they agree).
deploy: helm
	"$$(scripts/helm.sh)" template tokenbudget charts/tokenbudget --namespace tokenbudget-system \
		--show-only templates/rbac.yaml > deploy/rbac.yaml

# charts/tokenbudget/README.md from values.yaml's comments (tests/chart/test_chart_readme.py checks they agree).
chart-readme: $(VENV)/.installed
	$(PY) scripts/chart_readme.py

test: setup envtest helm lint
	KUBEBUILDER_ASSETS="$$(scripts/envtest.sh)" HELM_BIN="$$(scripts/helm.sh)" $(PY) -m pytest

# Only the real-node tier (kubelet + containerd running the project's images; root): tests/realnode.
test-realnode: setup envtest helm
	KUBEBUILDER_ASSETS="$$(scripts/envtest.sh)" HELM_BIN="$$(scripts/helm.sh)" $(PY) -m pytest -m realnode tests/realnode

# The suite without the control-plane build (tests that need it are skipped, not faked).
test-fast: setup
	$(PY) -m pytest -m "not kube and not realnode"

demo: setup
	$(PY) -m tokenbudget_testing.demo

# Hardening (README, "Hardening"): each prints its figures and exits non-zero on a broken invariant.
FUZZ_SECONDS ?= 60
fuzz: setup envtest
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)
	$(PY) fuzz/admin_schema.py --examples 200
	KUBEBUILDER_ASSETS="$$(scripts/envtest.sh)" TOKENBUDGET_CRD_EXAMPLES=1000 $(PY) -m pytest -q \
		"tests/fuzz/test_fuzz_short.py::test_a_spec_is_valid_by_pydantic_exactly_when_the_apiserver_accepts_it"

# The sidecar at 80 % of its measured maximum rate: RSS, fds, ledger, loop lag, errors (make soak SOAK_MINUTES=3).
SOAK_MINUTES ?= 10
soak: setup
	$(PY) hardening/soak.py --minutes $(SOAK_MINUTES)

# A fault matrix on the apiserver test stack with traffic running; the ledger cells need root (a tmpfs),
# the clock cell Debian's faketime (libfaketime). Prints the table; non-zero when a call was lost or doubled.
chaos: setup envtest
	@test -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 || [ "$$(id -u)" != 0 ] || \
		{ apt-get update -q && apt-get install -y -q faketime; }
	KUBEBUILDER_ASSETS="$$(scripts/envtest.sh)" $(PY) hardening/chaos.py

# Benchmarks print figures and assert nothing; run them on a quiet machine.
benchmarks: setup envtest
	@scripts/apt-install.sh benchmarks nginx || echo "benchmarks: no nginx, its column is left out" >&2
	$(PY) benchmarks/sidecar_latency.py
	KUBEBUILDER_ASSETS="$$(scripts/envtest.sh)" $(PY) benchmarks/webhook_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
