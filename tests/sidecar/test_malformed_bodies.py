"""Malformed request bodies never become a 5xx (issue 14, part 6).

A fuzz-style table: for every route each dialect meters, a valid body with one field (top level or
nested) replaced by each value of a list of wrong types and extremes, plus whole bodies nested far past
Python's recursion limit. Every answer must be below 500 and JSON in the provider's error shape (or the
upstream's own answer). Caps that break accounting (not an integer, negative, past int32) must be a 400
from the sidecar naming the field, the way the provider itself would answer.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from sidecar_harness import Stack, stack

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": False,
        "stream_options": {"include_usage": True}, "user": "u", "reasoning_effort": "low", "tools": [],
        "max_completion_tokens": 6}
RESPONSES = {"model": "o4-mini", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 20,
             "reasoning": {"effort": "low"}, "instructions": "x", "user": "u", "stream": False}
EMBEDDINGS = {"model": "text-embedding-3-small", "input": "hi", "user": "u"}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}],
            "system": "x", "metadata": {"user_id": "u"}, "stream": False,
            "thinking": {"type": "enabled", "budget_tokens": 1024}, "output_config": {"effort": "low"}}
GENERATE = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"maxOutputTokens": 50, "thinkingConfig": {"thinkingBudget": 100,
                                                                           "thinkingLevel": "LOW"}},
            "systemInstruction": {"parts": [{"text": "x"}]}}
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai-chat", "/openai/v1/chat/completions", CHAT),
    ("openai-responses", "/openai/v1/responses", RESPONSES),
    ("openai-embeddings", "/openai/v1/embeddings", EMBEDDINGS),
    ("anthropic-messages", "/anthropic/v1/messages", MESSAGES),
    ("gemini-generate", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", GENERATE),
    ("gemini-stream", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", GENERATE),
]


DEEP = "__nested_3000_levels__"  # spliced in as raw bytes: json.dumps itself cannot nest that deep
WEIRD: list[Any] = [None, "x", "", -1, 0, 1.5, True, [], {}, [1, "a", None, {}], {"a": {"b": []}}, 10**30, DEEP]


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode().replace(f'"{DEEP}"'.encode(), b"[" * 3000 + b"]" * 3000)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path in a JSON value (list items included)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def replaced(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def cases() -> Iterator[Any]:
    for name, url, body in ROUTES:
        bodies = [replaced(body, p, w) for p in paths(body) for w in WEIRD]
        bodies += [{**body, "model": w} for w in WEIRD]
        yield pytest.param(url, bodies, id=name)


TIER = {"namespace": "team", "name": "reasoning", "generation": 1, "authorizedTiers": [],
        "spec": {"selector": {}, "defaultTier": "standard", "tiers": [{"name": "standard", "budgetTokens": 8192}],
                 "classes": []}}
BUDGET = {"namespace": "team", "name": "caps", "generation": 1,
          "spec": {"selector": {}, "request": {"maxOutputTokens": 4000, "onOversize": "Clamp"},
                   "limits": [{"name": "day", "period": "Day", "tokens": 10**12, "per": "User"}],
                   "ladder": [{"at": 1, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini"}}]}}


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack(thinkTiers=[TIER], budgets=[BUDGET]) as st:
        yield st


async def _post(http: aiohttp.ClientSession, url: str, raw: bytes) -> tuple[int, Any]:
    async with http.post(url, data=raw, headers={"content-type": "application/json",
                                                 "x-upstream-output-tokens": "2"}) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


@pytest.mark.parametrize(("url", "bodies"), list(cases()))
async def test_no_malformed_body_gets_a_5xx(s: Stack, url: str, bodies: list[dict[str, Any]]) -> None:
    failures = []
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            raw = encode(body)
            status, payload = await _post(http, s.sidecar + url, raw)
            if status >= 500 or (status >= 400 and not isinstance(payload, dict)):
                failures.append((status, str(payload)[:300], raw[:300]))
    assert not failures, f"{len(failures)} of {len(bodies)} bodies got a 5xx or a non-JSON answer: {failures[:5]}"
    s.reset()


@pytest.mark.parametrize("where", ["body", "field"])
@pytest.mark.parametrize(("name", "url", "body"), ROUTES, ids=[r[0] for r in ROUTES])
async def test_a_body_nested_100000_levels_deep_is_a_400_in_the_providers_shape(
    s: Stack, name: str, url: str, body: dict[str, Any], where: str,
) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    raw = nested if where == "body" else json.dumps(body).encode()[:-1] + b', "extra": ' + nested + b"}"
    async with aiohttp.ClientSession() as http:
        status, payload = await _post(http, s.sidecar + url, raw)
    assert status == 400, payload
    message = payload["error"]["message"]
    assert "nested too deeply" in message
    await asyncio.sleep(0.05)
    assert s.ledger.records == [], "a body the sidecar cannot parse never reaches the provider"


CAPS = [
    # (route, path in the body, value, what the message must say)
    ("openai-chat", ("max_tokens",), "100", "Invalid type for 'max_tokens': expected an integer"),
    ("openai-chat", ("max_completion_tokens",), 1.5, "Invalid type for 'max_completion_tokens'"),
    ("openai-chat", ("max_tokens",), -1, "Invalid 'max_tokens': integer below minimum value"),
    ("openai-chat", ("max_completion_tokens",), 10**12, "Invalid 'max_completion_tokens': integer above maximum"),
    ("openai-chat", ("max_tokens",), True, "Invalid type for 'max_tokens'"),
    ("openai-responses", ("max_output_tokens",), "20", "Invalid type for 'max_output_tokens'"),
    ("openai-responses", ("max_output_tokens",), -5, "Invalid 'max_output_tokens': integer below minimum"),
    ("anthropic-messages", ("max_tokens",), "2000", "max_tokens: Input should be a valid integer"),
    ("anthropic-messages", ("max_tokens",), -1, "max_tokens: Input should be greater than or equal to 0"),
    ("anthropic-messages", ("max_tokens",), 2**40, "max_tokens: Input should be less than or equal to"),
    ("gemini-generate", ("generationConfig", "maxOutputTokens"), "50",
     "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32)"),
    ("gemini-generate", ("generationConfig", "maxOutputTokens"), -3,
     "Invalid value at 'generation_config.max_output_tokens'"),
    ("gemini-stream", ("generationConfig", "maxOutputTokens"), 2**35,
     "Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32)"),
]


@pytest.mark.parametrize(("route", "path", "value", "fragment"), CAPS,
                         ids=[f"{c[0]}-{'.'.join(c[1])}-{c[2]!r:.12}" for c in CAPS])
async def test_a_cap_that_is_not_a_sane_integer_is_a_400_naming_the_field(
    s: Stack, route: str, path: tuple[str, ...], value: Any, fragment: str,
) -> None:
    _, url, body = next(r for r in ROUTES if r[0] == route)
    async with aiohttp.ClientSession() as http:
        status, payload = await _post(http, s.sidecar + url, json.dumps(replaced(body, path, value)).encode())
    assert status == 400, payload
    assert fragment in payload["error"]["message"]
    if route.startswith("openai"):
        assert payload["error"]["param"] == path[-1]
        assert payload["error"]["type"] == "invalid_request_error"
    elif route.startswith("anthropic"):
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
    else:
        assert payload["error"]["status"] == "INVALID_ARGUMENT"
    await asyncio.sleep(0.05)
    assert s.ledger.records == [], "a cap the provider would refuse never reaches it"


MALFORMED_FORMS = [
    ("multipart/form-data", b"model=whisper-1"),  # no boundary
    ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw"),
    ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nno blank line\r\n--XyZ--\r\n"),
    ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; "
     b"filename=\"a.wav\"\r\n\r\nRIFF\r\n--XyZ--\r\n"),  # well formed, but no model
]


@pytest.mark.parametrize(("content_type", "raw"), MALFORMED_FORMS)
async def test_a_malformed_multipart_form_is_a_400_in_openais_shape(s: Stack, content_type: str, raw: bytes) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{s.openai_url}/audio/transcriptions", data=raw, headers={"content-type": content_type}) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("tokenbudget: ")
