"""One cell of `make chaos` inside the suite: a sidecar SIGKILLed mid-traffic on the apiserver test stack,
restarted on its ledger; every call the upstream served is counted once and the window does not overrun.
The whole matrix (operator, apiserver, etcd, ledger disk and clock faults) is `make chaos`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from controlplane import ControlPlane

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hardening"))

import chaos


def test_a_sidecar_killed_mid_traffic_loses_and_doubles_no_call(kube: ControlPlane, tmp_path: Path) -> None:
    cell = next(c for c in chaos.CELLS if c.name == "sidecar-sigkill")
    rig = chaos.Chaos(kube, tmp_path, fake_clock=False)
    with rig.running():
        row = rig.run(cell, fault_at=1.5, recover_after=2.0)
    assert row.calls > 0, row
    assert row.refusals > 0, row  # the traffic overran the limit: enforcement was part of the cell
    assert (row.lost, row.doubled, row.overrun) == (0, 0, 0), row
