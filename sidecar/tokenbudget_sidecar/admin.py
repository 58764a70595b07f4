"""The admin port: health, metrics, policy push and usage pull for the operator.

Bearer-token protected (the token is a file mounted only into the sidecar container); /healthz,
/readyz and /metrics stay open so kubelet probes and Prometheus need no secret.
"""

from __future__ import annotations

import hmac
import json

import pydantic
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tokenbudget_api import names
from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar.drain import DRAIN, Drain, drain
from tokenbudget_sidecar.proxy import STATE, State

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", names.SIDECAR_DRAIN_PATH})  # drain: kubelet preStop


def _token(state: State) -> str | None:
    path = state.settings.admin_token_file
    return path.read_text(encoding="utf-8").strip() if path else None


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in OPEN_PATHS:
        expected = _token(request.app[STATE])
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ready = state.session is not None
    return web.json_response({"ready": ready, "policyVersion": state.policy.version}, status=200 if ready else 503)


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
    except json.JSONDecodeError as exc:
        return web.json_response({"error": f"policy is not valid JSON: {exc}"}, status=400)
    except pydantic.ValidationError as exc:
        return web.json_response({"error": "invalid policy", "details": json.loads(exc.json())}, status=422)
    changed = policy.version != state.policy.version
    if changed:
        state.apply(policy)
    return web.json_response({"applied": state.policy.version, "changed": changed})


async def get_budgets(request: web.Request) -> web.Response:
    """Per-budget windows, stage, leases and dry-run counts; alerts after a cursor (`?alertsAfter=`);
    `?keys=fullest`: of each per-key limit only its fullest key (the operator's lease rounds)."""
    admission = request.app[STATE].admission
    fullest = request.query.get("keys") == "fullest"
    try:
        after = int(request.query.get("alertsAfter", "0"))
    except ValueError:
        return web.json_response({"error": "alertsAfter must be an integer"}, status=400)
    alerts = [
        {"seq": a.seq, "budget": a.budget, "window": a.window, "stage": a.stage.value, "percent": a.percent,
         "time": a.time.isoformat()}
        for b in admission.budgets for a in b.alerts if a.seq > after
    ]
    return web.json_response({"budgets": [b.snapshot(fullest) for b in admission.budgets],
                              "alerts": sorted(alerts, key=lambda a: int(str(a["seq"])))})


async def get_thinking(request: web.Request) -> web.Response:
    """Per ThinkTier: ClassStatus-shaped class figures, recommendations, conditions, unclassified share.

    Each class also carries its quantile sketch (`histogram`), so the operator can merge the pods a
    ThinkTier selects exactly before it writes status.
    """
    return web.json_response(request.app[STATE].thinking.snapshot())


async def get_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        cursor = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "1000")), 10_000)
    except ValueError:
        return web.json_response({"error": "after and limit must be integers"}, status=400)
    request.app[DRAIN].operator_seen = True
    await state.usage_log.flush()  # records settle-ms old are fsynced and shown, not left for the next pull
    records = state.usage_log.after(cursor, limit)
    return web.json_response({
        "records": [r.model_dump(mode="json") for r in records],
        "cursor": records[-1].seq if records else max(cursor, state.usage_log.acked),
        "lastSeq": state.usage_log.last_seq,
        "policyVersion": state.policy.version,  # a restarted sidecar runs its default: the operator re-pushes
    })


async def ack_usage(request: web.Request) -> web.Response:
    try:
        cursor = int((await request.json())["cursor"])
    except (ValueError, KeyError, TypeError):
        return web.json_response({"error": 'body must be {"cursor": <int>}'}, status=400)
    remaining = await request.app[STATE].acknowledge(cursor)  # the checkpoint is stored first
    request.app[DRAIN].on_ack()
    return web.json_response({"acked": cursor, "remaining": remaining})


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
