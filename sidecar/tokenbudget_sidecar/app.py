"""App factories: the data app (the proxy) and the admin app share one State."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from importlib import resources

import aiohttp
from aiohttp import web

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.admin import create_admin_app
from tokenbudget_sidecar.metrics import Metrics
from tokenbudget_sidecar.proxy import Proxy
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.state import STATE, State
from tokenbudget_sidecar.usage_log import UsageLog

log = logging.getLogger(__name__)


def load_policy(settings: Settings) -> SidecarPolicy:
    """The policy file in standalone mode, else the embedded default (public endpoints, no budget)."""
    if settings.policy_file is not None:
        return SidecarPolicy.load(settings.policy_file)
    with resources.as_file(resources.files("tokenbudget_sidecar") / "default_policy.yaml") as path:
        return SidecarPolicy.load(path)


def create_state(settings: Settings, policy: SidecarPolicy | None = None) -> State:
    """The shared state; with `settings.ledger_dir` the usage log is durable and replays the ledger here."""
    policy = policy or load_policy(settings)  # before the ledger is locked, so a bad policy leaves it free
    metrics = Metrics()
    usage_log = UsageLog.from_settings(settings)
    usage_log.register_metrics(metrics.registry)
    return State(settings=settings, policy=policy, metrics=metrics, usage_log=usage_log)


def data_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The data port's TLS context when the settings name a certificate (google-genai's Live API needs wss)."""
    if settings.data_tls_cert_file is None or settings.data_tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.data_tls_cert_file, settings.data_tls_key_file)
    return context


def _every(name: str, seconds: float, job: Callable[[], object]) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running `job` every `seconds` for the app's life: the safety nets that must act when no
    call comes (a hold no call settled, a background Response nobody retrieves). A failing run is logged and
    the timer goes on, so one bug cannot leave every later hold or deferral in place."""
    seconds = max(seconds, 0.01)  # a tiny TTL in a test never spins

    async def sweep() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                job()
            except Exception:
                log.exception("timer %s failed", name)

    async def run(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sweep(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return run


def create_app(settings: Settings, state: State | None = None) -> web.Application:
    """The data app. The admin app for the same state: `create_admin_app(app[STATE])`."""
    state = state or create_state(settings)
    app = web.Application(client_max_size=settings.max_body_bytes + 1, handler_args={"max_field_size": 65536})
    app[STATE] = state

    async def client_session(_: web.Application) -> AsyncIterator[None]:
        tokens.TOKENIZER.allow_download = settings.tiktoken_download
        if settings.prompt_count == "Exact":
            await asyncio.to_thread(tokens.preload)  # never raises: without its file, counts use the byte bound
        else:
            tokens.TOKENIZER.check("o200k_base")  # no load: a missing file is said in /readyz at once
        retry = asyncio.create_task(tokens.retry_loop(settings.tokenizer_retry_s))
        connector = aiohttp.TCPConnector(limit=settings.pool_size, limit_per_host=0, ttl_dns_cache=300,
                                         enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout_s,
                                        sock_connect=settings.connect_timeout_s,
                                        sock_read=settings.read_timeout_s)
        state.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))
        yield
        retry.cancel()
        await state.session.close()
        state.session = None
        await asyncio.to_thread(state.usage_log.close)  # a clean stop leaves every record fsynced

    app.cleanup_ctx.append(client_session)
    # The safety net behind reservation_ttl_s: a hold no call settled (a bug, a lost task) is released.
    app.cleanup_ctx.append(_every("tokenbudget-hold-expiry", min(60.0, settings.reservation_ttl_s / 4),
                                  lambda: state.admission.expire()))  # the admission in force at each run
    proxy = Proxy(state)
    app.cleanup_ctx.append(_every("tokenbudget-deferral-expiry", min(60.0, settings.deferral_ttl_s / 4),
                                  proxy.background.expire))  # background Responses nobody retrieves age out
    app.router.add_post("/outcomes", proxy.features.outcomes)  # acceptance reports (feature_hooks.py)
    app.router.add_route("*", "/{upstream}/{tail:.*}", proxy.handle)
    return app


__all__ = ["STATE", "create_admin_app", "create_app", "create_state", "data_ssl_context"]
