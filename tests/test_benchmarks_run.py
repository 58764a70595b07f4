"""Every script in benchmarks/ still runs: each once, with its smallest arguments, as a subprocess.

Benchmarks print figures and assert nothing, and speed is never asserted in tests; but nothing ran them, so
they rotted unseen (lease_round.py raised AttributeError for weeks after an internal API changed). Here each
runs as a user would (`python` on the script, from the repo root) with arguments that shrink its sizes but keep its code
paths, and the test checks only that it exits 0 and printed the heading or table it always prints. No figure
and no time is checked: at these sizes they mean nothing. The two that start their own etcd + kube-apiserver
are marked `kube`, so `make test-fast` leaves them out.

benchmarks/aiohttp_floor.py is no benchmark but the bare proxy sidecar_latency.py starts beside the sidecar
(without --no-floor), so it runs inside that case; benchmarks/thinktier_bench.py is the rig both ThinkTier
scripts import, so it runs inside theirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
HELPERS = frozenset({"aiohttp_floor.py", "thinktier_bench.py"})  # run by other scripts, not on their own


@dataclass(frozen=True)
class Smoke:
    """One benchmark's smallest run and what its output always holds."""

    script: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of stdout: headings or table heads printed on every run
    timeout: float  # seconds; far above the smoke run's duration on a busy 2-core machine
    kube: bool = False  # starts its own control plane from KUBEBUILDER_ASSETS


SMOKES = (
    Smoke("features_cost.py", ("--calls", "10"), ("features p50 µs", "growing", "fresh", "large"), 60),
    Smoke("intent_cost.py", ("--calls", "10", "--rounds", "2", "--per-round", "3"),
          ("hot path, 10 calls per variant", "end to end, 2 rounds x 3", "added by the intent"), 60),
    Smoke("lease_round.py", ("--quick",), ("Per round: bytes each sidecar sends", "| pods | users per pod |"), 60),
    Smoke("sidecar_restart.py", ("--users", "5", "--rounds", "2", "--calls", "5", "--unacked", "5", "--per-user-hour"),
          ("| per acknowledgement | p50 / p99 ms |", "restart with 5 unacknowledged records"), 60),
    Smoke("stream_parsers.py", ("--quick",), ("new/old", "one 1 MiB Gemini element"), 90),
    # --closed-loop: the sibling import and thinktier_closed_loop.run from this script, as the docstring runs it.
    Smoke("thinktier_savings.py", ("--quick", "--rho", "0", "--percentiles", "95", "--closed-loop"),
          ("ThinkTier savings:", "verdict by rho", "closed loop, rho = 0"), 180),
    Smoke("thinktier_closed_loop.py", ("--quick", "--rho", "0", "--percentiles", "95"),
          ("closed loop, rho = 0",), 120),
    # With the aiohttp floor (benchmarks/aiohttp_floor.py) but not nginx, which the machine may lack.
    Smoke("sidecar_latency.py", ("--smoke", "--no-nginx"),
          ("Sidecar memory (VmRSS", "# tokenbudget sidecar latency: smoke run", "| scenario |"), 180),
    Smoke("webhook_latency.py", ("--pods", "3", "--warmup", "1"),
          ("Webhook latency, 3 pod admissions per column", "operator RSS:"), 180, kube=True),
    Smoke("operator_propagation.py", ("--sidecars", "2", "--status-sidecars", "2", "--rounds", "1",
                                      "--staleness-sidecars", "2", "--staleness-seconds", "4"),
          ("apply → enforcing, 2 sidecars", "status lag, 2 sidecars", "fleet percent staleness, 2 sidecars"),
          240, kube=True),
)


def test_every_benchmark_has_a_smoke_run() -> None:
    """A new benchmark cannot be left out of this module, and a renamed one cannot linger in it."""
    scripts = {path.name for path in BENCHMARKS.glob("*.py")} - HELPERS
    assert scripts == {smoke.script for smoke in SMOKES}


@pytest.mark.parametrize(
    "smoke",
    [pytest.param(s, id=s.script.removesuffix(".py"), marks=[pytest.mark.kube] if s.kube else []) for s in SMOKES],
)
def test_benchmark_runs(smoke: Smoke, request: pytest.FixtureRequest) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    if smoke.kube:
        # The benchmark starts its own control plane; the fixture only finds the binaries (or skips locally).
        env["KUBEBUILDER_ASSETS"] = str(request.getfixturevalue("kube_bin_dir"))
    # Its own session, so a timeout kills what it started too: killing only the script left its sidecar and
    # upstream running for the rest of the suite (seen in a CI run of this module).
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / smoke.script), *smoke.args], cwd=REPO_ROOT, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
        errors="replace", start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=smoke.timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        masks = [line for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith(("SigBlk", "SigIgn"))]  # what the script's processes inherited from us
        pytest.fail(f"{smoke.script} {' '.join(smoke.args)} still running after {smoke.timeout:.0f} s "
                    f"({', '.join(masks)}):\n{tail(stdout)}\n{tail(stderr)}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    output = f"stdout:\n{tail(done.stdout)}\nstderr:\n{tail(done.stderr)}"
    assert done.returncode == 0, f"{smoke.script} {' '.join(smoke.args)} exited {done.returncode}\n{output}"
    missing = [text for text in smoke.expect if text not in done.stdout]
    assert not missing, f"{smoke.script} did not print {missing}\n{output}"


def tail(text: str | bytes | None, lines: int = 40) -> str:
    """The end of a captured stream (bytes after a timeout), enough to see a traceback."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join((text or "").splitlines()[-lines:])
