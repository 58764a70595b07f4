"""One served call: writing bodies and streams while keeping its ledger record truthful.

Every dialect hands this module either a JSON payload or a list of pre-rendered :class:`Frame`\\ s;
the pacing (``x-upstream-chunk-delay-ms``), the failure injection that happens *after* headers
(``reset-mid-stream``, ``in-stream-error``) and the bookkeeping of ``completed`` / ``usage_sent`` /
``emitted_output_tokens`` live here once instead of three times.

Ordering matters for tests: the record is marked complete *before* the last bytes go out (and reverted
if that write fails), so a client that has read the end of a response never finds a stale record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .behaviour import Controls, Plan
from .ledger import Ledger, ServedRecord
from .settings import UpstreamSettings

#: Request bodies larger than this are token-counted in a worker thread.
OFFLOAD_COUNT_BYTES = 32 * 1024
#: Written before each streamed frame under ``x-upstream-keepalive: true``: an SSE comment block, the keep-alive
#: servers and gateways send on idle streams (a comment is not an event; clients ignore it, but it must arrive).
KEEPALIVE = b": keep-alive\n\n"


class UpstreamError(Exception):
    """An error answer in the dialect's own shape (validation failures, injected HTTP failures)."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind


@dataclass
class Frame:
    """One write of a streamed response."""

    data: bytes
    output_tokens: int = 0
    """Output tokens (thinking or answer) this frame delivers; counted into emitted_output_tokens."""
    paced: bool = False
    """Wait one chunk delay before writing (token cadence)."""
    content: bool = False
    """Part of the generated content: where reset-mid-stream / in-stream-error can strike."""
    final_usage: bool = False
    """Carries the final, authoritative usage."""


def dumps(payload: Any, *, indent: int | None = None, pretty_separators: bool = False) -> str:
    """JSON text the way the providers spell it (compact unless told otherwise)."""
    if indent is not None:
        return json.dumps(payload, indent=indent, ensure_ascii=False)
    separators = (", ", ": ") if pretty_separators else (",", ":")
    return json.dumps(payload, separators=separators, ensure_ascii=False)


