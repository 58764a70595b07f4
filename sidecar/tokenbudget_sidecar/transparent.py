"""Routes the sidecar does not meter, forwarded as they are: an injected app keeps every SDK method.

Injection points every SDK of the pod at the sidecar, so a route it does not meter must still work
exactly as at the provider: method, query, headers, the body streamed both ways (multipart uploads
included, capped only by `max_body_bytes`), and the provider's answer, errors included.

Reads (GET, HEAD, OPTIONS), deletes of stored objects (files, responses, batches) and free calls (model lists,
token counting, moderations) bill nothing: no record. Any
other call to an unmetered route (a file upload for a batch, a batch's creation) may be billed without its
answer saying so: it gets a record with `source: unmetered` and its route, and counts in
`tokenbudget_unmetered_calls_total`. A budget with `unmeteredRoutes: Deny` refuses those with a 403 in the
provider's shape naming the route.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_api.tokenbudget import Enforcement, UnmeteredRoutes
from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource
from tokenbudget_sidecar.dialects import Dialect
from tokenbudget_sidecar.headers import (
    KeyUnavailable,
    client_headers,
    error_response,
    key_unavailable,
    upstream_headers,
)
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.upstream_url import forward_url

UNBILLED_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})  # reads, and deletes of stored objects
STATIC_SEGMENT = re.compile(r"^(?:[A-Za-z_\-]+|v\d+(?:alpha|beta)?\d*)$")  # words and API versions
MAX_ROUTE_SEGMENTS = 6

Recorder = Callable[[UsageRecord, float, float], None]


class BodyTooLarge(Exception):
    """The app's body passed `max_body_bytes` while it streamed through."""


def route_of(method: str, path: str) -> str:
    """The route without ids, for records and a bounded metric label: POST /v1/files/file-abc → POST
    /v1/files/{id}; Gemini's `models/gemini-2.5-flash:batchPredict` keeps its verb."""
    out = []
    for segment in path.strip("/").split("/")[:MAX_ROUTE_SEGMENTS]:
        name, colon, verb = segment.partition(":")
        kept = name if STATIC_SEGMENT.match(name) and len(name) <= 40 else "{id}"
        out.append(kept + (colon + verb if verb and STATIC_SEGMENT.match(verb) else ""))
    return f"{method} /" + "/".join(out)


async def capped(request: web.Request, cap: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, raising BodyTooLarge past `cap` bytes (no buffering)."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge
        yield chunk


class Transparent:
    def __init__(self, state: State, record: Recorder) -> None:
        self.state, self._record = state, record

    def billable(self, method: str, free: bool) -> bool:
        return not free and method not in UNBILLED_METHODS

    async def forward(self, request: web.Request, upstream: PolicyUpstream, dialect: Dialect, path: str,
                      request_id: str, *, free: bool, started: float) -> web.StreamResponse:
        billable = self.billable(request.method, free)
        record = None
        if billable:
            route = route_of(request.method, path)
            record = UsageRecord(request_id=request_id, time=self.state.clock.now(), upstream=upstream.name,
                                 dialect=dialect.name, operation="unmetered", model="", route=route,
                                 source=UsageSource.UNMETERED, awaiting_policy=self.state.awaiting_policy)
            refusal = self.deny(record)
            if refusal is not None:
                record.outcome, record.status, record.source = Outcome.REFUSED, 403, UsageSource.NONE
                self._finish(record, started)
                return error_response(dialect, 403, refusal, request_id=request_id)
            # It may bill: on disk before the provider sees it, so a crash leaves its record (intents.py).
            self.state.usage_log.intend(record.model_copy(update={"interrupted": True}))
        try:
            return await self._relay(request, upstream, dialect, path, request_id, record)
        finally:
            if record is not None:
                self._finish(record, started)
                self.state.usage_log.abandon(request_id)

    def deny(self, record: UsageRecord) -> str | None:
        """The refusal message when an enforcing budget denies unmetered routes (DryRun: noted only)."""
        for budget in self.state.policy.budgets:
            if budget.spec.unmetered_routes is not UnmeteredRoutes.DENY:
                continue
            if budget.spec.enforcement is Enforcement.DRY_RUN:
                record.decisions.append(f"{budget.key}:DryRun:DenyUnmetered")
                continue
            record.decisions.append(f"{budget.key}:DenyUnmetered")
            record.budgets.append(budget.key)
            return (f"tokenbudget: {record.route} is a route whose answers report no usage, and budget "
                    f"{budget.key} says unmeteredRoutes: Deny")
        return None

    async def _relay(self, request: web.Request, upstream: PolicyUpstream, dialect: Dialect, path: str,
                     request_id: str, record: UsageRecord | None) -> web.StreamResponse:
        session = self.state.session
        assert session is not None, "the client session starts with the app"
        cap = self.state.settings.max_body_bytes
        if request.content_length is not None and request.content_length > cap:
            return self._refuse_size(dialect, request_id, record)
        url = forward_url(upstream.base_url, path, request.query_string)
        try:
            headers = upstream_headers(request.headers, upstream, dialect)
        except KeyUnavailable as exc:  # never forwarded
            if record is not None:
                record.outcome = Outcome.UPSTREAM_FAILED
            return key_unavailable(dialect, exc, request_id)
        encoding = request.headers.get("content-encoding")
        if encoding:  # forwarded untouched, so the body keeps its own encoding
            headers["content-encoding"] = encoding
        data = capped(request, cap) if request.body_exists else None
        resp: web.StreamResponse | None = None
        try:
            async with session.request(request.method, url, data=data, headers=headers) as up:
                if record is not None:
                    record.status = up.status
                    record.outcome = Outcome.UPSTREAM_ERROR if up.status >= 400 else Outcome.OK
                resp = web.StreamResponse(status=up.status, headers=client_headers(up.headers, request_id))
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp
        except BodyTooLarge:
            return self._refuse_size(dialect, request_id, record)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if isinstance(exc, aiohttp.ClientPayloadError) and isinstance(exc.__cause__, BodyTooLarge):
                return self._refuse_size(dialect, request_id, record)
            if record is not None:
                record.outcome = Outcome.UPSTREAM_FAILED
            if resp is not None:  # the answer had started: drop the app's connection as the provider's dropped
                if request.transport is not None:
                    request.transport.close()
                return resp
            return error_response(dialect, 504 if isinstance(exc, asyncio.TimeoutError) else 502,
                               f"tokenbudget: upstream {upstream.name} failed: {type(exc).__name__}",
                               request_id=request_id)

    def _refuse_size(self, dialect: Dialect, request_id: str, record: UsageRecord | None) -> web.Response:
        if record is not None:
            record.outcome, record.status, record.source = Outcome.REFUSED, 413, UsageSource.NONE
        return error_response(dialect, 413, f"tokenbudget: request body exceeds {self.state.settings.max_body_bytes} "
                           "bytes", request_id=request_id)

    def _finish(self, record: UsageRecord, started: float) -> None:
        metrics = self.state.metrics
        metrics.child(metrics.unmetered, record.dialect, record.route or "", record.outcome.value).inc()
        self._record(record, started, 0.0)
