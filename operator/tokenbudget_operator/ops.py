"""The operator's plain-HTTP operations port: /metrics (Prometheus), /healthz and /readyz.

Separate from the webhook's TLS listener so Prometheus and kubelet probes need no certificate; every module's
metrics are in prometheus_client's default registry and show up here.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from tokenbudget_operator.runtime import Runtime, runtime

logger = logging.getLogger(__name__)
RUNTIME = web.AppKey("runtime", Runtime)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"content-type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[RUNTIME]
    return web.json_response({"ready": state.ready, "components": state.readiness}, status=200 if state.ready else 503)


def create_app(state: Runtime) -> web.Application:
    app = web.Application()
    app[RUNTIME] = state
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


@kopf.on.startup(id="tokenbudget-ops-server")
async def start_ops_server(memo: Any, **_: Any) -> None:
    state = runtime(memo)
    host, port = state.settings.metrics_host, state.settings.metrics_port
    if port == 0:
        return
    runner = web.AppRunner(create_app(state), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    state.cleanups.append(runner.cleanup)
    logger.info("operations endpoint on http://%s:%d (/metrics, /healthz, /readyz)", host, port)


@kopf.on.cleanup(id="tokenbudget-cleanups")
async def run_cleanups(memo: Any, **_: Any) -> None:
    state = runtime(memo)
    while state.cleanups:
        await state.cleanups.pop()()
