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
Later retrieves find nothing deferred and are plain reads.

A response this sidecar never sees end (polled through another pod's sidecar, or followed only by webhook) must
not wait for a restart, nor hold memory forever: a deferral is given up `deferral_ttl_s` after its create (1 h;
a background Response runs for minutes), and when `max_deferrals` wait, the oldest makes room for a new one. A
deferral given up is recorded as the restart would record its intent: estimated (prompt estimate plus the
output cap it was admitted with, the most the provider can bill), flagged `interrupted`, counted once in the
budgets it was admitted against and in `tokenbudget_background_expired_calls_total`; its record closes the
intent, so a restart adds nothing. A retrieve afterwards finds nothing deferred: a plain read.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar import intents, settlement
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


@dataclass(slots=True)
class Deferred:
    """A create waiting for the retrieve that shows it ended."""

    record: UsageRecord  # the create's record, filled from that retrieve
    estimate: UsageRecord  # what it counts if none comes (its intent's figures, intents.interrupted_record)
    deadline: float  # time.monotonic() past which it is given up
    started: float  # time.perf_counter() at its create (the record's duration runs from there)


class Background:
    def __init__(self, state: State, record: Recorder) -> None:
        self.state, self._record = state, record
        # (upstream, response id) -> the deferral, oldest first (insertion order: creates come in time order)
        self.pending: OrderedDict[tuple[str, str], Deferred] = OrderedDict()
        self.request_ids: set[str] = set()

    def defer(self, record: UsageRecord, reading: Reading, ticket: Ticket, call: Call, base_url: str,
              started: float) -> bool:
        """Keep an admitted create whose answer is still queued; False when there is no id to wait for."""
        if reading.response_id is None:
            return False
        admission, settings = self.state.admission, self.state.settings
        record.response_id = reading.response_id
        record.budgets = [b.name for b in admission.budgets]
        record.decisions = list(ticket.decisions)
        admission.release(ticket)  # the holds: the usage is counted when it is known
        ticket.settled = True
        if ticket.prompt is not None:  # counted exactly before the answer without usage came (proxy.ready_to_estimate)
            record.prompt_estimate, record.prompt_bound = ticket.prompt.value, not ticket.prompt.known
        estimate = intents.interrupted_record(
            record, call, default_output_tokens=settings.default_output_tokens, budgets=record.budgets,
            decisions=record.decisions, prices=self.state.prices, base_url=base_url)
        self.expire()
        while len(self.pending) >= settings.max_deferrals:
            self._give_up(next(iter(self.pending)), "evicted")
        self.pending[(record.upstream, reading.response_id)] = Deferred(
            record, estimate, time.monotonic() + settings.deferral_ttl_s, started)
        self.request_ids.add(record.request_id)
        log.info("settlement deferred", extra={"record": {"request_id": record.request_id,
                                                          "response_id": reading.response_id}})
        return True

    def expire(self, now: float | None = None) -> int:
        """Give up every deferral past its age limit (oldest first); returns how many."""
        now = time.monotonic() if now is None else now
        given_up = 0
        while self.pending:
            key, oldest = next(iter(self.pending.items()))
            if oldest.deadline > now:
                break
            self._give_up(key, "expired")
            given_up += 1
        return given_up

    def _give_up(self, key: tuple[str, str], reason: str) -> None:
        """Record a deferral as its intent would be at a restart: once, estimated, `interrupted`, intent closed."""
        deferred = self.pending.pop(key)
        self.request_ids.discard(deferred.record.request_id)
        record = deferred.estimate
        self.state.admission.replay([record])
        self._record(record, deferred.started, 0.0)  # same request_id: its ledger line closes the intent
        metrics = self.state.metrics
        metrics.child(metrics.background_expired, record.dialect, reason).inc()
        log.info("background response not seen to end; recorded estimated", extra={"record": {
            "request_id": record.request_id, "response_id": key[1], "reason": reason}})

    def waiting(self, request_id: str) -> bool:
        return request_id in self.request_ids

    def wants(self, upstream: str, method: str, path: str) -> bool:
        rid = response_id_of(method, path)
        return rid is not None and (upstream, rid) in self.pending

    def settle(self, upstream: PolicyUpstream, response_id: str, reading: Reading, started: float) -> None:
        """Once: the first terminal answer takes the record; any later one finds nothing."""
        deferred = self.pending.pop((upstream.name, response_id), None)
        if deferred is None:
            return
        record = deferred.record
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
        # Read before the first await: the deferral may be given up meanwhile (settle() then finds nothing).
        call = Call("responses", self.pending[(upstream.name, rid)].record.model, stream=True)
        url = forward_url(upstream.base_url, path, request.query_string)
        try:
            headers = upstream_headers(request.headers, upstream, dialect)
        except KeyUnavailable as exc:
            return key_unavailable(dialect, exc, request_id)
        data = await request.read() if request.body_exists else None
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


__all__ = ["TERMINAL", "Background", "Deferred", "response_id_of"]
