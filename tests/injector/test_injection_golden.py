"""Golden files for sidecar injection: input pod → decision and JSON patch, one file per case.

Each tests/injector/golden/injection/<case>.json holds a hand-written input (pod, namespace labels, config overrides,
whether the admin token Secret exists, dry run) and the recorded `expected` output. Regenerate every
`expected` (inputs are never touched) with ONE command, then review the diff: it is exactly the change in
what the webhook does to users' pods.

    TOKENBUDGET_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/injector/test_injection_golden.py

The other tests here apply each patch (with `jsonpatch`, as the apiserver would) and check the result is a
valid pod, that kopf re-diffs our patch into an equivalent one, that the decision table has a case for every
row, and that the webhook configuration selects what the table may inject. No control plane needed.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import jsonpatch
import kopf
import pytest
from kubernetes.client import ApiClient

from tokenbudget_api import names
from tokenbudget_operator.config import (
    FailurePolicy,
    InjectionConfig,
    OperatorSettings,
    SidecarMode,
    WebhookConfigOwner,
)
from tokenbudget_operator.injector import handlers as webhook
from tokenbudget_operator.injector import metrics
from tokenbudget_operator.injector.injection import Action, Reason, decide
from tokenbudget_operator.injector.sidecar_spec import UpstreamKey
from tokenbudget_operator.injector.webhookconfig import client_config, mutating_webhook_configuration
from tokenbudget_operator.runtime import MEMO_KEY, Runtime
from tokenbudget_sidecar.settings import Settings as SidecarSettings

GOLDEN_DIR = Path(__file__).parent / "golden" / "injection"
UPDATE = os.environ.get("TOKENBUDGET_UPDATE_GOLDEN", "") not in ("", "0", "false")
CASES = sorted(path.stem for path in GOLDEN_DIR.glob("*.json"))
# The cases the issue asks for by name; deleting one of these files fails the suite.
REQUIRED_CASES = {
    "plain-pod", "pod-opted-out", "own-openai-base-url", "already-injected", "multi-container",
    "init-containers-native", "init-containers-classic", "host-network", "excluded-namespace-kube-system",
    "plain-pod-classic", "dry-run",
}  # fmt: skip


def load(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN_DIR / f"{case}.json").read_text())
    return data


def keys_of(data: dict[str, Any]) -> list[UpstreamKey]:
    """The case's keyed upstreams (`upstreamKeys`: what the budgets selecting the pod name), if any."""
    return [UpstreamKey(**k) for k in data.get("upstreamKeys", [])]


def run(data: dict[str, Any], pod: dict[str, Any] | None = None) -> dict[str, Any]:
    """The decision for a case's input (or for another pod under the same input), as recorded in the file."""
    config = InjectionConfig(**data["config"])
    decision = decide(
        copy.deepcopy(pod if pod is not None else data["pod"]),
        data["namespaceLabels"],
        config,
        admin_secret_present=data["adminTokenSecretPresent"],
        upstream_keys=keys_of(data),
    )
    return {
        "action": decision.action.value,
        "reason": decision.reason.value,
        "warning": decision.warning,
        "patch": decision.patch,
    }


