"""The chart's monitoring objects (values `monitoring.*`, all off by default): the PodMonitors, the PrometheusRule
and the Grafana dashboard ConfigMap carry exactly the files promtool and the Prometheus test check
(charts/tokenbudget/files/), and select what the operator and the injected sidecars really expose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_chart
import yaml
from test_chart import CHART, NS, by_key, documents, render, run_helm

from tokenbudget_api import names

helm = test_chart.helm  # the chart tests' session fixture

MONITORING_KINDS = frozenset({"PodMonitor", "PrometheusRule"})
ALL_ON = ("monitoring.podMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
          "monitoring.grafanaDashboard.enabled=true")


def test_nothing_is_rendered_for_monitoring_by_default(helm: Path) -> None:
    docs = by_key(documents(render(helm)))
    assert not [key for key in docs if key[0] in MONITORING_KINDS]
    assert ("ConfigMap", "tokenbudget-grafana-dashboard") not in docs


def test_the_chart_lints_clean_with_every_monitoring_object_and_renders_the_same_bytes_twice(helm: Path) -> None:
    args = ["lint", str(CHART), "--strict", "--namespace", NS]
    for s in ALL_ON:
        args += ["--set", s]
    out = run_helm(helm, *args)
    assert "[WARNING]" not in out, out
    assert "[ERROR]" not in out, out
    assert render(helm, *ALL_ON) == render(helm, *ALL_ON)


def test_the_rule_and_the_dashboard_are_the_files_promtool_and_prometheus_test(helm: Path) -> None:
    docs = by_key(documents(render(helm, *ALL_ON, "monitoring.prometheusRule.labels.release=kps",
                                   "monitoring.grafanaDashboard.annotations.grafana_folder=LLM")))
    rule = docs["PrometheusRule", "tokenbudget"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kps"
    dashboard = docs["ConfigMap", "tokenbudget-grafana-dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert dashboard["metadata"]["namespace"] == NS
    assert json.loads(dashboard["data"]["tokenbudget.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text())
    moved = by_key(documents(render(helm, *ALL_ON, "monitoring.grafanaDashboard.namespace=grafana")))
    assert moved["ConfigMap", "tokenbudget-grafana-dashboard"]["metadata"]["namespace"] == "grafana"


def test_the_pod_monitors_scrape_the_operators_metrics_port_and_only_injected_sidecars(helm: Path) -> None:
    docs = by_key(documents(render(helm, *ALL_ON, "monitoring.podMonitor.sidecarNamespaces={team-a}",
                                   "monitoring.podMonitor.interval=15s")))
    deployment = docs["Deployment", "tokenbudget-operator"]
    operator = docs["PodMonitor", "tokenbudget-operator"]["spec"]
    assert operator["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (endpoint,) = operator["podMetricsEndpoints"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")
    assert endpoint["honorLabels"] is True  # the spend counters' own namespace label wins
    sidecars = docs["PodMonitor", "tokenbudget-sidecars"]["spec"]
    assert sidecars["namespaceSelector"] == {"matchNames": ["team-a"]}
    (endpoint,) = sidecars["podMetricsEndpoints"]
    assert endpoint["port"] == names.SIDECAR_ADMIN_PORT_NAME
    keep = endpoint["relabelings"][0]
    annotation = names.INJECTED_ANNOTATION.replace(".", "_").replace("/", "_")
    assert keep == {"sourceLabels": [f"__meta_kubernetes_pod_annotationpresent_{annotation}"], "regex": "true",
                    "action": "keep"}
    # The job names the rules and the dashboard select on.
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    queries = (CHART / "files" / "prometheus-rules.yaml").read_text() + "".join(
        t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for monitor, job in ((operator, "tokenbudget-operator"), (sidecars, "tokenbudget-sidecar")):
        assert {"targetLabel": "job", "replacement": job} in monitor["podMetricsEndpoints"][0]["relabelings"]
        assert f'job="{job}"' in queries
    every_ns = by_key(documents(render(helm, *ALL_ON)))["PodMonitor", "tokenbudget-sidecars"]["spec"]
    assert every_ns["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (("monitoring.podMonitor.enabeld=true",), "enabeld"),
        (("monitoring.podMonitor.interval=30 seconds",), "interval"),
        (("monitoring.grafanaDashboard.namespace=Grafana_NS",), "namespace"),
        (("monitoring.prometheusRule.enabled=yes",), "enabled"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else v,
)
def test_bad_monitoring_values_are_refused_by_the_schema(helm: Path, sets: tuple[str, ...], field: str) -> None:
    with pytest.raises(AssertionError, match="schema") as refused:
        render(helm, *sets)
    assert field in str(refused.value)
