"""The HTTPS server the apiserver sends admission reviews to, plugged into kopf as `settings.admission.server`.

Our own rather than `kopf.WebhookServer`, for three reasons:
- a rotated certificate is swapped into the live listener (an SNI callback picks the newest SSL context, and
  OpenSSL calls it even when the client sends no SNI, as the apiserver does for IP URLs); kopf's server
  closes and reopens its socket, and with `reuse_port` a second operator could silently share the port;
- every review is timed and logged once with the decision (kopf logs "succeeded" without either);
- the MutatingWebhookConfiguration is ours to write (see webhookconfig.py), when we own it.

It follows kopf's protocol: called with kopf's admission function, it yields client configs (URL/Service and
caBundle) each time they change. kopf's own configuration manager stays off (`settings.admission.managed`
is None); `on_client_config` writes the configuration instead, if the operator owns it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from kopf import WebhookClientConfig, WebhookFn

# Private, as kopf's own WebhookServer uses it: kopf exports no error types for custom servers.
from kopf._core.engines import admission

from tokenbudget_operator.injector import metrics
from tokenbudget_operator.injector.certs import CertMaterial, CertSource, server_context

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("tokenbudget_operator.admission")

ClientConfigFn = Callable[[CertMaterial], dict[str, Any]]
ApplyFn = Callable[[dict[str, Any]], Awaitable[None]]


class AdmissionServer:
    """kopf's WebhookServerProtocol: serve `fn` over TLS on host:port until cancelled."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        certs: CertSource,
        client_config: ClientConfigFn,
        before_serving: Callable[[], Awaitable[None]] | None = None,
        on_client_config: ApplyFn | None = None,
        on_ready: Callable[[bool], None] | None = None,
        retry_seconds: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self._certs = certs
        self._client_config = client_config
        self._before_serving = before_serving
        self._on_client_config = on_client_config
        self._on_ready = on_ready
        self._retry_seconds = retry_seconds
        self._context: ssl.SSLContext | None = None

    async def __call__(self, fn: WebhookFn) -> AsyncIterator[WebhookClientConfig]:
        if self._before_serving is not None:
            await self._before_serving()
        material = self._certs.current()
        self._context = server_context(material)
        listener = server_context(material)  # holds the socket; hands each handshake to the newest context
        listener.sni_callback = self._pick_context

        async def serve(request: web.Request) -> web.StreamResponse:
            return await _serve(fn, request)

        app = web.Application(middlewares=[_measure], client_max_size=8 * 1024 * 1024)
        app.router.add_post("/{id:.*}", serve)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=listener, reuse_address=True)
            await site.start()
            logger.info("webhook server listening on https://%s:%d", self.host, self.port)
            config = self._client_config(material)
            await self._publish(config)
            yield cast(WebhookClientConfig, config)
            while True:
                await self._certs.wait_for_change()
                try:
                    fresh = self._certs.current()
                    context = server_context(fresh)
                except (OSError, ValueError, ssl.SSLError) as exc:  # e.g. files caught mid-rotation
                    logger.warning("webhook TLS reload failed, serving the previous certificate: %s", exc)
                    continue
                self._context = context
                metrics.TLS_RELOADS.inc()
                logger.info("webhook certificate reloaded; valid until %s", fresh.not_after.isoformat())
                if fresh.ca_pem != material.ca_pem:
                    config = self._client_config(fresh)
                    await self._publish(config)
                    yield cast(WebhookClientConfig, config)
                material = fresh
        finally:
            if self._on_ready is not None:
                self._on_ready(False)
            await runner.cleanup()

    def _pick_context(self, sslobj: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if self._context is not None and sslobj.context is not self._context:
            sslobj.context = self._context

    async def _publish(self, config: dict[str, Any]) -> None:
        """Hand the client config to the owner of the webhook configuration, retrying until it is written."""
        if self._on_client_config is not None:
            while True:
                try:
                    await self._on_client_config(config)
                    break
                except Exception as exc:  # an API outage must not kill the server: retry
                    metrics.CONFIGURATION_WRITES.labels(result="error").inc()
                    logger.error("writing the webhook configuration failed (retrying): %s", exc)
                    await asyncio.sleep(self._retry_seconds)
        if self._on_ready is not None:
            self._on_ready(True)


@web.middleware
async def _measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time each review, count it by status, and log one line with the decision the handler recorded."""
    record = metrics.AdmissionRecord()
    token = metrics.CURRENT.set(record)
    started = time.perf_counter()
    code = 500
    try:
        response = await handler(request)
        code = response.status
        return response
    except web.HTTPException as exc:
        code = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        metrics.CURRENT.reset(token)
        metrics.REQUEST_SECONDS.observe(elapsed)
        metrics.REQUESTS.labels(code=str(code)).inc()
        access_logger.info(
            "admission %s/%s: %s %s in %.2f ms",
            record.namespace, record.pod, record.action or "-", record.reason or "-", elapsed * 1000,
            extra={
                "namespace": record.namespace,
                "pod": record.pod,
                "action": record.action,
                "reason": record.reason,
                "dry_run": record.dry_run,
                "status": code,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )  # fmt: skip


async def _serve(fn: WebhookFn, request: web.Request) -> web.StreamResponse:
    """One review through kopf (which calls our handler), mapped to HTTP as kopf's own server does."""
    try:
        review = json.loads(await request.read())
        response = await fn(
            review,
            webhook=request.match_info.get("id"),
            headers=dict(request.headers),
            sslpeer=request.transport.get_extra_info("peercert") if request.transport else None,
        )
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from exc
    except admission.AmbiguousResourceError as exc:
        raise web.HTTPConflict(reason=str(exc) or None) from exc
    except admission.UnknownResourceError as exc:
        raise web.HTTPNotFound(reason=str(exc) or None) from exc
    except admission.WebhookError as exc:
        raise web.HTTPBadRequest(reason=str(exc) or None) from exc
    return web.json_response(response)
