"""The test upstream, driven directly by the official SDKs: what they parse must equal what it recorded.

The stand-in provider is only useful if the real clients accept it and its ledger tells the truth, so
every test goes through openai / anthropic / google-genai (sync, async, streaming) and compares the
usage the SDK sees with the normalized usage in the ledger.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tokenbudget_testing.upstream import (
    LEDGER,
    Ledger,
    ServedRecord,
    UpstreamSettings,
    create_app,
    serve,
    serve_in_thread,
)
from tokenbudget_testing.upstream.behaviour import Controls, make_plan, parse_controls
from tokenbudget_testing.upstream.tokens import answer_words, count_messages, count_text, thinking_words

CLAUDE = "claude-sonnet-4-6"
GEMINI = "gemini-2.5-flash"
HI = [{"role": "user", "content": "hi"}]
HI_PROMPT = 8  # 3 per message + "user" + "hi" + 3 for reply priming


def h(**controls: object) -> dict[str, str]:
    """x-upstream-* headers from keyword arguments: h(output_tokens=3) → {"x-upstream-output-tokens": "3"}."""
    return {f"x-upstream-{name.replace('_', '-')}": str(value) for name, value in controls.items()}


def drain(stream: Iterable[Any], sink: list[Any]) -> None:
    """Collect a stream's items into ``sink``, so a test can look at them after the stream raised."""
    sink.extend(stream)


def gemini_config(**controls: object) -> genai_types.GenerateContentConfig:
    return genai_types.GenerateContentConfig(http_options=genai_types.HttpOptions(headers=h(**controls)))


@dataclass
class Upstream:
    url: str
    ledger: Ledger

    def only(self) -> ServedRecord:
        records = self.ledger.wait_finished(1)
        assert len(records) == 1, records
        return records[0]


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[Upstream]:
    app = create_app()
    with serve_in_thread(app=app) as url:
        yield Upstream(url, app[LEDGER])


@pytest.fixture
def upstream(upstream_server: Upstream) -> Upstream:
    upstream_server.ledger.clear()
    return upstream_server


