"""`make demo` runs the real sidecar and test upstream as processes; it must end in an exact match."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_meters_exactly_what_the_provider_served() -> None:
    out = subprocess.run([sys.executable, "-m", "tokenbudget_testing.demo"], capture_output=True, text=True,
                         timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "the sidecar metered" in out.stdout
    assert out.stdout.rstrip().endswith(": exact."), out.stdout[-1500:]
    assert "qwen-max" in out.stdout
    assert "1 provider error" in out.stdout
