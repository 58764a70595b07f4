"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ optional kube-controller-manager).

No Docker and no fake clients: the binaries are the ones users run, started on loopback on free ports in
a temporary directory. Flags and shutdown order follow the checked recipe in docs/control-plane.md; the reasons are
noted where they are not obvious.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REQUIRED_BINARIES = ("kube-apiserver", "etcd", "kubectl")
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")

# Held by the parent so the child, between fork and exec, only makes a plain function call (no dlopen).
_LIBC = ctypes.CDLL(None, use_errno=True) if os.uname().sysname == "Linux" else None
_PR_SET_PDEATHSIG = 1


class BinariesUnavailable(RuntimeError):
    """The control-plane binaries could not be found or built; the message says why."""


class ControlPlaneError(RuntimeError):
    """The control plane failed to start or misbehaved; the message carries the tail of its logs."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call whose message includes its stderr, which CalledProcessError leaves out."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr}\nstdout: {self.output}"


def resolve_bin_dir(repo_root: Path, timeout: float = 1800.0) -> Path:
    """The directory holding the binaries: KUBEBUILDER_ASSETS when set, else what scripts/envtest.sh prints.

    The script may build from source (≈ 7 min the first time), hence the long timeout.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found = Path(assets)
        if missing := _missing_binaries(found):
            raise BinariesUnavailable(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        return found
    script = repo_root / "scripts" / "envtest.sh"
    if not script.is_file():
        raise BinariesUnavailable(f"{script} not found and KUBEBUILDER_ASSETS not set")
    try:
        done = subprocess.run(
            ["bash", str(script)],
            cwd=repo_root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BinariesUnavailable(f"{script} did not finish in {timeout:.0f} s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise BinariesUnavailable(f"{script} exited {done.returncode}:\n{tail}")
    found = Path(lines[-1])
    if missing := _missing_binaries(found):
        raise BinariesUnavailable(f"{script} printed {found}, which lacks {', '.join(missing)}")
    return found


def _missing_binaries(bin_dir: Path, names: Sequence[str] = REQUIRED_BINARIES) -> list[str]:
    return [name for name in names if not os.access(bin_dir / name, os.X_OK)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a race is possible; start() retries on 'address in use')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the parent dies, so a killed pytest leaves nothing behind.

    Only used when spawning from the main thread: Linux sends the signal when the spawning *thread* exits.
    SIGKILL rather than SIGTERM because the apiserver ignores SIGTERM while etcd is going away too.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ControlPlane:
    """etcd + kube-apiserver on loopback, admin access by bearer token, torn down by stop() (and at exit)."""

    def __init__(self, bin_dir: Path, *, workdir: Path | None = None, ready_timeout: float = 60.0) -> None:
        """Nothing starts yet. A given workdir is kept after stop() (for logs); a temporary one is removed."""
        self.bin_dir: Path = Path(bin_dir)
        self.ready_timeout = ready_timeout
        self._own_workdir = workdir is None
        self.workdir: Path = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="tokenbudget-kube-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_dir: Path = self.workdir / "certs"
        self.kubeconfig: Path = self.workdir / "kubeconfig"
        self.token: str = secrets.token_hex(16)
        self.url: str = ""
        self.ca_file: Path | None = None
        self.startup_seconds: float | None = None
        self.etcd_url: str = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._lock = threading.RLock()
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> ControlPlane:
        """Start etcd and kube-apiserver, wait for /readyz, write the kubeconfig; returns self.

        Ports are picked free just before use; another process may grab one in between, so a start that
        dies with 'address already in use' is retried on fresh ports.
        """
        if missing := _missing_binaries(self.bin_dir):
            raise BinariesUnavailable(f"{self.bin_dir} lacks {', '.join(missing)}")
        atexit.register(self.stop)
        began = time.monotonic()
        try:
            self._write_auth_files()
            for attempt in range(1, attempts + 1):
                try:
                    self._start_once()
                    break
                except ControlPlaneError as exc:
                    self._stop_processes()
                    if attempt == attempts or "address already in use" not in str(exc):
                        raise
            self.startup_seconds = time.monotonic() - began
            return self
        except BaseException:
            self.stop()
            raise

    def _write_auth_files(self) -> None:
        """Admin token (group system:masters) and the service-account key pair the apiserver requires."""
        self.cert_dir.mkdir(exist_ok=True)
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.workdir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (self.workdir / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def _start_once(self) -> None:
        client_port, peer_port, secure_port = free_port(), free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        self.url = f"https://127.0.0.1:{secure_port}"
        data_dir = self.workdir / "etcd"
        shutil.rmtree(data_dir, ignore_errors=True)
        # Both start at once: the apiserver retries etcd, and that saves the time of a separate wait.
        self._spawn(
            "etcd",
            [
                "--data-dir", str(data_dir),
                "--listen-client-urls", self.etcd_url,
                "--advertise-client-urls", self.etcd_url,
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [
                "--etcd-servers", self.etcd_url,
                "--secure-port", str(secure_port),
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--cert-dir", str(self.cert_dir),
                "--service-cluster-ip-range", "10.0.0.0/24",
                "--authorization-mode", "RBAC",
                "--token-auth-file", str(self.workdir / "tokens.csv"),
                "--service-account-key-file", str(self.workdir / "sa.pub"),
                "--service-account-signing-key-file", str(self.workdir / "sa.key"),
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--disable-admission-plugins", "ServiceAccount",
                "--allow-privileged=true",
                # Without it 1.37 exits at once: 127.0.0.1 "may not be in the loopback range".
                "--endpoint-reconciler-type", "none",
            ],
        )  # fmt: skip
        self._wait_ready()
        serving_cert = self.cert_dir / "apiserver.crt"
        self.ca_file = serving_cert if serving_cert.is_file() and self._verifies(serving_cert) else None
        self._write_kubeconfig()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start a binary with its output in a log file (a pipe nobody reads would fill up and block it).

        A new session keeps Ctrl-C away from it, so stop() alone decides the shutdown order.
        """
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop
        log.write(f"\n==== {time.strftime('%H:%M:%S')} {name} {' '.join(args)}\n".encode())
        log.flush()
        main_thread = threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent if main_thread else None,
        )
        self._procs[name] = proc
        return proc

    def _wait_ready(self) -> None:
        """Poll /readyz until 200; fail early, with the logs, if a process exits."""
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + self.ready_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited with {proc.returncode} during start\n{self.log_tail()}")
            try:
                status, body = self._get("/readyz", insecure)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[-500:]}"
            except (OSError, ssl.SSLError) as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"kube-apiserver at {self.url} not ready after {self.ready_timeout:.0f} s (last: {last})\n{self.log_tail()}"
        )

    def _get(self, path: str, context: ssl.SSLContext) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                return int(response.status), response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def _verifies(self, ca_file: Path) -> bool:
        """Whether the self-signed serving certificate verifies as its own CA (then kubeconfig uses it)."""
        try:
            return self._get("/readyz", ssl.create_default_context(cafile=str(ca_file)))[0] == 200
        except (OSError, ssl.SSLError):
            return False

    def _write_kubeconfig(self) -> None:
        cluster: dict[str, object] = {"server": self.url}
        if self.ca_file is not None:
            cluster["certificate-authority"] = str(self.ca_file)
        else:
            cluster["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    def start_controller_manager(self, timeout: float = 60.0) -> None:
        """Start kube-controller-manager: Deployments get ReplicaSets and Pods (Pending for ever: no kubelet).

        Ready once the serviceaccount controller has made default/default, proof that controllers run.
        """
        with self._lock:
            if "kube-controller-manager" in self._procs:
                return
            if not self.url:
                raise ControlPlaneError("start() the control plane first")
            if missing := _missing_binaries(self.bin_dir, ["kube-controller-manager"]):
                raise BinariesUnavailable(f"{self.bin_dir} lacks {', '.join(missing)}")
            proc = self._spawn(
                "kube-controller-manager",
                [
                    "--kubeconfig", str(self.kubeconfig),
                    "--service-account-private-key-file", str(self.workdir / "sa.key"),
                    "--leader-elect=false",
                    "--controllers=*",
                    "--bind-address", "127.0.0.1",
                    "--secure-port", "0",
                ],
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"kube-controller-manager exited with {proc.returncode}\n{self.log_tail()}")
            if self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"kube-controller-manager made no default ServiceAccount in {timeout:.0f} s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Tear down in the order that does not hang, remove a temporary workdir. Idempotent; safe at exit."""
        with self._lock:
            self._stop_processes()
            for log in self._logs.values():
                log.close()
            self._logs.clear()
            if not self._stopped:
                self._stopped = True
                atexit.unregister(self.stop)
                if self._own_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_processes(self) -> None:
        # Controller manager and apiserver before etcd: signalled together with etcd, the apiserver ignored
        # SIGTERM for more than 15 s. SIGKILL after a short grace, whatever happens.
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                terminate(proc, grace=5.0)
        for proc in self._procs.values():
            terminate(proc, grace=5.0)
        self._procs.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- using it --------------------------------------------------------------------------------------

    @property
    def pids(self) -> dict[str, int]:
        """Process ids of what runs now, by binary name (for tests that check nothing is left behind)."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing here, for launching operator or sidecar processes."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane; with check, a failure raises with its stderr."""
        cmd = [
            str(self.bin_dir / "kubectl"),
            "--kubeconfig", str(self.kubeconfig),
            # Discovery cache per control plane: ports are reused, and ~/.kube/cache is not ours to fill.
            "--cache-dir", str(self.workdir / "kubectl-cache"),
            *args,
        ]  # fmt: skip
        done = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, cmd, done.stdout, done.stderr)
        return done

    def plugin(self, *args: str, timeout: float = 120.0) -> str:
        """Run the kubectl plugin (`python -m tokenbudget_cli`, as `kubectl tokenbudget` runs it) against this
        control plane; asserts it exits 0 (its stderr the message) and returns its stdout."""
        done = subprocess.run([sys.executable, "-m", "tokenbudget_cli", *args, "--kubeconfig", str(self.kubeconfig)],
                              capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def apply_crds(self, crd_dir: Path, timeout: float = 60.0) -> list[str]:
        """Apply every crd_dir/*.yaml and wait until each CRD is Established; returns the CRD names.

        Server-side apply: a large generated schema would overflow client-side apply's annotation limit.
        A missing or empty directory applies nothing.
        """
        names: list[str] = []
        for manifest in sorted(Path(crd_dir).glob("*.yaml")):
            applied = self.kubectl(
                "apply", "--server-side", "--force-conflicts", "--field-manager", "tokenbudget-tests",
                "-f", str(manifest), "-o", "name",
            )  # fmt: skip
            names += [
                line.split("/", 1)[1]
                for line in applied.stdout.split()
                if line.startswith("customresourcedefinition.apiextensions.k8s.io/")
            ]
        if names:
            self.kubectl(
                "wait", "--for", "condition=Established", f"--timeout={timeout:.0f}s",
                *(f"crd/{name}" for name in names),
                timeout=timeout + 10,
            )  # fmt: skip
        return names

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of each process log, to put in error messages."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"---- {path.name} (last {len(tail)} lines) ----\n" + "\n".join(tail))
        return "\n".join(parts)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL; always reaps the process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


# A loopback /24 of this test run's own (127.X.Y.0): sidecars listen on fixed ports, so two runs on one machine
# (two checkouts, or a developer's run beside CI's) must never bind the same addresses.
RUN_NET = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}"


def pod_address(host: int) -> str:
    """The loopback address standing in for one pod's IP in this run."""
    return f"{RUN_NET}.{host}"