@pytest.fixture
def oai(upstream: Upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def aoai(upstream: Upstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{upstream.url}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def claude(upstream: Upstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=upstream.url, api_key="sk-ant-test", max_retries=0)


@pytest.fixture
def gemini(upstream: Upstream) -> genai.Client:
    return genai.Client(api_key="g-test", http_options=genai_types.HttpOptions(base_url=upstream.url))


def normalized(record: ServedRecord) -> tuple[int, int, int, int, int]:
    return (
        record.input_tokens,
        record.cached_input_tokens,
        record.cache_creation_input_tokens,
        record.output_tokens,
        record.reasoning_tokens,
    )


def openai_chat_usage(usage: Any) -> tuple[int, int, int, int, int]:
    return (
        usage.prompt_tokens,
        usage.prompt_tokens_details.cached_tokens,
        usage.prompt_tokens_details.cache_write_tokens,
        usage.completion_tokens,
        usage.completion_tokens_details.reasoning_tokens,
    )


def anthropic_usage(usage: Any) -> tuple[int, int, int, int, int]:
    thinking = usage.output_tokens_details.thinking_tokens if usage.output_tokens_details else 0
    total_in = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    return (total_in, usage.cache_read_input_tokens, usage.cache_creation_input_tokens, usage.output_tokens, thinking)


def gemini_usage(meta: Any) -> tuple[int, int, int, int, int]:
    thoughts = meta.thoughts_token_count or 0
    return (
        meta.prompt_token_count,
        meta.cached_content_token_count or 0,
        0,
        (meta.candidates_token_count or 0) + thoughts,
        thoughts,
    )


# ------------------------------------------------------------------------------------------------
# Counting and planning rules


def test_prompt_counting_reproduces_the_cookbook_gpt4o_vector() -> None:
    messages = [
        {
            "role": "system",
            "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
            "into plain English.",
        },
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Things working well together will increase revenue.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
            "increased leverage.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Let's talk later when we're less busy about how to do better.",
        },
        {
            "role": "user",
            "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
        },
    ]
    assert count_messages(messages) == 124  # V20, o200k_base


def test_generated_words_are_exactly_one_token_each_even_when_joined() -> None:
    for words in (answer_words(100), thinking_words(100)):
        assert len(words) == 100
        assert count_text("".join(words)) == 100
        assert count_text("".join(words), "cl100k_base") == 100


def _controls(**headers: object) -> Controls:
    return parse_controls(h(**headers), UpstreamSettings())


def test_thinking_over_its_budget_is_cut_silently_without_truncation() -> None:
    plan = make_plan(
        _controls(reasoning_tokens=5000, output_tokens=10), counted_prompt=20, output_cap=8000, thinking_budget=1024
    )
    assert (plan.reasoning_tokens, plan.visible_tokens, plan.truncated) == (1024, 10, False)


def test_thinking_that_eats_the_whole_cap_leaves_an_empty_truncated_answer() -> None:
    plan = make_plan(
        _controls(reasoning_tokens=500, output_tokens=10), counted_prompt=20, output_cap=100, thinking_budget=None
    )
    assert (plan.reasoning_tokens, plan.visible_tokens, plan.truncated) == (100, 0, True)


def test_an_answer_longer_than_what_thinking_left_is_truncated() -> None:
    plan = make_plan(
        _controls(reasoning_tokens=60, output_tokens=50), counted_prompt=20, output_cap=100, thinking_budget=None
    )
    assert (plan.reasoning_tokens, plan.visible_tokens, plan.truncated) == (60, 40, True)


def test_cache_headers_are_carved_out_of_the_prompt_and_grow_it_when_too_large() -> None:
    small = make_plan(_controls(cached_tokens=5), counted_prompt=20, output_cap=None, thinking_budget=None)
    large = make_plan(
        _controls(cached_tokens=1920, cache_creation_tokens=80),
        counted_prompt=20,
        output_cap=None,
        thinking_budget=None,
    )
    assert (small.prompt_tokens, small.uncached_prompt_tokens) == (20, 15)
    assert (large.prompt_tokens, large.uncached_prompt_tokens) == (2000, 0)


# ------------------------------------------------------------------------------------------------
# OpenAI Chat Completions


def test_openai_chat_non_streamed_answer_and_usage_match_the_ledger(upstream: Upstream, oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers=h(output_tokens=5))

    record = upstream.only()
    assert completion.id == record.request_id
    assert completion.choices[0].message.content == "Sure here is the answer"
    assert completion.choices[0].finish_reason == "stop"
    assert openai_chat_usage(completion.usage) == normalized(record) == (HI_PROMPT, 0, 0, 5, 0)
    assert record.usage_sent
    assert record.completed
    assert not record.truncated
    assert record.request_body == {"model": "gpt-4o-mini", "messages": HI}
    assert record.request_headers["authorization"] == "Bearer sk-test"


def test_openai_chat_stream_reports_usage_only_in_one_extra_chunk_when_asked(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=h(output_tokens=6, chunk_tokens=2, cached_tokens=3),
        )
    )

    record = upstream.only()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(answer_words(6))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert all(c.usage is None for c in chunks[:-1])
    assert openai_chat_usage(chunks[-1].usage) == normalized(record) == (HI_PROMPT, 3, 0, 6, 0)
    assert record.stream
    assert record.usage_sent
    assert record.completed


def test_openai_chat_stream_without_include_usage_sends_no_usage(upstream: Upstream, oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True))

    record = upstream.only()
    assert all(c.usage is None and c.choices for c in chunks)
    assert not record.usage_sent
    assert record.completed
    assert record.output_tokens == record.emitted_output_tokens == 8


