"""The test upstream's WebSocket sessions speak each provider's wire format (ws_sessions.py): the official SDKs,
talking to it directly, parse every event into their own typed models, and a session's later input counts its
earlier turns, as the providers bill it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.realtime import ResponseDoneEvent

from tokenbudget_testing.upstream import LEDGER, create_app, serve
from tokenbudget_testing.upstream.tokens import count_messages
from tokenbudget_testing.upstream.ws_sessions import WS_SESSIONS


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, Any]]:
    app = create_app()
    async with serve(app=app) as url:
        yield url, app


async def test_realtime_events_parse_as_the_sdks_types_and_input_grows_with_the_conversation(
        upstream: tuple[str, Any]) -> None:
    url, app = upstream
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    usages = []
    async with client.realtime.connect(model="gpt-realtime", extra_headers={"x-upstream-output-tokens": "3"}) as conn:
        for _ in range(2):
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "Hello there"}]})
            await conn.response.create()
            async for event in conn:
                if event.type == "response.done":
                    assert isinstance(event, ResponseDoneEvent)
                    usages.append(event.response.usage)
                    break
    assert None not in usages
    assert usages[0].input_tokens == count_messages([{"role": "user", "content": "Hello there"}])
    assert usages[1].input_tokens > usages[0].input_tokens + 3, "the first answer and the second question count"
    served = app[LEDGER].records
    assert [r.input_tokens for r in served] == [u.input_tokens for u in usages]


async def test_gemini_live_answers_setup_then_turns_in_binary_frames(upstream: tuple[str, Any]) -> None:
    url, app = upstream
    path = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    async with aiohttp.ClientSession() as http, http.ws_connect(url + path) as ws:
        await ws.send_json({"setup": {"model": "models/gemini-live-2.5-flash-preview"}})
        first = await ws.receive(timeout=5)
        assert (first.type, json.loads(first.data)) == (aiohttp.WSMsgType.BINARY, {"setupComplete": {}})
        await ws.send_json({"client_content": {"turns": [{"role": "user", "parts": [{"text": "Hi"}]}],
                                               "turn_complete": True}})
        messages = []
        while not messages or "usageMetadata" not in messages[-1]:
            messages.append(json.loads((await ws.receive(timeout=5)).data))
        await ws.close(code=4000, message=b"bye")
    last = messages[-1]
    assert last["serverContent"] == {"turnComplete": True}
    assert last["usageMetadata"]["responseTokenCount"] == 8
    (served,) = app[LEDGER].records
    assert (served.dialect, served.model, served.output_tokens) == ("gemini-live", "gemini-live-2.5-flash-preview", 8)
    assert [(s["close_code"], s["close_reason"]) for s in app[WS_SESSIONS]] == [(4000, "bye")]
