"""kopf handlers of the sidecar injector: in-memory indexes, startup wiring, and the mutating handler.

The admission path reads only memory: namespace labels and which namespaces hold the admin token Secret come
from kopf indexes fed by watches. Anything unexpected (a bug, a missing index entry) admits the pod unchanged
with a warning; the handler never raises, because kopf turns a raising handler into a denied pod.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jsonpatch
import kopf

from tokenbudget_api import names
from tokenbudget_operator import kube
from tokenbudget_operator.config import OperatorSettings, TLSSource, WebhookConfigOwner
from tokenbudget_operator.injector import metrics
from tokenbudget_operator.injector.ca_secret import CASecretSource, CATiming
from tokenbudget_operator.injector.certs import CertSource, SecretDirSource, SelfSignedSource
from tokenbudget_operator.injector.injection import Action, Decision, JSONPatchOp, Reason, decide
from tokenbudget_operator.injector.server import AdmissionServer
from tokenbudget_operator.injector.sidecar_spec import BudgetKeys, budget_keys, keys_for_pod
from tokenbudget_operator.injector.webhookconfig import client_config, mutating_webhook_configuration
from tokenbudget_operator.runtime import runtime

logger = logging.getLogger(__name__)

NamespaceIndex = kopf.Index[str, str]  # namespace name → its injection label value ("" when unlabelled)
SecretIndex = kopf.Index[str, bool]  # namespace name → True when it holds the admin token Secret
KeysIndex = kopf.Index[str, BudgetKeys]  # namespace → (selector, keyed upstreams) of each budget naming keys


@kopf.index("namespaces", id="tokenbudget_namespaces")
async def tokenbudget_namespaces(name: str, labels: Mapping[str, str], **_: Any) -> dict[str, str]:
    return {name: labels.get(names.INJECTION_LABEL, "")}


def _is_admin_token_secret(name: str, memo: Any, **_: Any) -> bool:
    return bool(name == runtime(memo).settings.admin_token_secret)


@kopf.index("secrets", id="tokenbudget_admin_token_secrets", when=_is_admin_token_secret)
async def tokenbudget_admin_token_secrets(namespace: str | None, **_: Any) -> dict[str, bool]:
    # Only the namespace is kept: the token itself never enters the index.
    return {namespace: True} if namespace else {}


@kopf.index(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL, id="tokenbudget_upstream_keys")
async def tokenbudget_upstream_keys(namespace: str | None, spec: Mapping[str, Any], **_: Any) -> dict[str, BudgetKeys]:
    """Budgets whose upstreams name a key Secret: the webhook mounts those Secrets into the sidecar.
    Names only: the keys themselves are never read by the operator."""
    found = budget_keys(spec)
    return {namespace: found} if namespace and found is not None else {}


# The ignores: kopf's callback protocols do not know the keyword arguments our indexes add.
@kopf.on.mutate(  # type: ignore[arg-type]
    "pods",
    id=names.WEBHOOK_ID,
    operations=["CREATE"],
    side_effects=False,
    ignore_failures=True,
)
async def inject_sidecar(
    body: kopf.Body,
    patch: kopf.Patch,
    dryrun: bool,
    warnings: list[str],
    memo: Any,
    tokenbudget_namespaces: NamespaceIndex,
    tokenbudget_admin_token_secrets: SecretIndex,
    tokenbudget_upstream_keys: KeysIndex,
    **_: Any,
) -> None:
    """Decide from memory and add the patch; admit unchanged (with a warning) on any error."""
    metadata: Mapping[str, Any] = body.get("metadata") or {}
    namespace: str = metadata.get("namespace") or ""
    record = metrics.CURRENT.get() or metrics.AdmissionRecord()
    record.namespace = namespace
    record.pod = metadata.get("name") or metadata.get("generateName") or ""
    record.dry_run = bool(dryrun)
    try:
        config = runtime(memo).injection
        if config is None:
            raise RuntimeError("the injection config is not set: startup has not finished")
        decision = decide(
            body,
            _namespace_labels(tokenbudget_namespaces, namespace),
            config,
            admin_secret_present=namespace in tokenbudget_admin_token_secrets,
            upstream_keys=keys_for_pod(tokenbudget_upstream_keys.get(namespace, ()), metadata.get("labels") or {}),
        )
    except Exception:
        logger.exception("injection decision failed for a pod in %r; admitting it unchanged", namespace)
        decision = Decision(
            Action.SKIP, Reason.INTERNAL_ERROR, "tokenbudget: sidecar not injected: operator error (see its log)"
        )
    if decision.warning:
        warnings.append(decision.warning)
    if decision.patch:
        patch.fns.append(functools.partial(_apply, decision.patch))
    record.action, record.reason = decision.action.value, decision.reason.value
    metrics.ADMISSIONS.labels(
        action=decision.action.value, reason=decision.reason.value, dry_run=str(bool(dryrun)).lower()
    ).inc()


def _namespace_labels(index: NamespaceIndex, namespace: str) -> dict[str, str] | None:
    """The namespace's injection label as a labels mapping; None when the index has not seen it."""
    if namespace not in index:
        return None
    value = next(iter(index[namespace]), "")
    return {names.INJECTION_LABEL: value} if value else {}


