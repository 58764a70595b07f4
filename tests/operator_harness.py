"""The operator as a real process against the test control plane: shared by the injector and reconciler tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from controlplane import ControlPlane, _die_with_parent, free_port, terminate
from prometheus_client.parser import text_string_to_metric_families

from tokenbudget_api import names

REPO_ROOT = Path(__file__).resolve().parents[1]
OPERATOR_NAMESPACE = "tokenbudget-system"
CONFIG_NAME = "tokenbudget-sidecar-injector-tests"


class OperatorProcess:
    """`python -m tokenbudget_operator` against the test control plane; output in a log file."""

    def __init__(self, kube: ControlPlane, workdir: Path, name: str, **settings: str) -> None:
        self.kube = kube
        self.webhook_port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.config_name = settings.pop("webhook_configuration_name", CONFIG_NAME)
        values = {
            "namespace": OPERATOR_NAMESPACE,
            "webhook_listen_host": "127.0.0.1",
            "webhook_port": str(self.webhook_port),
            "webhook_url": f"https://127.0.0.1:{self.webhook_port}",
            "webhook_config_owner": "Operator",
            "webhook_configuration_name": self.config_name,
            "tls_source": "SelfSigned",
            "metrics_host": "127.0.0.1",
            "metrics_port": str(self.metrics_port),
            "index_wait_timeout_s": "10",
            **settings,
        }
        self.env = {**kube.env(), **{f"TOKENBUDGET_OPERATOR_{key.upper()}": value for key, value in values.items()}}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> OperatorProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tokenbudget_operator"],
                env=self.env,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if self._get("/readyz")[0] == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError(f"operator not ready in {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> float:
        """SIGTERM, then SIGKILL after grace seconds (kopf can hang on SIGTERM); returns the seconds it took."""
        began = time.monotonic()
        if self.proc is not None:
            terminate(self.proc, grace)
        return time.monotonic() - began

    def _get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples of one metric from /metrics, keyed by their sorted labels."""
        status, text = self._get("/metrics")
        assert status == 200
        return {
            tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == metric
        }

    def webhook_calls(self) -> float:
        return sum(self.samples("tokenbudget_webhook_requests_total").values())

    def admissions(self, action: str, reason: str, dry_run: bool = False) -> float:
        key = (("action", action), ("dry_run", str(dry_run).lower()), ("reason", reason))
        return self.samples("tokenbudget_webhook_admissions_total").get(key, 0.0)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def namespace(kube: ControlPlane, name: str, *, enabled: bool, secret: bool) -> None:
    labels = {names.INJECTION_LABEL: names.INJECTION_ENABLED} if enabled else {}
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    if secret:
        kube.kubectl(
            "create", "secret", "generic", names.ADMIN_TOKEN_SECRET, "-n", name,
            f"--from-literal={names.ADMIN_TOKEN_SECRET_KEY}=test-token",
        )  # fmt: skip


def service_account_kubeconfig(kube: ControlPlane, workdir: Path, rbac: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount bound to `rbac` (deploy/rbac.yaml): least privilege, tested."""
    kube.kubectl("apply", "-f", str(rbac))
    token = kube.kubectl(
        "create", "token", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE, "--duration=1h"
    ).stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path
