"""The sidecar as a real process (`python -m tokenbudget_sidecar`), for what only a process shows:
start-up without tiktoken files, a SIGKILL mid-call, what it writes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenbudget_api.policy import SidecarPolicy

PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return str(resp.read().decode())


@dataclass
class SidecarProcess:
    proc: subprocess.Popen[bytes]
    data: str  # data port base URL
    admin: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")


def offline_env(**extra: str) -> dict[str, str]:
    """The test's environment with every proxy pointed at a closed loopback port: no download can succeed."""
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env.update(extra)
    return env


@contextlib.contextmanager
def sidecar_process(tmp: Path, policy: SidecarPolicy, env: dict[str, str] | None = None,
                    ledger_dir: Path | None = None, name: str = "sidecar") -> Iterator[SidecarProcess]:
    """Start the sidecar on free loopback ports with `policy` (a policy file), wait for /readyz; always killed."""
    data, admin = free_port(), free_port()
    policy_file = tmp / f"{name}-policy.json"
    policy_file.write_text(policy.model_dump_json(by_alias=True, exclude_none=True))
    stderr = tmp / f"{name}.stderr"
    full = {**(env if env is not None else os.environ), "TOKENBUDGET_DATA_PORT": str(data),
            "TOKENBUDGET_ADMIN_PORT": str(admin), "TOKENBUDGET_DATA_HOST": "127.0.0.1",
            "TOKENBUDGET_ADMIN_HOST": "127.0.0.1", "TOKENBUDGET_POLICY_FILE": str(policy_file)}
    if ledger_dir is not None:
        full["TOKENBUDGET_LEDGER_DIR"] = str(ledger_dir)
    with stderr.open("ab") as err:
        proc = subprocess.Popen([str(PYTHON), "-m", "tokenbudget_sidecar"], env=full, stdout=subprocess.DEVNULL,
                                stderr=err)
    s = SidecarProcess(proc, f"http://127.0.0.1:{data}", f"http://127.0.0.1:{admin}", stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the sidecar exited: {s.log()[-3000:]}"
            with contextlib.suppress(urllib.error.URLError, ConnectionError, ValueError):
                if get_json(f"{s.admin}/readyz").get("ready"):
                    break
            assert time.monotonic() < deadline, s.log()[-3000:]
            time.sleep(0.05)
        yield s
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
