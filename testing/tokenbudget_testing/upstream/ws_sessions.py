"""WebSocket endpoints in each provider's wire format: OpenAI Realtime (``GET /v1/realtime?model=``), Responses
over WebSocket (``GET /v1/responses``) and Gemini Live
(``GET /ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent``).

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

import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .dialect import new_id
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


async def _session(request: web.Request, dialect: str, run: Callable[[web.WebSocketResponse, Conversation,
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
    except _Closed as closed:
        ended["close_code"], ended["close_reason"] = closed.code, closed.reason
    finally:
        request.app[WS_SESSIONS].append(ended)
    return ws


class _Closed(Exception):
    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(code)
        self.code, self.reason = code, reason


async def _next(ws: web.WebSocketResponse) -> dict[str, Any]:
    """The client's next JSON message; raises _Closed when it closed (answering its close) or dropped."""
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
            raise _Closed(msg.data, msg.extra)
        raise _Closed(None, None)  # dropped


async def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
    raise _Closed(None, "dropped by the upstream")


async def _after_response(ws: web.WebSocketResponse, conv: Conversation) -> None:
    if conv.ctl.close is not None:
        code, reason = conv.ctl.close
        await ws.close(code=code, message=reason.encode())
        raise _Closed(code, reason)


# ----- OpenAI Realtime ----------------------------------------------------------------------------


def realtime_usage(conv: Conversation) -> tuple[dict[str, Any], dict[str, int]]:
    """(the wire's usage object, the ledger's normalized fields) of the next response."""
    text_in = conv.input_tokens()
    audio_in = conv.ctl.input_audio + conv.audio_tokens
    cached = min(conv.ctl.cached, text_in)
    out_text, out_audio = conv.ctl.output, conv.ctl.audio
    wire = {"total_tokens": text_in + audio_in + out_text + out_audio, "input_tokens": text_in + audio_in,
            "output_tokens": out_text + out_audio,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                    "cached_tokens": cached,
                                    "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0,
                                                              "image_tokens": 0}},
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio}}
    ledger = {"input_tokens": text_in + audio_in, "cached_input_tokens": cached, "input_audio_tokens": audio_in,
              "output_tokens": out_text + out_audio, "output_audio_tokens": out_audio}
    return wire, ledger


async def realtime(request: web.Request) -> web.StreamResponse:
    if request.headers.get("upgrade", "").lower() != "websocket":
        return web.json_response({"error": {"message": "Expected a WebSocket upgrade.", "type":
                                            "invalid_request_error", "param": None, "code": None}}, status=400)
    model = request.query.get("model", "")

    async def run(ws: web.WebSocketResponse, conv: Conversation, served: Callable[..., None]) -> None:
        session: dict[str, Any] = {"type": "realtime", "object": "realtime.session", "id": new_id("sess_"),
                                   "model": model, "output_modalities": ["audio"], "instructions": "",
                                   "max_output_tokens": "inf"}

        async def send(payload: dict[str, Any]) -> None:
            await ws.send_str(json.dumps({"event_id": new_id("event_"), **payload}))

        await send({"type": "session.created", "session": session})
        while True:
            event = await _next(ws)
            kind = event.get("type")
            if kind == "session.update":
                session.update({k: v for k, v in (event.get("session") or {}).items() if k != "type"})
                conv.instructions = str(session.get("instructions") or "")
                await send({"type": "session.updated", "session": session})
            elif kind == "conversation.item.create":
                item = {"id": new_id("item_"), "object": "realtime.item", "status": "completed",
                        **(event.get("item") or {})}
                texts = [p.get("text", "") for p in item.get("content", []) if isinstance(p, dict)]
                conv.messages.append({"role": item.get("role", "user"), "content": "".join(texts)})
                await send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
                await send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
            elif kind == "input_audio_buffer.append":
                conv.audio_buffer += len(base64.b64decode(str(event.get("audio", ""))))
            elif kind == "input_audio_buffer.commit":
                await _commit_audio(conv, served, send, session)
            elif kind == "response.create":
                await _realtime_response(request, ws, conv, served, send, session)
            else:
                await send({"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_event",
                                                       "message": f"Unknown event type {kind!r}", "param": None,
                                                       "event_id": event.get("event_id")}})

    return await _session(request, "openai-realtime", run)


AUDIO_BYTES_PER_TOKEN = 4800  # this upstream's rule: pcm16 at 24 kHz (48,000 bytes/s), 10 tokens a second
TRANSCRIPT = "hello there"  # two o200k tokens