@dataclass
class Call:
    """State of one call while its response is being written."""

    request: web.Request
    settings: UpstreamSettings
    ledger: Ledger
    record: ServedRecord
    request_id: str
    success_headers: dict[str, str] = field(default_factory=dict)
    controls: Controls | None = None
    emitted: int = 0
    response: web.StreamResponse | None = None
    body_bytes: int = 0

    async def count(self, counter: Callable[[], int]) -> int:
        """Run a prompt count, off the event loop for large bodies.

        tiktoken is CPU-bound (tens of ms per 100K tokens); counting a big prompt inline would stall every
        other stream this server is pacing and skew latency figures measured through it.
        """
        if self.body_bytes > OFFLOAD_COUNT_BYTES:
            return await asyncio.to_thread(counter)
        return counter()

    @property
    def ctl(self) -> Controls:
        """The parsed control headers (set before any dialect code runs)."""
        assert self.controls is not None, "controls are parsed before the dialect handler runs"
        return self.controls

    def note(self, **changes: Any) -> None:
        """Update this call's ledger record."""
        self.ledger.update(self.record, **changes)

    def note_plan(self, plan: Plan, finish_reason: str, copies: int = 1) -> None:
        """Record the normalized usage of ``plan`` (``copies`` = OpenAI ``n`` choices generating it each)."""
        self.note(
            input_tokens=plan.prompt_tokens,
            cached_input_tokens=plan.cached_tokens,
            cache_creation_input_tokens=plan.cache_creation_tokens,
            output_tokens=plan.output_tokens * copies,
            reasoning_tokens=plan.reasoning_tokens * copies,
            truncated=plan.truncated,
            finish_reason=finish_reason,
        )

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"x-upstream-request-id": self.request_id, **self.success_headers}
        if extra:
            headers.update(extra)
        return headers

    def reset(self) -> web.StreamResponse:
        """Drop the TCP connection with an RST, the way a crashed or cut-off provider does."""
        transport = self.request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # a platform without SO_LINGER just closes
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self.note(completed=False, emitted_output_tokens=self.emitted)
        return self.response or web.Response(status=499)

    async def _pace(self, units: int) -> None:
        delay = self.ctl.chunk_delay_s if self.controls is not None else 0.0
        if delay > 0 and units > 0:
            await asyncio.sleep(delay * units)

    def _first_byte(self) -> None:
        if self.record.first_byte_at is None:
            self.note(first_byte_at=time.time())

    async def send_json(
        self,
        payload: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        output_tokens: int = 0,
        paced_chunks: int = 0,
        usage_sent: bool = False,
        indent: int | None = None,
    ) -> web.StreamResponse:
        """Write a whole JSON body, after ``paced_chunks`` chunk delays of "generation" time.

        ``reset-mid-stream`` on a non-streamed call writes the first half of the body and then resets,
        so the client sees a truncated body under a correct Content-Length.
        """
        await self._pace(paced_chunks)
        body = dumps(payload, indent=indent).encode()
        response = web.StreamResponse(status=status, headers=self._headers(headers))
        response.content_type = "application/json"
        response.charset = "utf-8"
        response.content_length = len(body)
        self.response = response
        self.note(status=status)
        await response.prepare(self.request)
        cut = self.controls is not None and self.controls.fail == "reset-mid-stream" and status == 200
        if cut:
            await response.write(body[: len(body) // 2])
            self._first_byte()
            return self.reset()
        self.emitted = output_tokens
        self.note(completed=True, usage_sent=usage_sent, emitted_output_tokens=output_tokens)
        try:
            await response.write(body)
        except ConnectionError:
            self.note(completed=False, usage_sent=False)
            raise
        self._first_byte()
        await self._eof(response)
        return response

    async def _eof(self, response: web.StreamResponse) -> None:
        # Every byte of the body is out; a client that hangs up before the chunked terminator
        # (the SDKs stop reading at their end-of-stream marker) still got the whole response.
        with contextlib.suppress(ConnectionError):
            await response.write_eof()

    async def send_stream(
        self,
        frames: list[Frame],
        *,
        content_type: str,
        error_frame: Callable[[int], Frame] | None = None,
    ) -> web.StreamResponse:
        """Write ``frames`` one by one as they are "generated", honouring the injected failures.

        ``error_frame`` renders the dialect's in-stream error; it gets the number of events already
        written (the Responses API numbers its events).
        """
        response = web.StreamResponse(status=200, headers=self._headers({"Cache-Control": "no-cache"}))
        response.headers["Content-Type"] = content_type
        self.response = response
        self.note(status=200)
        await response.prepare(self.request)

        if self.ctl.keepalive and content_type.startswith("text/event-stream"):  # never inside a JSON array
            frames = [dataclasses.replace(f, data=KEEPALIVE + f.data) if f.data else f for f in frames]
        fail = self.ctl.fail
        cut_at: int | None = None
        if fail in ("reset-mid-stream", "in-stream-error", "stall-mid-stream"):
            # Strike after cut_fraction of the content frames but always before the last one, so the
            # final usage never gets out; with no content at all, just before the final usage.
            content = [i for i, frame in enumerate(frames) if frame.content]
            if content:
                share = min(math.floor(len(content) * self.settings.cut_fraction), len(content) - 1)
                cut_at = content[share]
            else:
                usage_at = [i for i, frame in enumerate(frames) if frame.final_usage]
                cut_at = usage_at[0] if usage_at else max(len(frames) - 1, 0)

        for index, frame in enumerate(frames):
            if index == cut_at:
                if fail == "stall-mid-stream":  # silence past the client's read timeout, then give up
                    await asyncio.sleep(self.settings.stall_s)
                    return self.reset()
                if fail == "reset-mid-stream":
                    await asyncio.sleep(self.settings.reset_grace_s)
                    return self.reset()
                if error_frame is not None:
                    written = sum(1 for earlier in frames[:index] if earlier.data)
                    await self._write(response, error_frame(written), last=True)
                    await self._eof(response)
                    return response
            await self._write(response, frame, last=index == len(frames) - 1)
        await self._eof(response)
        return response

    async def _write(self, response: web.StreamResponse, frame: Frame, *, last: bool) -> None:
        if frame.paced:
            await self._pace(1)
        self.emitted += frame.output_tokens
        changes: dict[str, Any] = {}
        if frame.final_usage:
            changes["usage_sent"] = True
        if last:
            changes.update(completed=True, emitted_output_tokens=self.emitted)
        if changes:
            self.note(**changes)
        if not frame.data:
            return
        try:
            await response.write(frame.data)
        except ConnectionError:
            self.emitted -= frame.output_tokens
            revert = {key: False for key in changes if key in ("usage_sent", "completed")}
            self.note(**revert, emitted_output_tokens=self.emitted)
            raise
        self._first_byte()
