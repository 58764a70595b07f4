"""The data path: parse, forward, stream back, meter, record.

One call: read the body under a size cap, decode it, learn model/stream/cap/user from it (the dialect),
bound the prompt's size (counted with tiktoken only where a decision needs it: prompt_count.py), forward
with one long-lived client session, stream the upstream's bytes to the app as they arrive while parsing a
copy of the SSE on the side, then settle one usage record.

Streams are relayed by relay.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_api.tokenbudget import FailMode
from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource
from tokenbudget_sidecar import forms, intents, settlement, tokens
from tokenbudget_sidecar.admission import Admission, Ticket
from tokenbudget_sidecar.background import Background
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.dialects import DIALECTS, PASSTHROUGH, BadRequest, Call, Dialect, Reading
from tokenbudget_sidecar.feature_hooks import FeatureHooks
from tokenbudget_sidecar.headers import (
    KeyUnavailable,
    client_headers,
    error_response,
    key_unavailable,
    upstream_headers,
)
from tokenbudget_sidecar.prompt_count import PromptCount
from tokenbudget_sidecar.relay import CLIENT_GONE, UPSTREAM_FAILED, relay_stream
from tokenbudget_sidecar.settlement import MEDIA
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.thinking import Decision
from tokenbudget_sidecar.transparent import Transparent, route_of
from tokenbudget_sidecar.upstream_url import OutsideUpstream, check_path, forward_url
from tokenbudget_sidecar.websocket import WebSockets, is_upgrade

log = logging.getLogger(__name__)



async def read_capped(request: web.Request, cap: int) -> bytes | None:
    """The body, or None when it exceeds `cap` (checked as it streams in, not after)."""
    if request.content_length is not None and request.content_length > cap:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Proxy:
    def __init__(self, state: State) -> None:
        self.state = state
        self.transparent = Transparent(state, self.record)
        self.background = Background(state, self.record)
        self.features = FeatureHooks(state)
        self.websockets = WebSockets(state, self.record, self.transparent.deny)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One call; whatever goes wrong in the sidecar itself is answered in the provider's shape.

        A body nested past the parser's recursion limit is the app's error (400), as the provider would
        say; anything else unexpected is our bug: logged with its traceback, answered as a JSON 500 the
        SDK can parse, never aiohttp's text page.
        """
        request_id = uuid.uuid4().hex
        try:
            return await self._handle(request, request_id)
        except RecursionError:
            return error_response(self._dialect_of(request), 400, "tokenbudget: request body is nested too "
                                  "deeply to parse", request_id=request_id)
        except (asyncio.CancelledError, web.HTTPException):
            raise
        except Exception:
            log.exception("internal error", extra={"record": {"request_id": request_id}})
            return error_response(self._dialect_of(request), 500, "tokenbudget: internal error in the sidecar "
                                  f"(request {request_id}); it is logged", request_id=request_id)

    def _dialect_of(self, request: web.Request) -> Dialect:
        upstream = self.state.policy.upstream(request.match_info.get("upstream", ""))
        return DIALECTS[upstream.dialect if upstream is not None else next(iter(DIALECTS))]

    async def _handle(self, request: web.Request, request_id: str) -> web.StreamResponse:
        started = time.perf_counter()
        if self.state.awaiting_policy:  # an injected pod before its first push: it brings the upstreams too
            await self.state.next_policy(self.state.policy_wait_left())
            if self.state.awaiting_policy and self.state.settings.pending_fail_mode is FailMode.CLOSED:
                return error_response(self._dialect_of(request), 503, "tokenbudget: no budget policy from the "
                                      "operator yet (TOKENBUDGET_PENDING_FAIL_MODE Closed)", request_id=request_id)
        name = request.match_info["upstream"]
        path = "/" + request.match_info["tail"]
        upstream = self.state.policy.upstream(name)
        if upstream is None:
            configured = ", ".join(u.name for u in self.state.policy.upstreams)
            return error_response(DIALECTS[next(iter(DIALECTS))], 404,
                                  f"tokenbudget: no upstream named {name!r} (configured: {configured})")
        dialect = DIALECTS[upstream.dialect]
        try:
            check_path(path)  # before anything is forwarded, a background Response's follow-up included
        except OutsideUpstream as exc:
            return error_response(dialect, 400, str(exc), request_id=request_id)
        if is_upgrade(request):  # Realtime, Responses over WebSocket, Gemini Live, ...: relayed (websocket.py)
            user = next((v for h in self.state.user_headers() if (v := request.headers.get(h))), None)
            return await self.websockets.handle(request, upstream, dialect, path, request_id, user)
        if self.background.wants(upstream.name, request.method, path):  # a deferred background Response
            return await self.background.follow(request, upstream, dialect, path, request_id)
        operation = dialect.operation(request.method, path)
        if operation is None or operation == PASSTHROUGH:  # not metered: forwarded as is, body streamed
            return await self.transparent.forward(request, upstream, dialect, path, request_id,
                                                  free=operation == PASSTHROUGH, started=started)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            return error_response(dialect, 415, f"tokenbudget: Content-Encoding {encoding!r} is not supported; "
                                  "send the body uncompressed", request_id=request_id)
        raw = await read_capped(request, self.state.settings.max_body_bytes)
        if raw is None:
            return error_response(dialect, 413, "tokenbudget: request body exceeds "
                                  f"{self.state.settings.max_body_bytes} bytes", request_id=request_id)
        form: forms.Form | None = None
        try:
            if forms.is_form(request.headers.get("content-type", "")):  # image edits, transcriptions
                form = forms.parse(raw, request.headers["content-type"])
                body: Any = dict(form.fields)
            else:
                body = json.loads(raw.decode("utf-8"))
        except forms.BadForm as exc:
            return error_response(dialect, 400, f"tokenbudget: {exc}", request_id=request_id)
        except UnicodeDecodeError as exc:
            return error_response(dialect, 400, f"tokenbudget: request body is not valid UTF-8 ({exc.reason} "
                                  f"at byte {exc.start})", request_id=request_id)
        except ValueError as exc:
            return error_response(dialect, 400, f"tokenbudget: request body is not valid JSON: {exc}",
                                  request_id=request_id)
        if not isinstance(body, dict):
            return error_response(dialect, 400, "tokenbudget: request body must be a JSON object, not "
                                  f"{type(body).__name__}", request_id=request_id)
        header_user = next((v for h in self.state.user_headers() if (v := request.headers.get(h))), None)
        try:
            call = dialect.parse(operation, path, body, header_user)
        except BadRequest as exc:
            return error_response(dialect, 400, f"tokenbudget: {exc}", request_id=request_id, param=exc.param,
                                  code=exc.code)
        if call.user is None:
            call.user = next((u for label in self.state.user_labels()
                              if (u := dialect.labelled_user(body, label)) is not None), None)
        parts = dialect.prompt(body)
        prompt = PromptCount.of(self.state.counter, call.model, parts.texts, parts.messages, parts.media_tokens)
        if self.state.thinking.thinktiers or self.state.settings.prompt_count == "Exact":  # tiers may select by size
            await prompt.count()
        # Taken after the await: a push meanwhile replaces Thinking, and a call applied to the old one would be
        # missing from the new one's call count while its sample lands there (unclassifiedPercent then vanished).
        thinking = self.state.thinking  # the tier's budget goes in before admission reserves the output cap
        think = thinking.apply(dialect, call, body, request.path, request.headers, prompt.value)
        record = UsageRecord(request_id=request_id, time=self.state.clock.now(), upstream=upstream.name,
                             dialect=dialect.name, operation=call.operation, model=call.model, user=call.user,
                             stream=call.stream, prompt_estimate=prompt.value,
                             awaiting_policy=self.state.awaiting_policy,
                             think_class=think.klass if think else None, think_tier=think.tier if think else None,
                             route=route_of(request.method, path) if call.operation in MEDIA else None)
        await self.features.begin(record, call, body, request.headers)
        try:
            admission, ticket, path = await self.admit(dialect, call, body, path, prompt, upstream, started)
        except Refused as refused:
            if refused.awaits_grant and refused.budget is not None:  # still no grant after grant_wait_s
                self.state.metrics.lease_starved.labels(refused.budget).inc()
            record.status, record.outcome, record.source = refused.status, Outcome.REFUSED, UsageSource.NONE
            record.decisions = [refused.message]
            self.record(record, started, 0.0)
            return error_response(dialect, refused.status, refused.message, retry_after=refused.retry_after,
                                  request_id=request_id)
        ticket.prompt = prompt
        record.prompt_estimate = prompt.value  # exact if admission needed it, else still the byte bound
        record.model = call.model  # after a Downgrade, the model actually called
        think = thinking.retarget(think, dialect, call, body)  # a Downgrade may change how the model thinks
        changed = dialect.prepare(call, body)
        rewritten = changed or ticket.rewrote or bool(think and think.rewritten)
        payload = raw if not rewritten else json.dumps(body).encode() if form is None else form.encode(
            {k: str(v) for k, v in body.items() if form.fields.get(k) != v})
        usage_log = self.state.usage_log
        if usage_log.durable:  # on disk before the provider sees it, so a crash cannot lose it (intents.py)
            usage_log.intend(intents.interrupted_record(
                record, call, default_output_tokens=self.state.settings.default_output_tokens,
                budgets=[b.name for b in admission.budgets], decisions=ticket.decisions, prices=self.state.prices,
                base_url=upstream.base_url))
        gauge = self.state.metrics.child(self.state.metrics.in_flight, dialect.name)
        gauge.inc()
        try:
            return await self.forward(request, upstream, dialect, path, call, payload, record, started, ticket,
                                      think)
        finally:
            gauge.dec()
            admission.settle(ticket, record)  # a no-op when settle() below already did it
            if not self.background.waiting(request_id):  # a deferred call's intent stays open (background.py)
                usage_log.abandon(request_id)  # a no-op when its record closed the intent

    async def admit(self, dialect: Dialect, call: Call, body: dict[str, object], path: str, prompt: PromptCount,
                    upstream: PolicyUpstream, started: float) -> tuple[Admission, Ticket, str]:
        """Admission, waiting for the operator's next push while the only obstacle is this pod's spent grant
        (the budget has room: a 429 would only tell the app to come back after the lease round anyway).

        Each retry runs the whole admission again on the policy then in force (a push replaces it), so a
        wait for a grant under Throttle also waits for another throttle slot.

        A wait that runs out marks the budget starved for another `grant_wait_s`: the operator's rounds
        had the whole wait to grant more and did not (near the end of a budget, where its increments
        shrink), so calls short of the grant meanwhile are answered at once. Without it every call there
        waited the full 5 s, and an SDK retrying on Retry-After took about 20 s to see its 429.
        """
        state = self.state
        while True:
            admission = state.admission
            try:
                ticket, path = await admission.admit(dialect, call, body, path, prompt, upstream.base_url)
                return admission, ticket, path
            except Refused as refused:
                if not refused.awaits_grant:
                    raise
                key = refused.budget or ""
                if (until := state.grant_starved.get(key, 0.0)) > time.monotonic():
                    raise Refused(refused.status, f"{refused.message}; no larger grant came in this pod's last "
                                  f"wait of {state.settings.grant_wait_s:g} s, so it does not wait again for "
                                  f"{until - time.monotonic():.1f} s", refused.retry_after, True,
                                  refused.budget) from None
                left = state.settings.grant_wait_s - (time.perf_counter() - started)
                if left <= 0 or not await state.next_policy(left):
                    state.grant_starved[key] = time.monotonic() + state.settings.grant_wait_s
                    raise

    async def forward(self, request: web.Request, upstream: PolicyUpstream, dialect: Dialect, path: str,
                      call: Call, payload: bytes, record: UsageRecord, started: float,
                      ticket: Ticket, think: Decision | None = None) -> web.StreamResponse:
        session = self.state.session
        assert session is not None, "the client session starts with the app"
        url = forward_url(upstream.base_url, path, request.query_string)  # a Downgrade's path is checked too
        reading = Reading()
        try:
            headers = upstream_headers(request.headers, upstream, dialect)
        except KeyUnavailable as exc:  # never forwarded: nothing billed (status 0)
            record.outcome = Outcome.UPSTREAM_FAILED
            self.settle(record, reading, started, time.perf_counter() - started, ticket, think)
            return key_unavailable(dialect, exc, record.request_id)
        resp: web.StreamResponse
        added = time.perf_counter() - started
        settled = False
        try:
            async with session.request(request.method, url, data=payload, headers=headers) as up:
                record.status = up.status
                if up.status >= 400:
                    record.outcome = Outcome.UPSTREAM_ERROR
                    body = await up.read()
                    resp = web.Response(body=body, status=up.status, headers=client_headers(up.headers,
                                                                                            record.request_id))
                    resp.headers.update(ticket.headers)
                elif up.content_type == "text/event-stream" or (call.stream and up.content_type == "application/json"):
                    # SSE, or a stream sent as one JSON array (Gemini without alt=sse): relayed as it comes
                    resp, reading = await relay_stream(request, up, dialect, call, record, ticket, self.state)
                    await self.ready_to_estimate(reading, record, ticket)
                else:
                    body = await up.read()
                    after = time.perf_counter()
                    parsed = _json_object(body)
                    if parsed is not None:
                        reading = dialect.read_response(call, parsed)
                    resp = web.Response(body=body, status=up.status, headers=client_headers(up.headers,
                                                                                            record.request_id))
                    resp.headers.update(ticket.headers)
                    if reading.usage is not None:
                        resp.headers["x-tokenbudget-actual-tokens"] = str(reading.usage.total_tokens)
                    await self.ready_to_estimate(reading, record, ticket)
                    # Record before answering: a sidecar killed after the app got its answer must not
                    # lose a call the provider billed. A queued background Response waits for its retrieve.
                    deferred = reading.deferred and self.background.defer(record, reading, ticket, call,
                                                                          upstream.base_url, started)
                    if not deferred:
                        self.settle(record, reading, started, time.perf_counter() - after + added, ticket, think)
                    settled = True
                    with contextlib.suppress(*CLIENT_GONE):  # already recorded: the provider billed it
                        await resp.prepare(request)
                        await resp.write_eof()
                    added += time.perf_counter() - after
        except UPSTREAM_FAILED as exc:
            # Streams handle their own failures; here nothing has reached the app yet, so it gets an
            # answer in its provider's shape (and its SDK's usual retry on 502/504).
            record.outcome = Outcome.UPSTREAM_FAILED
            resp = error_response(dialect, 504 if isinstance(exc, asyncio.TimeoutError) else 502,
                                  f"tokenbudget: upstream {upstream.name} failed: {type(exc).__name__}",
                                  request_id=record.request_id)
        finally:
            if not settled:
                self.settle(record, reading, started, added, ticket, think)
        return resp

    async def ready_to_estimate(self, reading: Reading, record: UsageRecord, ticket: Ticket) -> None:
        """Before a settlement that will estimate (a broken stream, an answer without usage), load the encoding
        and count the prompt off the event loop, so settle() (synchronous, so a cancelled handler still
        records) finds both done instead of blocking every call for a first load."""
        if not (reading.broke or reading.usage is None or not reading.usage.input_tokens):
            return
        await asyncio.to_thread(tokens.TOKENIZER.get, tokens.encoding_name(record.model))
        if ticket.prompt is not None:
            await ticket.prompt.count()

    def settle(self, record: UsageRecord, reading: Reading, started: float, added: float, ticket: Ticket,
               think: Decision | None = None) -> None:
        """Turn what we saw into one record (settlement.py), release the holds, and keep it."""
        upstream = self.state.policy.upstream(record.upstream)
        prompt = ticket.prompt
        if prompt is not None:
            if not prompt.known and (reading.broke or not (reading.usage and reading.usage.input_tokens)):
                prompt.count_now()  # the record's input comes from our count: make it exact (usually done already)
            record.prompt_estimate, record.prompt_bound = prompt.value, not prompt.known
        settlement.fill(record, reading, self.state.prices, upstream.base_url if upstream else "")
        self.state.admission.settle(ticket, record)
        self.state.thinking.observe(think, record, reading)
        self.record(record, started, added)

    def record(self, record: UsageRecord, started: float, added: float) -> None:
        record.duration_ms = int((time.perf_counter() - started) * 1000)
        self.features.finish(record)
        line = self.state.usage_log.append_line(record)
        metrics = self.state.metrics
        metrics.observe(record, added)
        if record.source is UsageSource.UNMETERED and record.operation != "unmetered":  # dall-e, whisper text
            metrics.child(metrics.unmetered, record.dialect, record.route or "", record.outcome.value).inc()
        if log.isEnabledFor(logging.INFO):
            log.info("call", extra={"record_json": line})  # the ledger's own line: serialized once


def _json_object(body: bytes) -> dict[str, object] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
