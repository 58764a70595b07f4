"""Gemini Live in the test upstream (``GET /ws/google.ai.generativelanguage.{version}.GenerativeService.
BidiGenerateContent``). The session machinery and the controls are ws_sessions.py's."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .dialect import new_id
from .ws_sessions import Conversation, after_response, drop, next_message, run_session

# ----- Gemini Live --------------------------------------------------------------------------------


async def live(request: web.Request) -> web.StreamResponse:
    if not request.match_info["service"].startswith("google.ai.generativelanguage."):
        return web.json_response({"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}},
                                 status=404)

    async def run(ws: web.WebSocketResponse, conv: Conversation, served: Callable[..., None]) -> None:
        async def send(payload: dict[str, Any]) -> None:
            await ws.send_bytes(json.dumps(payload).encode())

        setup = (await next_message(ws)).get("setup") or {}
        model = str(setup.get("model", "")).removeprefix("models/")
        system = setup.get("systemInstruction") or setup.get("system_instruction") or {}
        conv.instructions = "".join(p.get("text", "") for p in system.get("parts", []) if isinstance(p, dict))
        await send({"setupComplete": {}})
        while True:
            message = await next_message(ws)  # proto JSON: camelCase or snake_case names (the SDK sends client_content)
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
                    await drop(request)
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
            await after_response(ws, conv)

    return await run_session(request, "gemini-live", run)


__all__ = ["live"]