def patched(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(data["pod"], data["expected"]["patch"], in_place=False)
    return result


INJECTED = [case for case in CASES if load(case).get("expected", {}).get("action") == Action.INJECT.value]


@pytest.mark.parametrize("case", CASES)
def test_each_golden_case_gives_the_recorded_decision_and_patch(case: str) -> None:
    data = load(case)
    actual = run(data)
    if UPDATE:
        data["expected"] = actual
        (GOLDEN_DIR / f"{case}.json").write_text(json.dumps(data, indent=2) + "\n")
        return
    assert "expected" in data, f"{case}.json has no expected output; regenerate (see the module docstring)"
    assert json.loads(json.dumps(actual)) == data["expected"]


def test_the_golden_cases_cover_every_row_of_the_decision_table() -> None:
    assert set(CASES) >= REQUIRED_CASES, f"missing golden cases: {sorted(REQUIRED_CASES - set(CASES))}"
    reasons = Counter(load(case)["expected"]["reason"] for case in CASES)
    every_row = {reason.value for reason in Reason} - {Reason.INTERNAL_ERROR.value}  # the handler's, not a row
    assert every_row - set(reasons) == set(), "decision table rows without a golden case"
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES)
def test_each_patch_applies_with_jsonpatch_and_gives_a_valid_pod(case: str) -> None:
    data = load(case)
    expected = data["expected"]
    if expected["action"] == Action.SKIP.value:
        assert expected["patch"] == []
        return
    pod = patched(data)
    assert_valid_pod(pod)
    native = InjectionConfig(**data["config"]).native_sidecar
    where = pod["spec"]["initContainers"] if native else pod["spec"]["containers"]
    sidecar = next(c for c in where if c["name"] == names.SIDECAR_CONTAINER)
    assert (sidecar.get("restartPolicy") == "Always") is native
    if native:
        assert pod["spec"]["initContainers"][0] is sidecar, "a native sidecar must start before other init containers"
    assert pod["metadata"]["annotations"][names.INJECTED_ANNOTATION] == names.INJECTION_CONTRACT_VERSION
    # Everything the pod had is still there, in place.
    original = data["pod"]
    assert [c["name"] for c in pod["spec"]["containers"][: len(original["spec"]["containers"])]] == [
        c["name"] for c in original["spec"]["containers"]
    ]
    for key, value in (original["metadata"].get("annotations") or {}).items():
        assert pod["metadata"]["annotations"][key] == value
    assert pod["metadata"].get("labels") == original["metadata"].get("labels")


@pytest.mark.parametrize("case", INJECTED)
def test_an_injected_pod_is_left_alone_when_seen_again(case: str) -> None:
    data = load(case)
    again = run(data, pod=patched(data))
    assert (again["action"], again["reason"], again["patch"]) == ("Skip", "AlreadyInjected", [])


@pytest.mark.parametrize("case", INJECTED)
def test_kopf_turns_our_patch_into_an_equivalent_one(case: str) -> None:
    """The webhook hands our operations to kopf as a patch function; kopf diffs and sends its own JSON patch."""
    data = load(case)
    patch = kopf.Patch(body=kopf.Body(copy.deepcopy(data["pod"])))
    patch.fns.append(lambda body: jsonpatch.apply_patch(body, data["expected"]["patch"], in_place=True))
    sent = patch.as_json_patch()
    assert jsonpatch.apply_patch(data["pod"], sent, in_place=False) == patched(data)


def test_a_dry_run_request_gets_the_same_patch_as_the_plain_pod() -> None:
    dry, plain = load("dry-run"), load("plain-pod")
    assert dry["dryRun"] is True
    assert dry["pod"] == plain["pod"]
    assert dry["expected"] == plain["expected"]


@pytest.mark.parametrize("case", INJECTED)
def test_app_containers_point_their_sdks_at_the_sidecar_keeping_their_own_values(case: str) -> None:
    data = load(case)
    config = InjectionConfig(**data["config"])
    pod = patched(data)
    for before, after in zip(data["pod"]["spec"]["containers"], pod["spec"]["containers"], strict=False):
        own = {e["name"]: e for e in before.get("env") or []}
        env = {e["name"]: e for e in after.get("env") or []}
        for dialect, upstream in config.sdk_upstreams.items():
            name = names.BASE_URL_ENV_BY_DIALECT[dialect]
            url = names.sidecar_base_url(upstream, dialect)
            if name in own and not config.overwrite_base_urls:
                assert env[name] == own[name]
            else:
                assert env[name] == {"name": name, "value": url}
        keyed = {names.PROVIDER_KEY_ENV_BY_DIALECT[d] for d, u in config.sdk_upstreams.items()
                 if u in {k.upstream for k in keys_of(data)}}
        for key in names.PROVIDER_KEY_ENVS:
            kept = key in own and not config.remove_provider_keys
            assert (key in env) == (kept or key in keyed)
            if key in env and not kept:
                assert env[key] == {"name": key, "value": names.PLACEHOLDER_API_KEY}, "a placeholder, not a key"