def _apply(ops: list[JSONPatchOp], body: dict[str, Any]) -> None:
    """kopf diffs the body before and after its patch functions into the JSON patch it sends back."""
    jsonpatch.apply_patch(body, [dict(op) for op in ops], in_place=True)


@kopf.on.startup(id="tokenbudget-webhook")  # type: ignore[arg-type]
async def start_webhook(
    settings: kopf.OperatorSettings,
    memo: Any,
    tokenbudget_namespaces: NamespaceIndex,
    tokenbudget_admin_token_secrets: SecretIndex,
    tokenbudget_upstream_keys: KeysIndex,
    **_: Any,
) -> None:
    """Read the cluster version, pick the TLS source, and plug our server into kopf."""
    state = runtime(memo)
    own = state.settings
    # Server-side: the watch sees only Secrets with that name (RBAC can restrict it by resourceNames too).
    settings.watching.field_selectors["secrets"] = f"metadata.name={own.admin_token_secret}"
    logging.getLogger("kopf.objects").addFilter(_QuietAdmissions())

    api = await asyncio.to_thread(kube.api_client)
    major, minor, git_version = await asyncio.to_thread(kube.server_version, api)
    native = own.native_sidecar(major, minor)
    state.server_version = git_version
    state.injection = own.injection_config(native_sidecar=native)
    logger.info(
        "cluster %s: sidecar injected as a %s container (mode %s)",
        git_version, "native sidecar" if native else "classic", own.sidecar_mode.value,
    )  # fmt: skip

    certs = _cert_source(own, api)

    async def before_serving() -> None:
        await _wait_for_indexes(api, own, tokenbudget_namespaces, tokenbudget_admin_token_secrets,
                                tokenbudget_upstream_keys)
        if isinstance(certs, CASecretSource):
            await certs.start()  # the CA from its Secret, the caBundle published: then the listener

    async def write_configuration(client: dict[str, Any]) -> None:
        body = mutating_webhook_configuration(own, client)
        result = await asyncio.to_thread(kube.apply_mutating_webhook_configuration, api, body)
        metrics.CONFIGURATION_WRITES.labels(result=result).inc()
        logger.info("MutatingWebhookConfiguration %s: %s", own.webhook_configuration_name, result)

    def set_ready(ready: bool) -> None:
        state.readiness["webhook"] = ready

    state.readiness["webhook"] = False
    settings.admission.managed = None  # kopf's manager cannot set namespaceSelector; see webhookconfig.py
    settings.admission.server = AdmissionServer(
        host=own.webhook_listen_host,
        port=own.webhook_port,
        certs=certs,
        client_config=lambda material: client_config(own, material.ca_pem),
        before_serving=before_serving,
        on_client_config=write_configuration if own.webhook_config_owner is WebhookConfigOwner.OPERATOR else None,
        on_ready=set_ready,
    )


def _cert_source(own: OperatorSettings, api: Any) -> CertSource:
    if own.tls_source is TLSSource.SECRET_DIR:
        return SecretDirSource(own.tls_dir, interval=own.tls_reload_interval_s)
    if own.tls_source is TLSSource.SELF_SIGNED:
        return SelfSignedSource(self_signed_hosts(own))
    return ca_secret_source(own, api)


