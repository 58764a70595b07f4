"""Background Responses: a create answered `queued` is settled later, once, by the retrieve that shows it ended.

Why: `POST /v1/responses` with `background: true` answers at once (`status: queued`, `usage: null`); the
provider generates afterwards and bills it, and only `GET /v1/responses/{id}` (whole or `?stream=true`) or
`POST /v1/responses/{id}/cancel` show the final usage. Estimating at create would guess; recording at every
retrieve would count it as often as the app polls.

So the create's settlement is deferred: its holds are released, no record is written, and its intent stays
open in the ledger (intents.py), so a sidecar that dies before the response ends still records the call
once at its restart, estimated and flagged `interrupted`. The first retrieve or cancel whose answer has a
terminal status (completed, failed, cancelled, incomplete) takes the deferred record, fills it from that
answer (settlement.py), counts it in the budgets it was admitted against and appends it, closing the intent.
Later retrieves find nothing deferred and are plain reads. Limits: a response polled through another pod's
sidecar (or only by webhook) is recorded at this sidecar's next restart from its intent, estimated.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar import settlement
from tokenbudget_sidecar.admission import Ticket
from tokenbudget_sidecar.dialects import Call, Dialect, Reading
from tokenbudget_sidecar.headers import (
    KeyUnavailable,
    client_headers,
    error_response,
    key_unavailable,
    upstream_headers,
)
from tokenbudget_sidecar.sse import SSEParser
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.upstream_url import forward_url

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
RETRIEVE = re.compile(r"^(?:/openai)?/v1/responses/([A-Za-z0-9_\-]+)(/cancel)?$|^/openai/responses/([A-Za-z0-9_\-]+)"
                      r"(/cancel)?$")

Recorder = Callable[[UsageRecord, float, float], None]
log = logging.getLogger(__name__)


def response_id_of(method: str, path: str) -> str | None:
    """The id a retrieve (GET) or cancel (POST .../cancel) names; None for any other call."""
    match = RETRIEVE.match(path)
    if match is None:
        return None
    rid, cancel = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return rid if (method == "GET" and not cancel) or (method == "POST" and cancel) else None


class Background:
    def __init__(self, state: State, record: Recorder) -> None:
        self.state, self._record = state, record
        self.pending: dict[tuple[str, str], UsageRecord] = {}  # (upstream, response id) -> the create's record
        self.request_ids: set[str] = set()

    def defer(self, record: UsageRecord, reading: Reading, ticket: Ticket) -> bool:
        """Keep an admitted create whose answer is still queued; False when there is no id to wait for."""
        if reading.response_id is None:
            return False
        admission = self.state.admission
        record.response_id = reading.response_id
        record.budgets = [b.name for b in admission.budgets]
        record.decisions = list(ticket.decisions)
        admission.release(ticket)  # the holds: the usage is counted when it is known
        ticket.settled = True
        self.pending[(record.upstream, reading.response_id)] = record
        self.request_ids.add(record.request_id)
        log.info("settlement deferred", extra={"record": {"request_id": record.request_id,
                                                          "response_id": reading.response_id}})
        return True

    def waiting(self, request_id: str) -> bool:
        return request_id in self.request_ids

    def wants(self, upstream: str, method: str, path: str) -> bool:
        rid = response_id_of(method, path)
        return rid is not None and (upstream, rid) in self.pending

    def settle(self, upstream: PolicyUpstream, response_id: str, reading: Reading, started: float) -> None:
        """Once: the first terminal answer takes the record; any later one finds nothing."""
        record = self.pending.pop((upstream.name, response_id), None)
        if record is None:
            return
        self.request_ids.discard(record.request_id)
        record.time = self.state.clock.now()
        record.status = 200
        settlement.fill(record, reading, self.state.prices, upstream.base_url)
        self.state.admission.replay([record])
        self._record(record, started, 0.0)

    async def follow(self, request: web.Request, upstream: PolicyUpstream, dialect: Dialect,
                     path: str, request_id: str) -> web.StreamResponse:
        """Forward a retrieve or cancel of a deferred response, reading its answer on the side."""
        started = time.perf_counter()
        rid = response_id_of(request.method, path)
        assert rid is not None
        url = forward_url(upstream.base_url, path, request.query_string)
        try:
            headers = upstream_headers(request.headers, upstream, dialect)
        except KeyUnavailable as exc:
            return key_unavailable(dialect, exc, request_id)
        data = await request.read() if request.body_exists else None
        call = Call("responses", self.pending[(upstream.name, rid)].model, stream=True)
        try:
            return await self._relay(request, url, data, headers, call, upstream, dialect, rid, request_id, started)
        except (aiohttp.ClientError, TimeoutError) as exc:  # the deferral stays: a later retrieve settles it
            return error_response(dialect, 504 if isinstance(exc, TimeoutError) else 502,
                                  f"tokenbudget: upstream {upstream.name} failed: {type(exc).__name__}",
                                  request_id=request_id)

    async def _relay(self, request: web.Request, url: URL, data: bytes | None, headers: CIMultiDict[str], call: Call,
                     upstream: PolicyUpstream, dialect: Dialect, rid: str, request_id: str,
                     started: float) -> web.StreamResponse:
        session = self.state.session
        assert session is not None
        async with session.request(request.method, url, data=data, headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers=client_headers(up.headers, request_id))
            if up.status >= 400:
                await resp.prepare(request)
                await resp.write(await up.read())
                await resp.write_eof()
                return resp
            if up.content_type == "text/event-stream":
                tracker = dialect.tracker(call)
                tracker.reading.streamed = True
                parser = SSEParser()
                await resp.prepare(request)
                try:
                    async for chunk in up.content.iter_any():
                        for event in parser.feed(chunk):
                            tracker.on_event(event)
                        await resp.write(chunk)
                finally:  # the provider's completion event seen: settled even if the app has gone
                    if tracker.reading.finished and not tracker.reading.error:
                        self.settle(upstream, rid, tracker.reading, started)
                await resp.write_eof()
                return resp
            body = await up.read()
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and answer.get("status") in TERMINAL:
                self.settle(upstream, rid, dialect.read_response(call, answer), started)
            await resp.prepare(request)
            await resp.write(body)
            await resp.write_eof()
            return resp


__all__ = ["TERMINAL", "Background", "response_id_of"]