def test_openai_streamed_and_non_streamed_versions_of_a_call_report_the_same_usage(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    controls = h(reasoning_tokens=30, output_tokens=12, cached_tokens=4, cache_creation_tokens=2)
    kwargs: dict[str, Any] = {
        "model": "o3-mini",
        "messages": HI,
        "reasoning_effort": "low",
        "max_completion_tokens": 100,
        "extra_headers": controls,
    }
    whole = oai.chat.completions.create(**kwargs)
    streamed = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))

    plain, stream = upstream.ledger.wait_finished(2)
    assert openai_chat_usage(whole.usage) == openai_chat_usage(streamed[-1].usage)
    assert normalized(plain) == normalized(stream) == (HI_PROMPT, 4, 2, 42, 30)


async def test_openai_async_reasoning_over_the_cap_finishes_with_length(
    upstream: Upstream, aoai: openai.AsyncOpenAI
) -> None:
    completion = await aoai.chat.completions.create(
        model="o3-mini",
        messages=HI,
        max_completion_tokens=50,
        extra_headers=h(reasoning_tokens=45, output_tokens=20),
    )

    record = (await upstream.ledger.wait_finished_async(1))[0]
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "".join(answer_words(5))
    assert openai_chat_usage(completion.usage) == normalized(record) == (HI_PROMPT, 0, 0, 50, 45)
    assert record.truncated
    assert record.finish_reason == "length"


async def test_openai_async_stream_of_thinking_only_truncation_has_no_visible_text(
    upstream: Upstream, aoai: openai.AsyncOpenAI
) -> None:
    stream = await aoai.chat.completions.create(
        model="o3-mini",
        messages=HI,
        max_completion_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=h(reasoning_tokens=1000, chunk_tokens=16),
    )
    chunks = [chunk async for chunk in stream]

    record = (await upstream.ledger.wait_finished_async(1))[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert openai_chat_usage(chunks[-1].usage) == normalized(record) == (HI_PROMPT, 0, 0, 64, 64)
    assert record.truncated


def test_openai_effort_maps_to_a_thinking_budget_that_cuts_without_truncating(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    completion = oai.chat.completions.create(
        model="gpt-5", messages=HI, reasoning_effort="low", extra_headers=h(reasoning_tokens=5000, output_tokens=3)
    )

    assert completion.usage is not None
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 1024
    assert completion.choices[0].finish_reason == "stop"


def test_openai_n_choices_each_generate_and_are_billed_together(upstream: Upstream, oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="gpt-4o", messages=HI, n=3, extra_headers=h(output_tokens=2))

    assert [choice.message.content for choice in completion.choices] == ["Sure here"] * 3
    assert openai_chat_usage(completion.usage) == normalized(upstream.only()) == (HI_PROMPT, 0, 0, 6, 0)


def test_a_large_prompt_is_counted_with_the_documented_rule(upstream: Upstream, oai: openai.OpenAI) -> None:
    long_text = " ".join(["budget"] * 20_000)  # ~120 KB: counted off the event loop
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": long_text}]

    completion = oai.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]

    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_messages(messages) == upstream.only().input_tokens


def test_openai_429_carries_retry_after_and_the_rate_limit_error_shape(upstream: Upstream, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=HI, extra_headers=h(fail=429, retry_after=7))

    record = upstream.only()
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "7"
    assert error.response.headers["x-upstream-request-id"] == record.request_id
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert (record.status, record.failure, record.usage_sent, record.output_tokens) == (429, "429", False, 0)


def test_openai_rejects_stream_options_without_stream_like_the_real_api(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=HI, stream_options={"include_usage": True})

    assert caught.value.param == "stream_options"


def test_openai_rejects_max_tokens_on_reasoning_models_like_the_real_api(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="o3-mini", messages=HI, max_tokens=10)

    assert caught.value.code == "unsupported_parameter"


def test_openai_omit_usage_sends_no_usage_streamed_or_not(upstream: Upstream, oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="gpt-4o", messages=HI, extra_headers=h(omit_usage="true"))
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=h(omit_usage="true"),
        )
    )

    records = upstream.ledger.wait_finished(2)
    assert whole.usage is None
    assert all(c.usage is None and c.choices for c in chunks)
    assert [r.usage_sent for r in records] == [False, False]
    assert [r.output_tokens for r in records] == [8, 8]


