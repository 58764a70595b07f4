"""The Argo CD health checks of TokenBudget and ThinkTier, run by Lua 5.1 (lupa.lua51, the dialect of the
gopher-lua Argo CD embeds) against status fixtures, the way Argo CD's own resource_customizations tests do:
each health_test.yaml lists a fixture and the status and message it must give.

lupa rather than Debian's lua5.1: a wheel `make setup` installs on any machine, no root, no apt."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_examples import GITOPS, HEALTH_CHECKS
from lupa import lua51

from tokenbudget_api.thinktier import ThinkTier
from tokenbudget_api.tokenbudget import TokenBudget
from tokenbudget_operator.reconciler.conditions import Problem, Reason, budget_conditions

KINDS = {"TokenBudget": TokenBudget, "ThinkTier": ThinkTier}
REASONS = list(Reason)
PROBLEMS = REASONS[REASONS.index(Reason.UPSTREAM_CONFLICT) :]  # conditions.py lists the Ready=False problems last


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """Run <kind>/health.lua with `obj` as Argo CD does: a global table, the chunk's return value."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute((HEALTH_CHECKS / kind / "health.lua").read_text())
    return {key: result[key] for key in ("status", "message") if result[key] is not None}


def cases() -> list[tuple[str, Path, dict[str, str]]]:
    found = []
    for kind in KINDS:
        tests = yaml.safe_load((HEALTH_CHECKS / kind / "health_test.yaml").read_text())["tests"]
        found += [(kind, HEALTH_CHECKS / kind / t["inputPath"], t["healthStatus"]) for t in tests]
    return found


@pytest.mark.parametrize(("kind", "fixture", "expected"), cases(), ids=lambda v: getattr(v, "stem", None))
def test_each_fixture_gets_its_health(kind: str, fixture: Path, expected: dict[str, str]) -> None:
    obj = yaml.safe_load(fixture.read_text())
    KINDS[kind].model_validate(obj)  # the fixture is a real object: the API models accept it, status included
    assert health(kind, obj) == expected


def test_the_fixtures_cover_all_three_states_for_both_kinds() -> None:
    for kind in KINDS:
        assert {e["status"] for k, _, e in cases() if k == kind} == {"Healthy", "Progressing", "Degraded"}, kind


@pytest.mark.parametrize("reason", [r.value for r in PROBLEMS])
def test_every_problem_the_operator_reports_is_degraded(reason: str) -> None:
    """Conditions from the operator's own builder, so a reason added there is judged here too."""
    fixture = HEALTH_CHECKS / "TokenBudget" / "testdata" / "enforcing.yaml"
    obj = yaml.safe_load(fixture.read_text())
    obj["status"]["conditions"] = budget_conditions(
        None, generation=2, now=dt.datetime(2026, 12, 6, tzinfo=dt.UTC), usage={}, selected=2, synced=2,
        problems=[Problem(reason, "the message")],
    )  # fmt: skip
    assert health("TokenBudget", obj) == {"status": "Degraded", "message": f"{reason}: the message"}


def test_the_argocd_cm_patch_carries_the_same_lua() -> None:
    data = yaml.safe_load((GITOPS / "argocd" / "argocd-cm-health.yaml").read_text())["data"]
    assert data == {
        f"resource.customizations.health.tokenbudget.io_{kind}": (HEALTH_CHECKS / kind / "health.lua").read_text()
        for kind in KINDS
    }