def test_upstream_key_secrets_are_mounted_into_the_sidecar_only_where_the_operator_points() -> None:
    data = load("upstream-keys")
    config = InjectionConfig(**data["config"])
    pod = patched(data)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == names.SIDECAR_CONTAINER)
    files = set()
    for mount in sidecar["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret and mount["name"].startswith(names.SIDECAR_KEY_VOLUME_PREFIX):
            assert mount["readOnly"] is True
            assert secret["optional"] is True, "a missing Secret must not keep the pod from starting"
            files |= {f"{mount['mountPath']}/{item['path']}" for item in secret["items"]}
    # The path the operator pushes as apiKeyFile (reconciler merge_rules: <keyDir>/<secret>/<key>).
    assert files == {f"{config.upstream_key_dir}/{k.secret}/{k.key}" for k in keys_of(data)}
    for container in pod["spec"]["containers"]:  # the app's: no key volume, placeholders or their own values
        mounts = [m["name"] for m in container.get("volumeMounts") or []]
        assert not any(m.startswith(names.SIDECAR_KEY_VOLUME_PREFIX) for m in mounts)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][1]["env"]}
    assert {env[v] for v in names.PROVIDER_KEY_ENV_BY_DIALECT.values()} == {names.PLACEHOLDER_API_KEY}


def test_the_admin_token_is_mounted_into_the_sidecar_only() -> None:
    pod = patched(load("multi-container"))
    for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        mounts = {m["name"] for m in container.get("volumeMounts") or []}
        assert (names.SIDECAR_ADMIN_TOKEN_VOLUME in mounts) is (container["name"] == names.SIDECAR_CONTAINER)


def test_every_env_var_set_in_the_sidecar_is_a_setting_the_sidecar_reads() -> None:
    sidecar = patched(load("plain-pod"))["spec"]["initContainers"][0]
    prefix = SidecarSettings.model_config.get("env_prefix", "")
    assert prefix == names.SIDECAR_ENV_PREFIX
    fields = {f"{prefix}{field}".upper() for field in SidecarSettings.model_fields}
    set_here = {e["name"] for e in sidecar["env"]}
    assert set_here <= fields, f"not sidecar settings: {sorted(set_here - fields)}"
    assert {names.SIDECAR_ENV_ADMIN_TOKEN_FILE, names.SIDECAR_ENV_LEDGER_DIR} <= set_here


def test_the_sidecar_runs_locked_down_with_probes_on_its_admin_port() -> None:
    sidecar = patched(load("plain-pod"))["spec"]["initContainers"][0]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == names.SIDECAR_READYZ_PATH
    assert sidecar["livenessProbe"]["httpGet"]["path"] == names.SIDECAR_HEALTHZ_PATH
    assert sidecar["ports"] == [
        {"name": names.SIDECAR_ADMIN_PORT_NAME, "containerPort": names.SIDECAR_ADMIN_PORT, "protocol": "TCP"}
    ]
    assert sidecar["resources"] == InjectionConfig().sidecar_resources