def ca_secret_source(own: OperatorSettings, api: Any) -> CASecretSource:
    """The CASecret source over the API: the Secret by name, and the caBundle patched when the install owns
    the configuration (else the server writes the whole configuration and the bundle is only read back)."""
    name = own.webhook_configuration_name

    async def bundles(bundle: bytes) -> dict[str, bytes] | None:
        if own.webhook_config_owner is WebhookConfigOwner.INSTALL:
            return await asyncio.to_thread(kube.set_webhook_ca_bundle, api, name, bundle)
        return await asyncio.to_thread(kube.webhook_ca_bundles, api, name)

    async def read_secret() -> tuple[dict[str, bytes], str] | None:
        return await asyncio.to_thread(kube.read_secret_data, api, own.namespace, own.ca_secret)

    async def write_secret(data: dict[str, bytes], version: str) -> bool:
        return await asyncio.to_thread(kube.write_secret_data, api, own.namespace, own.ca_secret, data, version)

    second = datetime.timedelta(seconds=1)
    timing = CATiming(
        ca_valid_for=own.ca_validity_s * second, ca_renew_before=own.ca_renew_before_s * second,
        cert_valid_for=own.cert_validity_s * second, cert_renew_before=own.cert_renew_before_s * second,
        propagation=own.ca_propagation_s * second,
    )  # fmt: skip
    return CASecretSource(self_signed_hosts(own), read_secret=read_secret, write_secret=write_secret,
                          bundles=bundles, timing=timing, interval=own.tls_reload_interval_s,
                          secret_name=own.ca_secret)


def self_signed_hosts(own: OperatorSettings) -> list[str]:
    """SANs for a self-signed certificate: the URL's host, the listen address, the Service's DNS names."""
    hosts: list[str] = []
    if own.webhook_url:
        hosts.append(urllib.parse.urlsplit(own.webhook_url).hostname or "")
    if own.webhook_listen_host not in ("", "0.0.0.0", "::"):
        hosts.append(own.webhook_listen_host)
    service, namespace = own.webhook_service, own.namespace
    hosts += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    hosts.append(f"{service}.{namespace}.svc.cluster.local")
    hosts += own.tls_extra_sans
    return [host for host in dict.fromkeys(hosts) if host]


async def _wait_for_indexes(api: Any, own: OperatorSettings, namespaces: NamespaceIndex, secrets: SecretIndex,
                            keys: KeysIndex) -> None:
    """Hold the listener until kopf's indexes hold what the API listed at startup (bounded by a timeout).

    kopf starts webhook servers without waiting for indexes; answering before they are filled would admit
    pods of opted-in namespaces unchanged ("namespace unknown").
    """
    deadline = time.monotonic() + own.index_wait_timeout_s
    try:
        want_namespaces = await asyncio.to_thread(kube.namespace_names, api)
        want_secrets = await asyncio.to_thread(kube.namespaces_with_secret, api, own.admin_token_secret)
        want_keys = await asyncio.to_thread(kube.namespaces_with_keyed_budgets, api)  # else: pods without keys
    except Exception as exc:  # serve anyway: unknown namespaces are admitted unchanged, with a warning
        logger.warning("could not list what the indexes should hold, serving without waiting: %s", exc)
        return
    while True:
        missing = {n for n in want_namespaces if n not in namespaces} | {n for n in want_secrets if n not in secrets}
        missing |= {n for n in want_keys if n not in keys}
        if not missing:
            logger.info("indexes ready: %d namespaces, %d admin token secrets", len(namespaces), len(secrets))
            return
        if time.monotonic() >= deadline:
            logger.warning("serving before the indexes caught up; missing %d, e.g. %s", len(missing), min(missing))
            return
        await asyncio.sleep(0.05)


class _QuietAdmissions(logging.Filter):
    """Drop kopf's per-review "Webhook 'inject-sidecar' succeeded." line: the server logs each review once."""

    _prefix = f"Webhook {names.WEBHOOK_ID!r} succeeded"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith(self._prefix))
