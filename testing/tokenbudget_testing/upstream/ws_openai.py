"""OpenAI's WebSocket sessions in the test upstream: Realtime (``GET /v1/realtime?model=``) and Responses over a
WebSocket (``GET /v1/responses``). The session machinery and the controls are ws_sessions.py's."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .dialect import new_id
from .ws_sessions import Conversation, after_response, drop, next_message, run_session

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
            event = await next_message(ws)
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

    return await run_session(request, "openai-realtime", run)


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
            await drop(request)
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
    await after_response(ws, conv)


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
            event = await next_message(ws)
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
                    await drop(request)
            usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                     "output_tokens": conv.ctl.output, "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": prompt + conv.ctl.output}
            item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}
            await send({"type": "response.completed", "response": {**base, "status": "completed", "output": [item],
                                                                    "usage": usage}})
            served(model, rid, {"input_tokens": prompt, "cached_input_tokens": cached,
                                "output_tokens": conv.ctl.output})
            await after_response(ws, conv)

    return await run_session(request, "openai-responses-ws", run)


__all__ = ["realtime", "realtime_usage", "responses"]
