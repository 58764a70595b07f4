"""Webhook latency for 1,000 pod admissions as the apiserver calls it, against a baseline without the webhook.

Starts its own etcd + kube-apiserver (tests/controlplane.py) and the operator as a real process, then creates
pods one at a time through the API, alternating between a namespace labelled for injection (the apiserver
calls the webhook over TLS) and one that is not (no call): the same run, the same apiserver, interleaved so
drift hits both alike. Reported:

- in the webhook: each review's time from request read to response written, from the operator's JSON log
  (`duration_ms`, one line per review), exact percentiles;
- in the apiserver: its own `apiserver_admission_webhook_admission_duration_seconds` histogram (TLS and
  connection included; coarse buckets, so the mean and the share under each bucket);
- end to end: the client's create latency with and without the webhook, and the difference.

Prints a table; asserts nothing. Run: `.venv/bin/python benchmarks/webhook_latency.py [--pods 1000]`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from tokenbudget_api import names

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
controlplane: Any = importlib.import_module("controlplane")

INJECTED_NS = "bench-injected"
PLAIN_NS = "bench-plain"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def pod(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/chat:1.4.2",
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                }
            ]
        },
    }


def apiserver_webhook_histogram(plane: Any, webhook: str) -> tuple[dict[float, float], float, float]:
    """Cumulative buckets, sum and count of the apiserver's admission-webhook duration for one webhook name."""
    request = urllib.request.Request(plane.url + "/metrics", headers={"Authorization": f"Bearer {plane.token}"})
    context = ssl.create_default_context(cafile=str(plane.ca_file) if plane.ca_file else None)
    if plane.ca_file is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        text = response.read().decode()
    buckets: dict[float, float] = {}
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_admission_webhook_admission_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("name") != webhook or sample.labels.get("type") != "admit":
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
    return buckets, total, count


def start_operator(plane: Any, workdir: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    webhook_port, metrics_port = controlplane.free_port(), controlplane.free_port()
    settings = {
        "namespace": "tokenbudget-system",
        "webhook_listen_host": "127.0.0.1",
        "webhook_port": str(webhook_port),
        "webhook_url": f"https://127.0.0.1:{webhook_port}",
        "webhook_config_owner": "Operator",
        "tls_source": "SelfSigned",
        "metrics_host": "127.0.0.1",
        "metrics_port": str(metrics_port),
        "log_format": "json",
        "require_admin_token_secret": "false",
    }
    env = {**plane.env(), **{f"TOKENBUDGET_OPERATOR_{k.upper()}": v for k, v in settings.items()}}
    log_path = workdir / "operator.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokenbudget_operator"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return proc, log_path, metrics_port
        time.sleep(0.1)
    raise RuntimeError("operator not ready in 60 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=1000, help="pods per namespace (default 1000)")
    parser.add_argument("--warmup", type=int, default=20, help="pods per namespace before measuring")
    args = parser.parse_args()

    bin_dir = controlplane.resolve_bin_dir(REPO_ROOT)
    workdir = Path(tempfile.mkdtemp(prefix="tokenbudget-bench-"))
    plane = controlplane.ControlPlane(bin_dir).start()
    proc = None
    try:
        for ns, enabled in ((INJECTED_NS, True), (PLAIN_NS, False)):
            labels = {names.INJECTION_LABEL: names.INJECTION_ENABLED} if enabled else {}
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
            plane.kubectl("apply", "-f", "-", input=json.dumps(body))
        proc, log_path, _ = start_operator(plane, workdir)
        rss_before = rss_mib(proc.pid)

        config.load_kube_config(config_file=str(plane.kubeconfig))
        core: Any = client.CoreV1Api()

        def create(name: str, ns: str) -> float:
            started = time.perf_counter()
            core.create_namespaced_pod(ns, pod(name, ns), _preload_content=False).read()
            return time.perf_counter() - started

        for i in range(args.warmup):
            create(f"warm-{i}", INJECTED_NS)
            create(f"warm-{i}", PLAIN_NS)
        log_offset = log_path.stat().st_size
        buckets0, sum0, count0 = apiserver_webhook_histogram(plane, names.WEBHOOK_NAME_BY_NAMESPACE)

        with_webhook: list[float] = []
        without: list[float] = []
        began = time.perf_counter()
        for i in range(args.pods):
            with_webhook.append(create(f"pod-{i}", INJECTED_NS))
            without.append(create(f"pod-{i}", PLAIN_NS))
        wall = time.perf_counter() - began

        buckets1, sum1, count1 = apiserver_webhook_histogram(plane, names.WEBHOOK_NAME_BY_NAMESPACE)
        time.sleep(0.5)  # let the last log lines land
        reviews = []
        with open(log_path, "rb") as log:
            log.seek(log_offset)
            for line in log:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if "duration_ms" in entry and entry.get("namespace") == INJECTED_NS:
                        reviews.append(entry)
        in_webhook = [float(entry["duration_ms"]) for entry in reviews]
        injected = sum(1 for entry in reviews if entry.get("action") == "Inject")
        rss_after = rss_mib(proc.pid)
    finally:
        if proc is not None:
            stop(proc)
        plane.stop()

    ms = [x * 1000 for x in with_webhook]
    base = [x * 1000 for x in without]
    calls = count1 - count0
    print(f"\nWebhook latency, {args.pods} pod admissions per column ({os.cpu_count()} CPUs, run {wall:.1f} s)\n")
    print(f"{'measure':<52} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    rows = [
        ("in the webhook (request read → response written)", in_webhook),
        ("create latency, namespace with the webhook", ms),
        ("create latency, namespace without (baseline)", base),
    ]
    for label, values in rows:
        if values:
            print(
                f"{label:<52} {len(values):>6} {percentile(values, 50):>8.2f} {percentile(values, 90):>8.2f} "
                f"{percentile(values, 99):>8.2f} {max(values):>8.2f}"
            )
    print(
        f"{'added by the webhook (with - without, same rank)':<52} {'':>6} "
        f"{percentile(ms, 50) - percentile(base, 50):>8.2f} {percentile(ms, 90) - percentile(base, 90):>8.2f} "
        f"{percentile(ms, 99) - percentile(base, 99):>8.2f}"
    )
    print(f"\nreviews logged by the webhook: {len(reviews)} ({injected} injected)")
    if calls:
        mean = (sum1 - sum0) / calls * 1000
        print(f"apiserver's view ({calls:.0f} calls, TLS included): mean {mean:.2f} ms; share within bucket:")
        for bound in sorted(buckets1):
            if bound <= 0.1:
                share = (buckets1[bound] - buckets0.get(bound, 0.0)) / calls
                print(f"  ≤ {bound * 1000:>5.0f} ms: {share:7.2%}")
    print(f"operator RSS: {rss_before:.1f} MiB at start, {rss_after:.1f} MiB after")
    print(f"mean create latency: with {statistics.fmean(ms):.2f} ms, without {statistics.fmean(base):.2f} ms")


if __name__ == "__main__":
    main()
