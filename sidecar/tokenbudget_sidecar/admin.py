"""The admin port: health, metrics, policy push and usage pull for the operator.

Bearer-token protected (the token is a file mounted only into the sidecar container); /healthz,
/readyz and /metrics stay open so kubelet probes and Prometheus need no secret.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenbudget_api import names
from tokenbudget_api.admin import (
    AdminError,
    BudgetsAnswer,
    Health,
    PolicyApplied,
    Readiness,
    UsageAck,
    UsageAcked,
    UsagePage,
)
from tokenbudget_api.common import ApiModel
from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar.drain import DRAIN, Drain, drain
from tokenbudget_sidecar.state import STATE, State
from tokenbudget_sidecar.tokens import TOKENIZER

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", names.SIDECAR_DRAIN_PATH})  # drain: kubelet preStop


def _token(state: State) -> str | None:
    path = state.settings.admin_token_file
    return path.read_text(encoding="utf-8").strip() if path else None


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        expected = _token(request.app[STATE])
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if expected == "":  # an empty Secret must not open the port: an empty header would match it
            return _error(401, "the admin token file is empty: every call is refused until it holds a token")
        if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
            return _error(401, "missing or wrong bearer token")
    return await handler(request)


def _answer(model: ApiModel, status: int = 200) -> web.Response:
    return web.json_response(model.dump(), status=status)


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    return _answer(AdminError(error=message, details=details), status)


async def healthz(request: web.Request) -> web.Response:
    return _answer(Health())


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    detail = list(TOKENIZER.degraded)
    waiting = state.policy_wait_left()
    if waiting > 0:
        detail.append(f"waiting for the operator's first policy push ({waiting:.0f} s more at most)")
    elif state.awaiting_policy:
        detail.append(f"no policy pushed after {state.settings.await_policy_s:g} s: serving with failMode "
                      f"{state.settings.pending_fail_mode.value} until the operator's first push")
    ready = state.session is not None and waiting == 0
    return _answer(Readiness(ready=ready, policy_version=state.policy.version, detail=detail),
                   200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def get_policy(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].policy.model_dump(mode="json", by_alias=True))


async def put_policy(request: web.Request) -> web.Response:
    """Apply a policy; the same version twice is a no-op that answers the version already applied."""
    state = request.app[STATE]
    try:
        policy = SidecarPolicy.model_validate(await request.json())
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for a body that is not UTF-8
        return _error(400, f"policy is not valid JSON: {exc}")
    except pydantic.ValidationError as exc:
        return _error(422, "invalid policy", json.loads(exc.json()))
    changed = policy.version != state.policy.version
    if changed:
        state.apply(policy)
    return _answer(PolicyApplied(applied=state.policy.version, changed=changed))


async def get_budgets(request: web.Request) -> web.Response:
    """Per-budget windows, stage, leases and dry-run counts; alerts after a cursor (`?alertsAfter=`);
    `?keys=fullest`: of each per-key limit only its fullest key (the operator's lease rounds)."""
    admission = request.app[STATE].admission
    fullest = request.query.get("keys") == "fullest"
    try:
        after = int(request.query.get("alertsAfter", "0"))
    except ValueError:
        return _error(400, "alertsAfter must be an integer")
    alerts = sorted((a for b in admission.budgets for a in b.alerts if a.seq > after), key=lambda a: a.seq)
    return _answer(BudgetsAnswer(budgets=[b.report(fullest) for b in admission.budgets], alerts=alerts))


async def get_thinking(request: web.Request) -> web.Response:
    """Per ThinkTier: ClassStatus-shaped class figures, recommendations, conditions, unclassified share.

    Each class also carries its quantile sketch (`histogram`), so the operator can merge the pods a
    ThinkTier selects exactly before it writes status.
    """
    return _answer(request.app[STATE].thinking.report())


async def get_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        cursor = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "1000")), 10_000)
    except ValueError:
        return _error(400, "after and limit must be integers")
    request.app[DRAIN].operator_seen = True
    await state.usage_log.flush()  # records settle-ms old are fsynced and shown, not left for the next pull
    records = state.usage_log.after(cursor, limit)
    return _answer(UsagePage(
        records=records, cursor=records[-1].seq if records else max(cursor, state.usage_log.acked),
        last_seq=state.usage_log.last_seq,
        policy_version=state.policy.version,  # a restarted sidecar runs its default: the operator re-pushes
    ))


async def ack_usage(request: web.Request) -> web.Response:
    try:
        cursor = UsageAck.model_validate(await request.json()).cursor
    except (ValueError, pydantic.ValidationError):
        return _error(400, 'body must be {"cursor": <int>}')
    remaining = await request.app[STATE].acknowledge(cursor)  # the checkpoint is stored first
    request.app[DRAIN].on_ack()
    return _answer(UsageAcked(acked=cursor, remaining=remaining))


def create_admin_app(state: State) -> web.Application:
    app = web.Application(middlewares=[require_token])
    app[STATE] = state
    app[DRAIN] = Drain()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/policy", get_policy)
    app.router.add_put("/policy", put_policy)
    app.router.add_get("/usage", get_usage)
    app.router.add_get("/budgets", get_budgets)
    app.router.add_get("/thinking", get_thinking)
    app.router.add_post("/usage/ack", ack_usage)
    app.router.add_get(names.SIDECAR_DRAIN_PATH, drain)
    return app
