"""The chart's alerting rules, as the file the PrometheusRule carries: promtool checks them and runs the unit
cases of rules_test.yaml (every alert, firing and not)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).parent
RULES = HERE.parents[1] / "charts" / "tokenbudget" / "files" / "prometheus-rules.yaml"
UNIT_TESTS = HERE / "rules_test.yaml"


def promtool(bins: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bins["promtool"]), *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=HERE)


def test_promtool_checks_the_rules(prometheus_bins: dict[str, Path]) -> None:
    done = promtool(prometheus_bins, "check", "rules", str(RULES))
    print(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in done.stdout


def test_every_alert_has_unit_cases_and_promtool_passes_them(prometheus_bins: dict[str, Path]) -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    tested = {c["alertname"] for t in cases for c in t.get("alert_rule_test", [])}
    firing = {c["alertname"] for t in cases for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    assert tested == alerts, f"no cases: {alerts - tested}"
    assert firing == alerts, f"never firing in a case: {alerts - firing}"
    done = promtool(prometheus_bins, "test", "rules", UNIT_TESTS.name)
    print(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_a_broken_rule_is_caught_by_the_unit_cases(prometheus_bins: dict[str, Path], tmp_path: Path) -> None:
    """The cases can fail: the same cases against rules whose 95 % threshold was typed as 59 % fail."""
    broken = tmp_path / "rules.yaml"
    broken.write_text(RULES.read_text().replace(">= 95", ">= 59").replace("< 95", "< 59"))
    cases = yaml.safe_load(UNIT_TESTS.read_text())
    cases["rule_files"] = [str(broken)]
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(cases))
    done = subprocess.run([str(prometheus_bins["promtool"]), "test", "rules", "cases.yaml"], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode != 0
    assert "TokenBudgetAbove80Percent" in done.stdout + done.stderr