def test_a_reset_before_headers_is_a_connection_error_and_recorded_as_incomplete(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=HI, extra_headers=h(fail="reset-before-headers"))

    record = upstream.only()
    assert (record.status, record.completed, record.usage_sent) == (0, False, False)


def test_a_reset_mid_stream_cuts_the_answer_before_the_usage(upstream: Upstream, oai: openai.OpenAI) -> None:
    chunks: list[Any] = []
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=h(fail="reset-mid-stream", output_tokens=10),
    )
    with pytest.raises(openai.APIConnectionError):
        drain(stream, chunks)

    record = upstream.only()
    assert "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices) == "".join(answer_words(5))
    assert (record.completed, record.usage_sent, record.emitted_output_tokens, record.output_tokens) == (
        False,
        False,
        5,
        10,
    )


def test_an_in_stream_error_raises_in_the_openai_sdk_after_partial_content(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    chunks: list[Any] = []
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=HI, stream=True, extra_headers=h(fail="in-stream-error")
    )
    with pytest.raises(openai.APIError, match="server had an error"):
        drain(stream, chunks)

    record = upstream.only()
    assert len(chunks) == 5  # the role chunk and half of the 8 words
    assert (record.completed, record.usage_sent, record.emitted_output_tokens) == (True, False, 4)


def test_a_client_that_walks_away_mid_stream_is_recorded_as_not_completed(
    upstream: Upstream, oai: openai.OpenAI
) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o", messages=HI, stream=True, extra_headers=h(output_tokens=50, chunk_delay_ms=20)
    )
    next(iter(stream))
    stream.close()

    record = upstream.only()
    assert record.finished
    assert not record.completed
    assert not record.usage_sent
    assert record.emitted_output_tokens < 50


# ------------------------------------------------------------------------------------------------
# OpenAI Responses, Embeddings, models


def test_openai_responses_incomplete_when_reasoning_eats_the_cap(upstream: Upstream, oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model="o3-mini", input="hi", max_output_tokens=20, extra_headers=h(reasoning_tokens=30)
    )

    record = upstream.only()
    assert response.id == record.request_id
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == ""
    assert [item.type for item in response.output] == ["reasoning"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (HI_PROMPT, 20)
    assert response.usage.output_tokens_details.reasoning_tokens == 20
    assert normalized(record) == (HI_PROMPT, 0, 0, 20, 20)
    assert record.truncated


def test_openai_responses_stream_helper_matches_the_non_streamed_call(upstream: Upstream, oai: openai.OpenAI) -> None:
    controls = h(reasoning_tokens=7, output_tokens=4, cached_tokens=2)
    whole = oai.responses.create(model="gpt-5", input="hi", extra_headers=controls)
    with oai.responses.stream(model="gpt-5", input="hi", extra_headers=controls) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    plain, streamed = upstream.ledger.wait_finished(2)
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == whole.output_text == "".join(answer_words(4))
    assert final.usage is not None
    assert whole.usage is not None
    assert final.usage.model_dump() == whole.usage.model_dump()
    assert final.usage.input_tokens_details.cached_tokens == 2
    assert normalized(plain) == normalized(streamed) == (HI_PROMPT, 2, 0, 11, 7)


def test_openai_responses_in_stream_error_arrives_as_an_error_event(upstream: Upstream, oai: openai.OpenAI) -> None:
    kinds = [
        event.type
        for event in oai.responses.create(
            model="gpt-4o", input="hi", stream=True, extra_headers=h(fail="in-stream-error")
        )
    ]

    assert kinds[-1] == "error"
    assert "response.completed" not in kinds
    assert not upstream.only().usage_sent


def test_openai_embeddings_decode_and_count_prompt_tokens_with_cl100k(upstream: Upstream, oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "tokens"], dimensions=16)

    record = upstream.only()
    assert [len(item.embedding) for item in result.data] == [16, 16]
    assert abs(sum(v * v for v in result.data[0].embedding) - 1.0) < 1e-4
    assert result.usage.prompt_tokens == result.usage.total_tokens == record.input_tokens == 3
    assert record.request_body["encoding_format"] == "base64"  # the SDK asks for base64 and decodes it
    assert record.output_tokens == 0