def assert_valid_pod(pod: dict[str, Any]) -> None:
    """What the apiserver would check and more: the client's schema, unique names, mounts that resolve."""
    ApiClient().deserialize(json.dumps(pod), "V1Pod", "application/json")  # raises on a schema violation
    spec = pod["spec"]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    all_names = [c["name"] for c in containers]
    assert len(all_names) == len(set(all_names)), f"duplicate container names: {all_names}"
    volumes = [v["name"] for v in spec.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"duplicate volumes: {volumes}"
    for container in containers:
        assert container.get("image"), container["name"]
        env = [e["name"] for e in container.get("env") or []]
        assert len(env) == len(set(env)), f"duplicate env in {container['name']}: {env}"
        for mount in container.get("volumeMounts") or []:
            assert mount["name"] in volumes, f"{container['name']} mounts missing volume {mount['name']}"
        ports = {p.get("name") for p in container.get("ports") or []}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = (container.get(probe) or {}).get("httpGet", {}).get("port")
            assert port is None or isinstance(port, int) or port in ports, f"{probe} port {port} not declared"
    for container in spec["containers"]:
        assert "restartPolicy" not in container, "restartPolicy belongs to native sidecars (init containers)"


# -- the webhook configuration: the apiserver must not even call for pods the table would skip ------------


def settings(**overrides: Any) -> OperatorSettings:
    base: dict[str, Any] = {"namespace": "tokenbudget-system", "webhook_url": "https://127.0.0.1:9443"}
    return OperatorSettings(**{**base, **overrides})


def test_the_webhook_configuration_selects_opted_in_namespaces_minus_excluded_ones_and_opted_out_pods() -> None:
    own = settings(excluded_namespaces=("batch-jobs",), timeout_seconds=3)
    body = mutating_webhook_configuration(own, client_config(own, b"CA"))
    (hook,) = body["webhooks"]
    assert hook["name"] == names.WEBHOOK_NAME_BY_NAMESPACE
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": names.INJECTION_LABEL, "operator": "In", "values": [names.INJECTION_ENABLED]},
        {
            "key": names.NAMESPACE_NAME_LABEL,
            "operator": "NotIn",
            "values": sorted(["batch-jobs", "kube-node-lease", "kube-public", "kube-system", "tokenbudget-system"]),
        },
    ]
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": names.INJECTION_LABEL, "operator": "NotIn", "values": [names.INJECTION_DISABLED]}
    ]
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"]) == ("Ignore", 3, "None")
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"][0]["operations"] == ["CREATE"]
    assert hook["clientConfig"] == {"url": f"https://127.0.0.1:9443/{names.WEBHOOK_ID}", "caBundle": "Q0E="}


def test_pod_opt_in_adds_a_second_webhook_disjoint_from_the_first() -> None:
    own = settings(allow_pod_opt_in=True, failure_policy=FailurePolicy.FAIL)
    by_namespace, by_object = mutating_webhook_configuration(own, client_config(own, b"CA"))["webhooks"]
    assert by_object["name"] == names.WEBHOOK_NAME_BY_OBJECT
    first = by_namespace["namespaceSelector"]["matchExpressions"][0]
    second = by_object["namespaceSelector"]["matchExpressions"][0]
    assert (first["operator"], second["operator"]) == ("In", "NotIn")
    assert set(first["values"]) <= set(second["values"]), "a namespace must not match both webhooks"
    assert by_object["objectSelector"]["matchExpressions"] == [
        {"key": names.INJECTION_LABEL, "operator": "In", "values": [names.INJECTION_ENABLED]}
    ]
    assert {by_namespace["failurePolicy"], by_object["failurePolicy"]} == {"Fail"}


def test_without_a_url_the_apiserver_calls_the_operators_service() -> None:
    own = settings(webhook_url=None, webhook_service="tb-webhook")
    assert client_config(own, b"CA")["service"] == {
        "name": "tb-webhook",
        "namespace": "tokenbudget-system",
        "port": 443,
        "path": f"/{names.WEBHOOK_ID}",
    }


def test_a_self_signed_certificate_requires_the_operator_to_own_the_configuration() -> None:
    with pytest.raises(ValueError, match="SelfSigned needs webhook_config_owner Operator"):
        settings(tls_source="SelfSigned")
    assert settings(tls_source="SelfSigned", webhook_config_owner=WebhookConfigOwner.OPERATOR)


@pytest.mark.parametrize(
    ("mode", "version", "native"),
    [
        (SidecarMode.AUTO, (1, 37), True),
        (SidecarMode.AUTO, (1, 29), True),
        (SidecarMode.AUTO, (1, 28), False),
        (SidecarMode.CLASSIC, (1, 37), False),
        (SidecarMode.NATIVE, (1, 28), True),
    ],
)
def test_native_sidecars_are_used_from_kubernetes_1_29_unless_the_mode_says_otherwise(
    mode: SidecarMode, version: tuple[int, int], native: bool
) -> None:
    assert settings(sidecar_mode=mode).native_sidecar(*version) is native


# -- the kopf handler: memory only, and never a denial ---------------------------------------------------


