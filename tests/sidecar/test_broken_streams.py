"""A stream that ends without its provider's completion event is recorded truncated, with the outcome that
happened and an output of max(the provider's last figure, an estimate of the text relayed) (issue 14, part 4).

Golden records, one per provider and way a stream breaks, driven by the official SDKs: the upstream resets
the connection, sends its in-stream error event, goes silent past the sidecar's read timeout, or the app
hangs up under `onDisconnect: Cut`. Regenerate: TOKENBUDGET_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, stack

from tokenbudget_api.usage import Disconnect, Outcome, UsageRecord, UsageSource
from tokenbudget_sidecar.settings import Settings
from tokenbudget_testing.upstream.ledger import ServedRecord

GOLDEN_DIR = Path(__file__).parent / "golden" / "broken_streams"
UPDATE = os.environ.get("TOKENBUDGET_UPDATE_GOLDEN", "") not in ("", "0", "false")
PROMPT = "Write a short paragraph about rivers."
OUTCOMES = {"reset": Outcome.UPSTREAM_FAILED, "in-stream-error": Outcome.UPSTREAM_ERROR,
            "timeout": Outcome.UPSTREAM_FAILED, "cut": Outcome.CLIENT_DISCONNECTED}
FAIL_HEADER = {"reset": "reset-mid-stream", "in-stream-error": "in-stream-error", "timeout": "stall-mid-stream"}

Drive = Callable[[Stack, dict[str, str]], Iterator[Any]]


def openai_chat(s: Stack, headers: dict[str, str]) -> Iterator[Any]:
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    with client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}],
                                        stream=True, extra_headers=headers) as stream:
        yield from stream


def openai_responses(s: Stack, headers: dict[str, str]) -> Iterator[Any]:
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    with client.responses.create(model="gpt-4o", input=PROMPT, stream=True, extra_headers=headers) as stream:
        yield from stream


def anthropic_messages(s: Stack, headers: dict[str, str]) -> Iterator[Any]:
    client = anthropic.Anthropic(base_url=s.anthropic_url, api_key="sk-ant-test", max_retries=0)
    with client.messages.create(model="claude-sonnet-4-5", max_tokens=500, stream=True, extra_headers=headers,
                                messages=[{"role": "user", "content": PROMPT}]) as stream:
        yield from stream


def gemini_stream(s: Stack, headers: dict[str, str]) -> Iterator[Any]:
    client = genai.Client(api_key="test-key", http_options=gtypes.HttpOptions(base_url=s.gemini_url))
    stream = client.models.generate_content_stream(
        model="gemini-2.5-flash", contents=PROMPT,
        config=gtypes.GenerateContentConfig(http_options=gtypes.HttpOptions(headers=headers)))
    try:
        yield from stream
    finally:
        stream.close()


PROVIDERS: dict[str, Drive] = {"openai-chat": openai_chat, "openai-responses": openai_responses,
                               "anthropic": anthropic_messages, "gemini": gemini_stream}
CASES = [(p, w) for p in PROVIDERS for w in OUTCOMES]


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack(Settings(data_port=0, admin_port=0, read_timeout_s=0.5), onDisconnect="Cut") as st:
        yield st


def run(s: Stack, provider: str, way: str) -> tuple[UsageRecord, ServedRecord]:
    headers = {"x-upstream-output-tokens": "40", "x-upstream-chunk-delay-ms": "10"}
    if way in FAIL_HEADER:
        headers["x-upstream-fail"] = FAIL_HEADER[way]
    events = PROVIDERS[provider](s, headers)
    seen = 0
    with contextlib.suppress(Exception):  # the SDK raises for a reset, an error event, a dropped stream
        for _ in events:
            seen += 1
            if way == "cut" and seen == 6:
                break  # the app walks away mid-stream; the generator's close() closes the SDK stream
    events.close()
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1, timeout=10)
    return rec, served


def golden_view(rec: UsageRecord, way: str) -> dict[str, Any]:
    view = rec.model_dump(mode="json", include={"operation", "model", "stream", "status", "outcome", "usage",
                                                "source", "truncated", "disconnect", "prompt_estimate"})
    if way == "cut":  # how far the stream got before the hang-up is timing; the invariants below check it
        view["usage"]["output_tokens"] = "≈ emitted"
        view["source"] = "estimated or provider"
    view["cost_usd"] = "priced" if rec.cost_usd is not None else None
    return view


@pytest.mark.parametrize(("provider", "way"), CASES, ids=[f"{p}-{w}" for p, w in CASES])
def test_a_broken_stream_is_recorded_truncated_with_its_outcome_and_the_larger_output_figure(
    s: Stack, provider: str, way: str,
) -> None:
    s.reset()
    rec, served = run(s, provider, way)
    assert rec.truncated, "a stream without its completion event is truncated"
    assert rec.outcome is OUTCOMES[way]
    assert rec.disconnect is (Disconnect.CUT if way == "cut" else None)
    assert not served.usage_sent, "the upstream never sent its final usage"
    assert served.completed is (way == "in-stream-error"), "only the error event ends the body in order"
    # What the provider bills is what it generated before the break; the text relayed estimates it.
    assert served.emitted_output_tokens > 0
    assert abs(rec.usage.output_tokens - served.emitted_output_tokens) <= 2, (rec.usage, served)
    assert rec.usage.input_tokens > 0
    if provider == "anthropic":  # message_start's output of 1 is a placeholder, not the figure
        assert rec.source is UsageSource.ESTIMATED
    assert rec.cost_usd is not None
    assert rec.cost_usd > 0
    path = GOLDEN_DIR / f"{provider}-{way}.json"
    view = golden_view(rec, way)
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
    assert view == json.loads(path.read_text())