def test_openai_model_list_is_served(oai: openai.OpenAI) -> None:
    assert "gpt-4o-mini" in [model.id for model in oai.models.list()]


# ------------------------------------------------------------------------------------------------
# Anthropic


def test_anthropic_input_tokens_exclude_cache_reads_and_writes(upstream: Upstream, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=HI,
        extra_headers=h(cached_tokens=3, cache_creation_tokens=2, output_tokens=4),
    )

    record = upstream.only()
    assert message.id == record.request_id
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(answer_words(4))
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (HI_PROMPT - 5, 3)
    assert message.usage.cache_creation_input_tokens == 2
    assert anthropic_usage(message.usage) == normalized(record) == (HI_PROMPT, 3, 2, 4, 0)


def test_anthropic_stream_of_a_thinking_call_matches_the_non_streamed_call(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    kwargs: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 4000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": HI,
        "extra_headers": h(reasoning_tokens=3000, output_tokens=6, chunk_tokens=64, cached_tokens=1),
    }
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        raw_kinds = [event.type for event in stream]
        final = stream.get_final_message()

    plain, streamed = upstream.ledger.wait_finished(2)
    for message in (whole, final):
        thinking, text = message.content
        assert thinking.type == "thinking"
        assert thinking.signature
        assert text.type == "text"
        assert text.text == "".join(answer_words(6))
        assert message.stop_reason == "end_turn"  # thinking cut to its budget is not a truncation
        assert anthropic_usage(message.usage) == (HI_PROMPT, 1, 0, 1030, 1024)
    assert final.content[0].thinking == whole.content[0].thinking == "".join(thinking_words(1024))
    assert "signature" in raw_kinds
    assert raw_kinds[-1] == "message_stop"
    assert normalized(plain) == normalized(streamed) == (HI_PROMPT, 1, 0, 1030, 1024)
    assert streamed.usage_sent
    assert streamed.completed


