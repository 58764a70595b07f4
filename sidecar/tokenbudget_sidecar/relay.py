"""Relaying a streamed answer: the upstream's bytes to the app as they arrive, a copy read on the side.

Streams are forwarded chunk by chunk exactly as read, except OpenAI chat streams where we asked for the
usage chunk on the app's behalf: those are forwarded per complete SSE event so the extra usage chunk
can be dropped (each OpenAI event is one line, so this adds no measurable delay); comment-only blocks, the
keep-alives idle streams rely on, come from the parser as events with nothing to read and are forwarded too.
The app's hang-up and the provider's failure each end the relay their own way (onDisconnect; the app's stream
is dropped too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from tokenbudget_api.tokenbudget import OnDisconnect
from tokenbudget_api.usage import Disconnect, Outcome, UsageRecord
from tokenbudget_sidecar.admission import Ticket
from tokenbudget_sidecar.dialects import Call, Dialect, Reading
from tokenbudget_sidecar.headers import client_headers
from tokenbudget_sidecar.jsonarray import JSONArrayParser
from tokenbudget_sidecar.sse import SSEParser

if TYPE_CHECKING:
    from tokenbudget_sidecar.state import State

log = logging.getLogger(__name__)

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
UPSTREAM_FAILED = (aiohttp.ClientError, asyncio.TimeoutError)


async def relay_stream(request: web.Request, up: aiohttp.ClientResponse, dialect: Dialect, call: Call,
                       record: UsageRecord, ticket: Ticket, state: State) -> tuple[web.StreamResponse, Reading]:
    """Relay the answer's stream to the app; return the response and what was read of it. Settlement is the
    caller's (a stream that broke is estimated from `Reading.text`)."""
    resp = web.StreamResponse(status=up.status, headers=client_headers(up.headers, record.request_id))
    resp.headers.update(ticket.headers)
    tracker = dialect.tracker(call)
    tracker.reading.streamed = True
    parser: SSEParser | JSONArrayParser = (SSEParser() if up.content_type == "text/event-stream"
                                           else JSONArrayParser())
    client_gone = False
    on_disconnect = state.policy.on_disconnect
    try:
        await resp.prepare(request)
    except CLIENT_GONE:
        client_gone = True

    def take(chunk: bytes) -> bytes:
        """Read a copy of `chunk`; return what the app gets: the chunk as it came, or, where we asked for the
        usage chunk on the app's behalf, its events but that one."""
        events = parser.feed(chunk)
        if call.injected_usage:
            return b"".join(ev.raw for ev in events if tracker.on_event(ev))
        for ev in events:
            tracker.on_event(ev)
        return chunk

    try:
        async for chunk in up.content.iter_any():
            out = take(chunk)
            if out and not client_gone:
                try:
                    await resp.write(out)
                except CLIENT_GONE:
                    client_gone = True
            if client_gone and tracker.reading.error:
                break  # the provider ended the call with its error event: the app's hang-up follows it
            if client_gone:
                record.disconnect = Disconnect(on_disconnect.value)
                record.outcome = Outcome.CLIENT_DISCONNECTED
                if on_disconnect is OnDisconnect.CUT:
                    break
        tail = parser.close()
        out = b"".join(ev.raw for ev in tail if tracker.on_event(ev))
        if call.injected_usage and out and not client_gone:
            await resp.write(out)
        if not client_gone:
            await resp.write_eof()
    except CLIENT_GONE:
        if not tracker.reading.error:  # after the provider's error event, the app's hang-up is its answer
            record.outcome = Outcome.CLIENT_DISCONNECTED
            record.disconnect = Disconnect(on_disconnect.value)
    except UPSTREAM_FAILED:
        # The provider dropped the stream: drop the app's too, so its SDK sees the same failure
        # instead of a stream that ends as if complete.
        record.outcome = Outcome.UPSTREAM_FAILED
        if (rest := unread(up.content)) and (out := take(rest)) and not client_gone:
            with contextlib.suppress(*CLIENT_GONE):
                await resp.write(out)
        if request.transport is not None:
            request.transport.close()
    if parser.oversized:  # relayed whole, but too large to read: their usage, if any, is estimated instead
        state.metrics.child(state.metrics.unread_events, dialect.name).inc(parser.oversized)
        log.warning("stream events too large to read", extra={"record": {
            "request_id": record.request_id, "events": parser.oversized}})
    return resp, tracker.reading


def unread(reader: aiohttp.StreamReader) -> bytes:
    """What the upstream sent before it failed that aiohttp received but had not handed out yet.

    Once a reset lands, aiohttp's StreamReader raises on every read and drops what it holds, although the
    provider sent (and bills) it: a cut stream's last events would go uncounted whenever the reset arrived in
    the same loop turn as they did. So read them past the exception. aiohttp has no public way to, so this
    clears its private exception for one `read_nowait()` (tests/sidecar/test_unread_after_reset.py pins it).
    """
    failure = reader.exception()
    if failure is None or not hasattr(reader, "_exception"):
        return b""
    reader._exception = None
    try:
        return reader.read_nowait()
    finally:
        reader._exception = failure
