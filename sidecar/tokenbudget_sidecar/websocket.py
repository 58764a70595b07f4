"""WebSocket sessions through the sidecar: the SDK methods that open one (OpenAI `realtime.connect`,
`responses.connect`, google-genai `live.connect`, ...) work as they did before injection, and what their
sessions bill is metered.

An upgrade on any path under an upstream is forwarded by the same rules as HTTP (`forward_url`, the path
confined under the base URL, the provider's auth header set from the sidecar's key file by headers.py),
then every message is relayed both ways as it comes: text, binary, ping and pong, and the close with its
code and reason. Either side closing closes the other with the same code; either side dropping (no close
frame) drops the other, so the app's SDK sees what it would have seen from the provider. Messages are
capped at `max_body_bytes` each way (1009, "message too big", past it).

Metering (ws_meters.py): each usage report in the session (a Realtime `response.done`, a Responses
`response.completed`, a Gemini Live turn's `usageMetadata`) becomes one record, priced and counted in the
budgets' windows as it arrives. A session that reported nothing, on a known route or not, is recorded
once as `unmetered` with its route; an unknown route is refused under `unmeteredRoutes: Deny`. Budgets are
checked once, at connect (session_admission.py): a refusal is the provider's HTTP error before the
upgrade (429 with Retry-After, 403), which the SDK raises from its handshake. After that nothing is
held: the overrun bound is what a session's responses in flight bill past the limit (README).

What is not seen: a response the session was cut in before its usage report (the provider may bill its
partial output; a Gemini turn cut before turnComplete is recorded with its last figure, `truncated`), and
a session in flight when the sidecar is killed (sessions write no intent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from multidict import CIMultiDict, MultiDict

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.dialects import Dialect
from tokenbudget_sidecar.headers import KeyUnavailable, error_response, key_unavailable, upstream_headers, upstream_key
from tokenbudget_sidecar.relay import UPSTREAM_FAILED
from tokenbudget_sidecar.session_admission import admit_session
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.transparent import route_of
from tokenbudget_sidecar.upstream_url import forward_url
from tokenbudget_sidecar.ws_meters import Billed, Meter, meter_for

Recorder = Callable[[UsageRecord, float, float], None]
Deny = Callable[[UsageRecord], "str | None"]
HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                       "sec-websocket-protocol", "sec-websocket-accept"})
KEY_PROTOCOL = "openai-insecure-api-key."  # browsers' way to send an OpenAI key: the key file replaces it
RELAYED_CLOSE = range(1000, 5000)
CLOSE_TIMEOUT_S = 10.0  # aiohttp's own wait for the peer's close frame


def is_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket"


class WebSockets:
    def __init__(self, state: State, record: Recorder, deny: Deny) -> None:
        self.state, self._record, self._deny = state, record, deny

    async def handle(self, request: web.Request, upstream: PolicyUpstream, dialect: Dialect, path: str,
                     request_id: str, user: str | None) -> web.StreamResponse:
        started = time.perf_counter()
        meter = meter_for(dialect.name, path, request.query)
        record = UsageRecord(request_id=request_id, time=self.state.clock.now(), upstream=upstream.name,
                             dialect=dialect.name, operation=meter.operation if meter else "websocket",
                             model=meter.model if meter else "", user=user, stream=True,
                             route=f"WS {path if meter else route_path(path)}",
                             awaiting_policy=self.state.awaiting_policy)
        refusal = self._admit(meter, record)
        if refusal is not None:
            record.outcome, record.source = Outcome.REFUSED, UsageSource.NONE
            record.status = refusal.status
            if meter is not None:  # a budget's refusal says why, as an HTTP call's does (Deny noted its own)
                record.decisions = [refusal.message]
            else:  # counted as a refused unmetered call, as transparent.py counts an HTTP one
                metrics = self.state.metrics
                metrics.child(metrics.unmetered, record.dialect, record.route or "", record.outcome.value).inc()
            self.keep(record, started)
            return error_response(dialect, refusal.status, refusal.message, retry_after=refusal.retry_after,
                                  request_id=request_id)
        session = Session(self, request, upstream, dialect, record, meter or Meter(), started)
        return await session.run(path)

    def _admit(self, meter: Meter | None, record: UsageRecord) -> Refused | None:
        if meter is None:  # a route whose messages we cannot read: Deny refuses it like an unmetered HTTP route
            message = self._deny(record)
            return Refused(403, message) if message is not None else None
        try:
            record.decisions += admit_session(self.state.admission, meter.model, record.user)
        except Refused as refused:
            return refused
        return None

    def bill(self, base: UsageRecord, billed: Billed, n: int, started: float) -> None:
        """One usage report: its own record (request id `<session>.<n>`), priced, counted in the windows."""
        upstream = self.state.policy.upstream(base.upstream)
        record = base.model_copy(update={
            "request_id": f"{base.request_id}.{n}", "time": self.state.clock.now(), "model": billed.model,
            "operation": billed.operation or base.operation,
            "usage": billed.usage, "source": UsageSource.PROVIDER, "response_id": billed.response_id,
            "truncated": billed.truncated, "route": None, "status": 101, "decisions": list(base.decisions),
            "awaiting_policy": self.state.awaiting_policy})  # as of now: the first push may come mid-session
        record.cost_usd, record.price_source = self.state.prices.cost(
            billed.model, upstream.base_url if upstream else "", billed.usage)
        admission = self.state.admission  # the policy in force now: a push may have come during the session
        record.budgets = [b.name for b in admission.budgets]
        admission.replay([record])
        self.keep(record, started)

    def keep(self, record: UsageRecord, started: float) -> None:
        """The record to the usage log, metrics and the call log (Proxy.record); nothing is added latency here."""
        self._record(record, started, 0.0)


def route_path(path: str) -> str:
    """The path without ids, as transparent.route_of gives it (bounded metric labels)."""
    return route_of("WS", path).removeprefix("WS ")


class Session:
    """One relayed session: the app's socket, the provider's, and the two pumps between them."""

    def __init__(self, owner: WebSockets, request: web.Request, upstream: PolicyUpstream, dialect: Dialect,
                 record: UsageRecord, meter: Meter, started: float) -> None:
        self.owner, self.request, self.upstream, self.dialect = owner, request, upstream, dialect
        self.record, self.meter, self.started = record, meter, started
        self.reports = 0
        self.cap = owner.state.settings.max_body_bytes
        self._to_app: asyncio.Task[None] | None = None  # the provider's pump

    async def run(self, path: str) -> web.StreamResponse:
        state, request, record = self.owner.state, self.request, self.record
        assert state.session is not None, "the client session starts with the app"
        query = MultiDict(request.query)
        try:
            headers = self._headers()
            held = upstream_key(self.upstream) is not None  # the sidecar sends the key: the app's is dropped
        except KeyUnavailable as exc:
            record.outcome, record.source = Outcome.UPSTREAM_FAILED, UsageSource.NONE
            self.owner.keep(record, self.started)
            return key_unavailable(self.dialect, exc, record.request_id)
        protocols = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        if held:  # Gemini's key= query and a browser's key subprotocol: the key file's header replaces them
            query.popall("key", None)
            protocols = [p for p in protocols if not p.startswith(KEY_PROTOCOL)]
        url = forward_url(self.upstream.base_url, path, "").with_query(query)
        try:
            up = await state.session.ws_connect(url, headers=headers, protocols=protocols, autoclose=False,
                                                autoping=False, max_msg_size=self.cap, compress=0)
        except aiohttp.WSServerHandshakeError as exc:  # the provider refused the upgrade: its status, our words
            # (aiohttp keeps the status and reason of a refused handshake, not its body)
            record.status, record.outcome, record.source = exc.status, Outcome.UPSTREAM_ERROR, UsageSource.NONE
            self.owner.keep(record, self.started)
            return error_response(self.dialect, exc.status, f"tokenbudget: upstream {self.upstream.name} refused "
                                  f"the WebSocket upgrade: {exc.status} {exc.message}", request_id=record.request_id)
        except UPSTREAM_FAILED as exc:
            record.outcome, record.source = Outcome.UPSTREAM_FAILED, UsageSource.NONE
            self.owner.keep(record, self.started)
            return error_response(self.dialect, 504 if isinstance(exc, asyncio.TimeoutError) else 502,
                                  f"tokenbudget: upstream {self.upstream.name} failed: {type(exc).__name__}",
                                  request_id=record.request_id)
        ws = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), autoclose=False,
                                   autoping=False, max_msg_size=self.cap, compress=False)
        ws.headers["x-tokenbudget-request-id"] = record.request_id
        record.status = 101
        metrics = state.metrics
        gauge = metrics.child(metrics.sessions, self.dialect.name)
        gauge.inc()
        try:
            await ws.prepare(request)
            await self._relay(ws, up)
        finally:
            gauge.dec()
            if not up.closed:
                await up.close(code=WSCloseCode.GOING_AWAY)
            self._finish()
        return ws

    def _headers(self) -> CIMultiDict[str]:
        out = upstream_headers(self.request.headers, self.upstream, self.dialect)
        for name in HANDSHAKE:
            out.popall(name, None)
        out.popall("accept-encoding", None)
        return out

    async def _relay(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        """Two pumps; the one that sees its side end closes (or drops) the other side, which ends the other pump
        (its receive() gets CLOSING or CLOSED). Cancelled only if that takes longer than a close handshake may."""
        to_up = asyncio.create_task(self._from_app(ws, up))
        to_app = self._to_app = asyncio.create_task(self._from_upstream(ws, up))
        tasks = (to_up, to_app)
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, *UPSTREAM_FAILED, ConnectionError):
                    await task

    async def _from_app(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                self.meter.client(msg.data)
                await up.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.meter.client(msg.data)
                await up.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await up.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await up.pong(msg.data)
            elif msg.type is WSMsgType.CLOSING:  # we are closing the app's side (the provider closed or dropped)
                return
            elif msg.type is WSMsgType.CLOSE:  # the app closes: the provider gets its code and reason
                code, reason = close_of(msg)
                await self._close_upstream(up, code, reason)
                await ws.close(code=code, message=reason.encode())
                return
            else:  # the app dropped (or sent past the cap): so does the session upstream
                code = WSCloseCode.MESSAGE_TOO_BIG if too_big(msg) else WSCloseCode.GOING_AWAY
                if self.record.outcome is Outcome.OK:  # else we dropped the app, after the provider dropped us
                    self.record.outcome = Outcome.CLIENT_DISCONNECTED
                await self._close_upstream(up, code)
                return

    async def _close_upstream(self, up: aiohttp.ClientWebSocketResponse, code: int, reason: str = "") -> None:
        """Close the provider's side with the app's code, from the app's pump. The provider's pump is stopped
        first: aiohttp's client close() from one task while another reads lets that reader send a close of its
        own (1000, no reason) before ours. Every message it had received is metered already (metering precedes
        the relay's await); what the provider sends after the app's close is not read (as aiohttp's own close
        handshake would discard it)."""
        task = self._to_app
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *UPSTREAM_FAILED, ConnectionError):
                await task
        await up.close(code=code, message=reason.encode())

    async def _from_upstream(self, ws: web.WebSocketResponse, up: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            msg = await up.receive()
            if msg.type is WSMsgType.TEXT:
                self._count(self.meter.upstream(msg.data))
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._count(self.meter.upstream(msg.data))
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.CLOSING:  # we are closing the provider's side (the app closed or dropped)
                return
            elif msg.type is WSMsgType.CLOSE:  # the provider closes: the app gets its code and reason
                code, reason = close_of(msg)
                await ws.close(code=code, message=reason.encode())
                if code not in (WSCloseCode.OK, WSCloseCode.GOING_AWAY):
                    self.record.outcome = Outcome.UPSTREAM_ERROR
                return
            elif too_big(msg):  # the provider sent past the cap: the app gets the same 1009 we sent upstream
                await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=b"message too big")
                self.record.outcome = Outcome.UPSTREAM_ERROR
                return
            else:  # the provider dropped without a close frame: drop the app too, as the provider did
                self.record.outcome = Outcome.UPSTREAM_FAILED
                if self.request.transport is not None:
                    self.request.transport.close()
                return

    def _count(self, reports: list[Billed]) -> None:
        for billed in reports:
            self.reports += 1
            self.owner.bill(self.record, billed, self.reports, self.started)

    def _finish(self) -> None:
        """Bill what is still pending, or record the session once as unmetered when it reported nothing."""
        self._count(self.meter.end())
        if self.reports == 0:
            record = self.record
            record.source = UsageSource.UNMETERED
            record.model = record.model or self.meter.model
            self.owner.keep(record, self.started)  # counts it in tokenbudget_unmetered_calls_total too


def too_big(msg: aiohttp.WSMessage) -> bool:
    """A message past `max_msg_size` (aiohttp already closed that side with 1009)."""
    return msg.type is WSMsgType.ERROR and getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG


def close_of(msg: aiohttp.WSMessage) -> tuple[int, str]:
    """The code and reason of a close frame; a code that may not be sent on (1005, 1006, 1015) becomes 1000."""
    code = msg.data if isinstance(msg.data, int) and msg.data in RELAYED_CLOSE else WSCloseCode.OK
    if code in (1005, 1006, 1015):
        code = WSCloseCode.OK
    return code, msg.extra if isinstance(msg.extra, str) else ""


__all__ = ["Session", "WebSockets", "is_upgrade"]