async def call_handler(pod: dict[str, Any], namespaces: dict[str, list[str]], config: InjectionConfig | None,
                       budgets: dict[str, list[Any]] | None = None) -> Any:
    state = Runtime(settings=settings(), injection=config)
    patch = kopf.Patch(body=kopf.Body(pod))
    warnings: list[str] = []
    record = metrics.AdmissionRecord()
    token = metrics.CURRENT.set(record)
    try:
        result = await webhook.inject_sidecar(
            body=kopf.Body(pod),
            patch=patch,
            dryrun=False,
            warnings=warnings,
            memo=kopf.Memo({MEMO_KEY: state}),
            tokenbudget_namespaces=namespaces,
            tokenbudget_admin_token_secrets={"team-a": [True]},
            tokenbudget_upstream_keys=budgets or {},
        )
    finally:
        metrics.CURRENT.reset(token)
    assert result is None  # kopf would deny the pod if the handler raised
    return patch.as_json_patch(), warnings, record


async def test_the_handler_injects_from_the_namespace_index_alone() -> None:
    data = load("plain-pod")
    sent, warnings, record = await call_handler(data["pod"], {"team-a": ["enabled"]}, InjectionConfig())
    assert jsonpatch.apply_patch(data["pod"], sent) == patched(data)
    assert warnings == []
    assert (record.action, record.reason) == ("Inject", "NamespaceOptedIn")
    assert (record.namespace, record.pod) == ("team-a", "chat")


async def test_the_handler_mounts_the_key_secrets_of_the_budgets_whose_selector_matches_the_pod() -> None:
    data = load("upstream-keys")
    index = await webhook.tokenbudget_upstream_keys(namespace="team-a", spec={
        "selector": {"matchLabels": {"app": "chat"}},
        "upstreams": [{"name": u, "baseURL": "https://example.com", "dialect": d,
                       "apiKeySecretRef": {"name": s, "key": k}}
                      for s, k, u, d in [("llm-keys", "openai", "openai", "OpenAI"),
                                         ("llm-keys", "anthropic", "anthropic", "Anthropic"),
                                         ("gemini-key", "api-key", "gemini", "Gemini")]]})
    other = await webhook.tokenbudget_upstream_keys(namespace="team-a", spec={
        "selector": {"matchLabels": {"app": "batch"}},
        "upstreams": [{"name": "openai", "baseURL": "https://example.com", "dialect": "OpenAI",
                       "apiKeySecretRef": {"name": "batch-keys", "key": "openai"}}]})
    assert await webhook.tokenbudget_upstream_keys(namespace="team-a", spec={"selector": {}}) == {}
    budgets = {"team-a": [index["team-a"], other["team-a"]]}
    sent, _, _ = await call_handler(data["pod"], {"team-a": ["enabled"]}, InjectionConfig(), budgets)
    assert jsonpatch.apply_patch(data["pod"], sent) == patched(data), "the batch budget's Secret is not mounted"


async def test_the_handler_admits_unchanged_with_a_warning_when_the_namespace_is_not_indexed_yet() -> None:
    sent, warnings, record = await call_handler(load("plain-pod")["pod"], {}, InjectionConfig())
    assert sent == []
    assert record.reason == "NamespaceUnknown"
    assert len(warnings) == 1
    assert "not known to the operator" in warnings[0]


async def test_the_handler_admits_unchanged_with_a_warning_when_the_decision_fails() -> None:
    pod = load("plain-pod")["pod"]
    pod["spec"]["containers"] = "not a list"  # what no apiserver sends: the decision code raises
    sent, warnings, record = await call_handler(pod, {"team-a": ["enabled"]}, InjectionConfig())
    assert sent == []
    assert record.reason == Reason.INTERNAL_ERROR.value
    assert warnings == ["tokenbudget: sidecar not injected: operator error (see its log)"]


async def test_the_handler_admits_unchanged_before_startup_has_set_the_config() -> None:
    sent, warnings, record = await call_handler(load("plain-pod")["pod"], {"team-a": ["enabled"]}, None)
    assert (sent, record.reason) == ([], Reason.INTERNAL_ERROR.value)
    assert warnings
