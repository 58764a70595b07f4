"""The short pass of `make fuzz` inside the suite (≈1 minute in all): every atheris target for a few
seconds from its seed corpus, the admin API against its OpenAPI document (schemathesis, a real sidecar
process), and the CRD models against a real apiserver (a few dozen hypothesis examples).

Each fails on what `make fuzz` fails on: a crash, hang or memory blow-up of a target, a 5xx or an answer
that breaks the document from the admin port, pydantic and the apiserver disagreeing on a spec.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from controlplane import ControlPlane
from hypothesis import HealthCheck, Phase, given, settings

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "fuzz"))

import crd_property  # noqa: E402
import run as fuzz_run  # noqa: E402

SECONDS = 2  # per target: 14 targets ≈ 43 s with their start-up


@pytest.mark.parametrize("target", fuzz_run._target_names())
def test_each_fuzz_target_runs_clean_from_its_seed_corpus(target: str, tmp_path: Path) -> None:
    result = fuzz_run.run(target, SECONDS, tmp_path)  # a fresh working corpus: the run is the seeds' own
    assert result.ok, result.log.read_text(errors="replace")[-4000:]
    assert result.executions > 0, result.log.read_text(errors="replace")[-2000:]
    assert result.corpus > 0  # the seeds (and what they grew into) were loaded


def test_the_admin_api_keeps_its_openapi_document_under_schemathesis(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "fuzz" / "admin_schema.py"), "--examples", "15",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout, done.stdout[-2000:]


@settings(max_examples=int(os.environ.get("TOKENBUDGET_CRD_EXAMPLES", "40")), deadline=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
@given(obj=crd_property.specs())
def test_a_spec_is_valid_by_pydantic_exactly_when_the_apiserver_accepts_it(kube: ControlPlane,
                                                                          obj: dict[str, object]) -> None:
    crd_property.agree(kube.url, kube.token, kube.ca_file, obj)  # type: ignore[arg-type]