def test_anthropic_raw_stream_pings_and_repeats_cumulative_usage_in_message_delta(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    events = list(
        claude.messages.create(
            model=CLAUDE, max_tokens=100, messages=HI, stream=True, extra_headers=h(output_tokens=3, cached_tokens=2)
        )
    )

    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-2:] == ["message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert start.message.usage.output_tokens == 1  # a placeholder, as the live API sends
    assert delta.type == "message_delta"
    assert delta.usage.output_tokens == 3
    assert delta.usage.input_tokens == HI_PROMPT - 2
    assert delta.usage.cache_read_input_tokens == 2
    assert upstream.only().usage_sent


def test_anthropic_omitted_thinking_display_streams_only_the_signature(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    events = list(
        claude.messages.create(
            model=CLAUDE,
            max_tokens=3000,
            thinking={"type": "enabled", "budget_tokens": 2000, "display": "omitted"},
            messages=HI,
            stream=True,
            extra_headers=h(reasoning_tokens=40, output_tokens=2),
        )
    )

    deltas = [event.delta.type for event in events if event.type == "content_block_delta"]
    assert deltas == ["signature_delta", "text_delta", "text_delta"]
    assert upstream.only().reasoning_tokens == 40


def test_anthropic_adaptive_thinking_can_eat_the_whole_cap(upstream: Upstream, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=200,
        thinking={"type": "adaptive"},
        messages=HI,
        extra_headers=h(reasoning_tokens=500),
    )

    record = upstream.only()
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["thinking"]
    assert anthropic_usage(message.usage) == normalized(record) == (HI_PROMPT, 0, 0, 200, 200)
    assert record.truncated
    assert record.finish_reason == "max_tokens"


def test_anthropic_rejects_a_thinking_budget_not_below_max_tokens(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=CLAUDE, max_tokens=1024, thinking={"type": "enabled", "budget_tokens": 1024}, messages=HI
        )

    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_anthropic_429_has_retry_after_and_the_error_envelope(upstream: Upstream, claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI, extra_headers=h(fail=429, retry_after=3))

    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["request_id"].startswith("req_")
    assert caught.value.response.headers["retry-after"] == "3"
    assert upstream.only().status == 429


def test_anthropic_529_is_an_overloaded_error(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=HI, extra_headers=h(fail=529))


def test_anthropic_in_stream_error_raises_a_status_error_with_the_overload_body(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        list(
            claude.messages.create(
                model=CLAUDE, max_tokens=100, messages=HI, stream=True, extra_headers=h(fail="in-stream-error")
            )
        )

    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert not upstream.only().usage_sent


def test_anthropic_omit_usage_reproduces_the_stream_helper_crash_on_missing_usage(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    events = list(
        claude.messages.create(
            model=CLAUDE, max_tokens=100, messages=HI, stream=True, extra_headers=h(omit_usage="true")
        )
    )
    with (
        pytest.raises(AttributeError),
        claude.messages.stream(model=CLAUDE, max_tokens=100, messages=HI, extra_headers=h(omit_usage="true")) as s,
    ):
        s.get_final_message()

    assert events[0].type == "message_start"
    assert events[0].message.usage is None
    assert [r.usage_sent for r in upstream.ledger.wait_finished(2)] == [False, False]


def test_anthropic_count_tokens_counts_the_prompt_and_bills_nothing(
    upstream: Upstream, claude: anthropic.Anthropic
) -> None:
    counted = claude.messages.count_tokens(model=CLAUDE, messages=HI, system="Be brief.")

    record = upstream.only()
    assert counted.input_tokens == HI_PROMPT + 3 + 1 + count_text("Be brief.")
    assert (record.endpoint, record.input_tokens, record.output_tokens) == ("/v1/messages/count_tokens", 0, 0)


async def test_anthropic_async_client_works_against_serve_on_the_test_loop() -> None:
    app = create_app()
    async with serve(app=app) as url:
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        async with client.messages.stream(
            model=CLAUDE, max_tokens=50, messages=HI, extra_headers=h(output_tokens=5)
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        record = (await app[LEDGER].wait_finished_async(1))[0]

    assert text == "".join(answer_words(5))
    assert anthropic_usage(final.usage) == normalized(record) == (HI_PROMPT, 0, 0, 5, 0)


# ------------------------------------------------------------------------------------------------
# Gemini


def test_gemini_usage_counts_thoughts_apart_and_prompt_including_cache(
    upstream: Upstream, gemini: genai.Client
) -> None:
    response = gemini.models.generate_content(
        model=GEMINI,
        contents="hi",
        config=genai_types.GenerateContentConfig(
            max_output_tokens=100,
            thinking_config=genai_types.ThinkingConfig(thinking_budget=10, include_thoughts=True),
            http_options=genai_types.HttpOptions(headers=h(reasoning_tokens=15, output_tokens=4, cached_tokens=5)),
        ),
    )

    record = upstream.only()
    meta = response.usage_metadata
    assert response.response_id == record.request_id
    assert record.endpoint == f"/v1/models/{GEMINI}:generateContent"
    assert record.model == GEMINI
    assert response.text == "".join(answer_words(4))
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert meta is not None
    assert (meta.prompt_token_count, meta.cached_content_token_count) == (HI_PROMPT, 5)
    assert (meta.candidates_token_count, meta.thoughts_token_count, meta.total_token_count) == (4, 10, 22)
    assert gemini_usage(meta) == normalized(record) == (HI_PROMPT, 5, 0, 14, 10)
    assert record.request_headers["x-goog-api-key"] == "g-test"


def test_gemini_stream_snapshots_usage_on_every_chunk_and_ends_like_the_whole_call(
    upstream: Upstream, gemini: genai.Client
) -> None:
    config = gemini_config(reasoning_tokens=6, output_tokens=6, chunk_tokens=2)
    whole = gemini.models.generate_content(model=GEMINI, contents="hi", config=config)
    chunks = list(gemini.models.generate_content_stream(model=GEMINI, contents="hi", config=config))

    plain, streamed = upstream.ledger.wait_finished(2)
    assert all(c.usage_metadata is not None for c in chunks)
    assert [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata] == [2, 4, 6]
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert "".join(c.text or "" for c in chunks) == whole.text
    assert gemini_usage(chunks[-1].usage_metadata) == gemini_usage(whole.usage_metadata)
    assert normalized(plain) == normalized(streamed) == (HI_PROMPT, 0, 0, 12, 6)


def test_gemini_thinking_only_truncation_has_no_candidate_tokens_and_no_text(
    upstream: Upstream, gemini: genai.Client
) -> None:
    response = gemini.models.generate_content(
        model=GEMINI,
        contents="hi",
        config=genai_types.GenerateContentConfig(
            max_output_tokens=32, http_options=genai_types.HttpOptions(headers=h(reasoning_tokens=100))
        ),
    )

    record = upstream.only()
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert response.text is None
    assert response.usage_metadata is not None
    assert response.usage_metadata.candidates_token_count is None
    assert gemini_usage(response.usage_metadata) == normalized(record) == (HI_PROMPT, 0, 0, 32, 32)


async def test_gemini_async_stream_reaches_the_same_final_usage(upstream: Upstream, gemini: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await gemini.aio.models.generate_content_stream(
            model=GEMINI, contents="hi", config=gemini_config(output_tokens=3)
        )
    ]

    record = (await upstream.ledger.wait_finished_async(1))[0]
    assert "".join(c.text or "" for c in chunks) == "".join(answer_words(3))
    assert gemini_usage(chunks[-1].usage_metadata) == normalized(record) == (HI_PROMPT, 0, 0, 3, 0)


def test_gemini_429_puts_the_retry_delay_in_the_body(upstream: Upstream, gemini: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        gemini.models.generate_content(model=GEMINI, contents="hi", config=gemini_config(fail=429, retry_after=2.5))

    assert caught.value.code == 429
    assert caught.value.status == "RESOURCE_EXHAUSTED"
    details = caught.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"} in details
    assert upstream.only().status == 429


def test_gemini_in_stream_error_raises_after_partial_chunks(upstream: Upstream, gemini: genai.Client) -> None:
    chunks: list[Any] = []
    stream = gemini.models.generate_content_stream(
        model=GEMINI, contents="hi", config=gemini_config(fail="in-stream-error")
    )
    with pytest.raises(genai_errors.ServerError):
        drain(stream, chunks)

    assert [chunk.text for chunk in chunks] == answer_words(4)
    assert not upstream.only().usage_sent


def test_gemini_omit_usage_sends_no_usage_metadata(upstream: Upstream, gemini: genai.Client) -> None:
    response = gemini.models.generate_content(model=GEMINI, contents="hi", config=gemini_config(omit_usage="true"))

    assert response.usage_metadata is None
    assert response.text
    assert not upstream.only().usage_sent


async def test_gemini_v1beta_sse_uses_crlf_and_the_array_stream_without_alt_is_one_json_array(
    upstream: Upstream,
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    base = f"{upstream.url}/v1beta/models/{GEMINI}:streamGenerateContent"
    async with aiohttp.ClientSession(headers=h(output_tokens=2)) as session:
        async with session.post(f"{base}?alt=sse", json=body) as response:
            sse_text = await response.text()
        async with session.post(base, json=body) as response:
            array = json.loads(await response.text())

    events = [e for e in sse_text.split("\r\n\r\n") if e]
    assert len(events) == 2
    assert all(e.startswith("data: ") for e in events)
    assert [len(item["candidates"]) for item in array] == [1, 1]
    assert array[-1]["usageMetadata"]["totalTokenCount"] == HI_PROMPT + 2


# ------------------------------------------------------------------------------------------------
# Cross-cutting: cadence, ledger over HTTP, bad controls, the CLI


async def test_streamed_chunks_are_written_as_produced_at_the_requested_cadence(upstream: Upstream) -> None:
    arrivals: list[float] = []
    body = {"model": "gpt-4o", "stream": True, "messages": HI}
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        async with session.post(
            f"{upstream.url}/v1/chat/completions", json=body, headers=h(output_tokens=4, chunk_delay_ms=60)
        ) as response:
            async for _ in response.content.iter_any():
                arrivals.append(time.monotonic() - start)

    # The role chunk goes out at once; each of the 4 tokens follows one 60 ms delay later.
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] >= 0.2


async def test_the_ledger_is_readable_and_clearable_over_http(upstream: Upstream) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": CLAUDE, "max_tokens": 5, "messages": HI}
        async with session.post(f"{upstream.url}/v1/messages", json=body) as response:
            assert response.status == 200
        async with session.get(f"{upstream.url}/_upstream/served") as response:
            served = await response.json()
        async with session.delete(f"{upstream.url}/_upstream/served") as response:
            assert response.status == 204
        async with session.get(f"{upstream.url}/_upstream/served") as response:
            after = await response.json()

    assert [(r["dialect"], r["output_tokens"], r["truncated"]) for r in served] == [
        ("anthropic", 5, True)
    ]  # 8 wanted, 5 allowed
    assert served[0]["request_body"]["max_tokens"] == 5
    assert after == []


def test_a_malformed_control_header_is_a_400_in_the_dialect_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="x-upstream-output-tokens"):
        claude.messages.create(model=CLAUDE, max_tokens=5, messages=HI, extra_headers={"x-upstream-output-tokens": "x"})


@pytest.fixture
def upstream_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    env = {**os.environ, "TOKENBUDGET_TESTUPSTREAM_DEFAULT_OUTPUT_TOKENS": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenbudget_testing.upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, line
        yield process, line.split()[-1]
    finally:
        process.terminate()
        process.wait(10)


def test_the_cli_serves_as_a_separate_process_and_exposes_its_ledger(
    upstream_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = upstream_process
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)

    completion = client.chat.completions.create(model="gpt-4o", messages=HI)
    with urllib.request.urlopen(f"{url}/_upstream/served", timeout=5) as response:
        served = json.load(response)

    assert completion.choices[0].message.content == "".join(answer_words(3))  # default taken from the env
    assert [(r["request_id"], r["completed"]) for r in served] == [(completion.id, True)]
    process.terminate()
    assert process.wait(10) == 0


def _b64_floats(text: str) -> int:
    return len(base64.b64decode(text)) // 4


async def test_raw_embeddings_in_base64_hold_float32_values(upstream: Upstream) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{upstream.url}/v1/embeddings",
            json={"model": "text-embedding-3-large", "input": "x", "encoding_format": "base64"},
        ) as response,
    ):
        payload = await response.json()

    assert _b64_floats(payload["data"][0]["embedding"]) == 3072


@pytest.fixture
async def loop_upstream() -> AsyncIterator[Upstream]:
    app = create_app(UpstreamSettings(anthropic_json_padding=True))
    async with serve(app=app) as url:
        yield Upstream(url, app[LEDGER])


async def test_padded_anthropic_json_is_still_parsed_by_the_sdk(loop_upstream: Upstream) -> None:
    client = anthropic.AsyncAnthropic(base_url=loop_upstream.url, api_key="k", max_retries=0)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{loop_upstream.url}/v1/messages",
            json={"model": CLAUDE, "max_tokens": 10, "stream": True, "messages": HI},
        ) as response,
    ):
        raw = await response.text()
    stream = await client.messages.create(model=CLAUDE, max_tokens=10, messages=HI, stream=True)
    kinds = [event.type async for event in stream]

    assert " }" in raw  # spaces before the closing brace, like the live API
    assert kinds[-1] == "message_stop"