async def _commit_audio(conv: Conversation, served: Callable[..., None],
                        send: Callable[[dict[str, Any]], Awaitable[None]], session: dict[str, Any]) -> None:
    """The buffer becomes a user audio item; with transcription configured, its transcript and that usage follow
    (billed at the transcription model's rates: tokens for gpt-4o-*transcribe, seconds for whisper-1)."""
    tokens, seconds = max(conv.audio_buffer // AUDIO_BYTES_PER_TOKEN, 1), conv.audio_buffer / 48000
    conv.audio_buffer, conv.audio_tokens = 0, conv.audio_tokens + tokens
    item_id = new_id("item_")
    item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": None}]}
    await send({"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": item_id})
    await send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
    transcription = ((session.get("audio") or {}).get("input") or {}).get("transcription") or {}
    model = transcription.get("model") if isinstance(transcription, dict) else None
    if not model:
        return
    if model == "whisper-1":
        usage: dict[str, Any] = {"type": "duration", "seconds": round(seconds, 3)}
        normalized: dict[str, Any] = {"audio_seconds": round(seconds, 3)}
    else:
        usage = {"type": "tokens", "input_tokens": tokens, "output_tokens": 2, "total_tokens": tokens + 2,
                 "input_token_details": {"text_tokens": 0, "audio_tokens": tokens}}
        normalized = {"input_tokens": tokens, "input_audio_tokens": tokens, "output_tokens": 2}
    await send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                "content_index": 0, "transcript": TRANSCRIPT, "usage": usage})
    served(str(model), item_id, normalized)


async def _realtime_response(request: web.Request, ws: web.WebSocketResponse, conv: Conversation,
                             served: Callable[..., None], send: Callable[[dict[str, Any]], Awaitable[None]],
                             session: dict[str, Any]) -> None:
    conv.responses += 1
    rid, item_id = new_id("resp_"), new_id("item_")
    wire, normalized = realtime_usage(conv)
    base = {"object": "realtime.response", "id": rid, "conversation_id": new_id("conv_"),
            "output_modalities": session.get("output_modalities"), "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}}}
    await send({"type": "response.created", "response": {**base, "status": "in_progress", "output": [],
                                                          "usage": None}})
    text = ""
    for i, (delta, _) in enumerate(conv.answer()):
        text += delta
        await send({"type": "response.output_text.delta", "response_id": rid, "item_id": item_id,
                    "output_index": 0, "content_index": 0, "delta": delta})
        if conv.cut and i == 0:
            served(str(session.get("model", "")), rid, normalized, completed=False)
            await _drop(request)
    if conv.ctl.audio:
        await send({"type": "response.output_audio.delta", "response_id": rid, "item_id": item_id,
                    "output_index": 0, "content_index": 1,
                    "delta": base64.b64encode(b"\0" * 480 * conv.ctl.audio).decode()})
    item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text}]}
    await send({"type": "response.output_text.done", "response_id": rid, "item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text})
    await send({"type": "response.done", "response": {**base, "status": "completed", "output": [item],
                                                       "usage": wire}})
    served(str(session.get("model", "")), rid, normalized)
    await _after_response(ws, conv)


# ----- Responses over WebSocket -------------------------------------------------------------------


async def responses(request: web.Request) -> web.StreamResponse:
    if request.headers.get("upgrade", "").lower() != "websocket":
        return web.json_response({"error": {"message": "Expected a WebSocket upgrade.", "type":
                                            "invalid_request_error", "param": None, "code": None}}, status=400)

    async def run(ws: web.WebSocketResponse, conv: Conversation, served: Callable[..., None]) -> None:
        seq = 0

        async def send(payload: dict[str, Any]) -> None:
            nonlocal seq
            await ws.send_str(json.dumps({**payload, "sequence_number": seq}))
            seq += 1

        while True:
            event = await _next(ws)
            if event.get("type") != "response.create":
                await send({"type": "error", "code": "invalid_request_error", "message":
                            f"Unknown event type {event.get('type')!r}", "param": None})
                continue
            model = str(event.get("model", ""))
            conv.instructions = str(event.get("instructions") or conv.instructions)
            source = event.get("input")
            for item in [source] if isinstance(source, str) else source if isinstance(source, list) else []:
                content = item if isinstance(item, str) else item.get("content") if isinstance(item, dict) else ""
                conv.messages.append({"role": "user", "content": content})
            conv.responses += 1
            rid, item_id = new_id("resp_"), new_id("msg_")
            prompt = conv.input_tokens()
            cached = min(conv.ctl.cached, prompt)
            base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
                    "output": [], "parallel_tool_calls": True, "tool_choice": "auto", "tools": []}
            await send({"type": "response.created", "response": {**base, "status": "in_progress"}})
            text = ""
            for i, (delta, _) in enumerate(conv.answer()):
                text += delta
                await send({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                            "content_index": 0, "delta": delta, "logprobs": []})
                if conv.cut and i == 0:
                    served(model, rid, {"input_tokens": prompt, "output_tokens": conv.ctl.output}, completed=False)
                    await _drop(request)
            usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                     "output_tokens": conv.ctl.output, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": prompt + conv.ctl.output}
            item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}
            await send({"type": "response.completed", "response": {**base, "status": "completed", "output": [item],
                                                                    "usage": usage}})
            served(model, rid, {"input_tokens": prompt, "cached_input_tokens": cached,
                                "output_tokens": conv.ctl.output})
            await _after_response(ws, conv)

    return await _session(request, "openai-responses-ws", run)


