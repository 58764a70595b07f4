"""A 20-second pass of `make soak` inside the suite: the same rig, invariants and verdict, over a run too
short for memory trends (the 10-minute command is where RSS growth means something) but long enough to
catch a failing call, records that do not match the calls, a ledger that does not compact, and a leaking fd.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "hardening" / "soak.py"), "--minutes", "0.25",
                           "--probe-seconds", "3", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "soak: ok" in done.stdout
    assert '"errors": 0' in done.stdout
