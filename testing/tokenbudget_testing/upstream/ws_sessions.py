"""WebSocket endpoints in each provider's wire format: OpenAI Realtime (``GET /v1/realtime?model=``), Responses
over WebSocket (``GET /v1/responses``), both in ws_openai.py, and Gemini Live
(``GET /ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent``, ws_gemini.py). This
module holds what they share: the controls, a session's conversation, and the session loop.

The official SDKs drive them unchanged (``client.realtime.connect``, ``client.responses.connect``,
``client.aio.live.connect``). A session keeps its conversation, so each response's input counts every earlier
item, the previous answers included, as the providers bill it. Each response (a Gemini turn) is one
:class:`ServedRecord` (dialect ``openai-realtime``, ``openai-responses-ws`` or ``gemini-live``) with the usage
reported; how each session ended is appended to ``app[WS_SESSIONS]`` (the close code and reason the client
sent, or ``None`` when it dropped).

Controls, read from the handshake's headers (the SDKs' ``extra_headers`` / ``http_options.headers``):
``x-upstream-output-tokens`` (text tokens per response, default 8), ``x-upstream-audio-tokens`` (output audio
tokens per response, default 0), ``x-upstream-input-audio-tokens`` (input audio tokens per response),
``x-upstream-cached-tokens`` (cached part of each input), ``x-upstream-fail: reset-mid-stream`` (the first
response stops after its first delta and the connection drops without a close frame),
``x-upstream-ws-close: CODE reason`` (the server closes with it after the first response).

Realtime input audio (``input_audio_buffer.append`` / ``commit``) counts 10 tokens a second of pcm16 at 24 kHz;
with ``session.audio.input.transcription.model`` set, each commit is transcribed and billed on
``conversation.item.input_audio_transcription.completed`` (its own ServedRecord under that model).

Wire shapes: Realtime's ``response.done`` carries ``response.usage`` {input_tokens, output_tokens,
total_tokens, input_token_details {text_tokens, audio_tokens, image_tokens, cached_tokens,
cached_tokens_details}, output_token_details {text_tokens, audio_tokens}}; Responses events are the SSE
stream's, as JSON messages; Gemini sends JSON in binary frames, ``setupComplete`` first, then
``serverContent`` parts and a last message with ``turnComplete`` and ``usageMetadata`` {promptTokenCount,
responseTokenCount, totalTokenCount, promptTokensDetails / responseTokensDetails per modality}.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .ledger import Ledger
from .tokens import answer_words, count_messages, group

WS_SESSIONS: web.AppKey[list[dict[str, Any]]] = web.AppKey("tokenbudget_testing.upstream.ws_sessions", list)


@dataclass
class Controls:
    output: int = 8
    audio: int = 0
    input_audio: int = 0
    cached: int = 0
    fail: str | None = None
    close: tuple[int, str] | None = None

    @classmethod
    def of(cls, headers: Any) -> Controls:
        close = headers.get("x-upstream-ws-close")
        code, _, reason = (close or "").partition(" ")
        def number(name: str, default: int = 0) -> int:
            return int(headers.get(name, default))

        return cls(number("x-upstream-output-tokens", 8), number("x-upstream-audio-tokens"),
                   number("x-upstream-input-audio-tokens"), number("x-upstream-cached-tokens"),
                   headers.get("x-upstream-fail"), (int(code), reason) if close else None)


@dataclass
class Conversation:
    """A session's context: every item sent or generated, counted as chat messages."""

    ctl: Controls
    messages: list[dict[str, Any]] = field(default_factory=list)
    instructions: str = ""
    responses: int = 0
    audio_buffer: int = 0  # bytes appended and not committed yet (Realtime input_audio_buffer)
    audio_tokens: int = 0  # input audio committed into the conversation, in tokens

    def input_tokens(self) -> int:
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return count_messages(system + self.messages)

    def answer(self) -> list[tuple[str, int]]:
        words = answer_words(self.ctl.output)
        self.messages.append({"role": "assistant", "content": "".join(words)})
        return group(words, 1)

    @property
    def cut(self) -> bool:
        return self.ctl.fail == "reset-mid-stream" and self.responses == 1


async def run_session(request: web.Request, dialect: str, run: Callable[[web.WebSocketResponse, Conversation,
                   Callable[..., None]], Awaitable[None]]) -> web.WebSocketResponse:
    """Accept the upgrade, run the dialect's loop, record how the client ended the session."""
    from .app import LEDGER

    ws = web.WebSocketResponse(autoclose=False, max_msg_size=0)
    await ws.prepare(request)
    ledger: Ledger = request.app[LEDGER]
    conv = Conversation(Controls.of(request.headers))
    headers = {k.lower(): v for k, v in request.headers.items()}
    ended: dict[str, Any] = {"path": request.path, "query": dict(request.query), "headers": headers,
                             "close_code": None, "close_reason": None}

    def served(model: str, rid: str, usage: dict[str, int], completed: bool = True) -> None:
        ledger.start(request_id=rid, dialect=dialect, endpoint=request.path, model=model, stream=True, status=101,
                     request_headers=headers, request_query=dict(request.query), usage_sent=completed,
                     completed=completed, finished=True, finished_at=time.time(), **usage)

    try:
        await run(ws, conv, served)
    except Closed as closed:
        ended["close_code"], ended["close_reason"] = closed.code, closed.reason
    finally:
        request.app[WS_SESSIONS].append(ended)
    return ws


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code)
        self.code, self.reason = code, reason


async def next_message(ws: web.WebSocketResponse) -> dict[str, Any]:
    """The client's next JSON message; raises Closed when it closed (answering its close) or dropped."""
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            value = json.loads(msg.data)
            return value if isinstance(value, dict) else {}
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
            continue
        if msg.type is WSMsgType.CLOSE:
            await ws.close(code=msg.data, message=(msg.extra or "").encode())
            raise Closed(msg.data, msg.extra)
        raise Closed(None, None)  # dropped


async def drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
    raise Closed(None, "dropped by the upstream")


async def after_response(ws: web.WebSocketResponse, conv: Conversation) -> None:
    if conv.ctl.close is not None:
        code, reason = conv.ctl.close
        await ws.close(code=code, message=reason.encode())
        raise Closed(code, reason)


__all__ = ["WS_SESSIONS", "Closed", "Controls", "Conversation", "after_response", "drop", "next_message",
           "run_session"]