# ----- Gemini Live --------------------------------------------------------------------------------


async def live(request: web.Request) -> web.StreamResponse:
    if not request.match_info["service"].startswith("google.ai.generativelanguage."):
        return web.json_response({"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}},
                                 status=404)

    async def run(ws: web.WebSocketResponse, conv: Conversation, served: Callable[..., None]) -> None:
        async def send(payload: dict[str, Any]) -> None:
            await ws.send_bytes(json.dumps(payload).encode())

        setup = (await _next(ws)).get("setup") or {}
        model = str(setup.get("model", "")).removeprefix("models/")
        system = setup.get("systemInstruction") or setup.get("system_instruction") or {}
        conv.instructions = "".join(p.get("text", "") for p in system.get("parts", []) if isinstance(p, dict))
        await send({"setupComplete": {}})
        while True:
            message = await _next(ws)  # proto JSON: camelCase or snake_case names (the SDK sends client_content)
            content = message.get("clientContent") or message.get("client_content") or {}
            turns = content.get("turns") or []
            realtime = message.get("realtimeInput") or message.get("realtime_input") or {}
            if isinstance(realtime.get("text"), str):
                turns = [{"role": "user", "parts": [{"text": realtime["text"]}]}]
            if not turns:
                continue
            for turn in turns:
                texts = [p.get("text", "") for p in turn.get("parts", []) if isinstance(p, dict)]
                conv.messages.append({"role": turn.get("role", "user"), "content": "".join(texts)})
            conv.responses += 1
            rid = new_id("live-")
            prompt_text = conv.input_tokens()
            prompt = prompt_text + conv.ctl.input_audio
            out = conv.ctl.output + conv.ctl.audio
            normalized = {"input_tokens": prompt, "input_audio_tokens": conv.ctl.input_audio,
                          "output_tokens": out, "output_audio_tokens": conv.ctl.audio}
            for i, (delta, _) in enumerate(conv.answer()):
                await send({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": delta}]}}})
                if conv.cut and i == 0:
                    served(model, rid, normalized, completed=False)
                    await _drop(request)
            if conv.ctl.audio:
                audio = base64.b64encode(b"\0" * 960 * conv.ctl.audio).decode()
                await send({"serverContent": {"modelTurn": {"role": "model", "parts": [
                    {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": audio}}]}}})
            await send({"serverContent": {"generationComplete": True}})
            details_in = [{"modality": "TEXT", "tokenCount": prompt_text}] + (
                [{"modality": "AUDIO", "tokenCount": conv.ctl.input_audio}] if conv.ctl.input_audio else [])
            details_out = [{"modality": "TEXT", "tokenCount": conv.ctl.output}] + (
                [{"modality": "AUDIO", "tokenCount": conv.ctl.audio}] if conv.ctl.audio else [])
            await send({"serverContent": {"turnComplete": True},
                        "usageMetadata": {"promptTokenCount": prompt, "responseTokenCount": out,
                                          "totalTokenCount": prompt + out, "promptTokensDetails": details_in,
                                          "responseTokensDetails": details_out}})
            served(model, rid, normalized)
            await _after_response(ws, conv)

    return await _session(request, "gemini-live", run)


__all__ = ["WS_SESSIONS", "live", "realtime", "responses"]
