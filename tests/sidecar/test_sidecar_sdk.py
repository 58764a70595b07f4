"""The sidecar driven by the official OpenAI, Anthropic and Gemini SDKs, pointed at it by base URL only.

Every test compares what the sidecar metered with what the test upstream says it served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, http_get, http_post, stack

from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource
from tokenbudget_testing.upstream.ledger import ServedRecord
from tokenbudget_testing.upstream.tokens import encoding

MESSAGES: list[Any] = [{"role": "system", "content": "You are terse."},
                       {"role": "user", "content": "Name three prime numbers."}]


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


def usage_of(served: ServedRecord) -> tuple[int, int, int, int, int]:
    return (served.input_tokens, served.cached_input_tokens, served.cache_creation_input_tokens,
            served.output_tokens, served.reasoning_tokens)


def metered(rec: UsageRecord) -> tuple[int, int, int, int, int]:
    u = rec.usage
    return (u.input_tokens, u.cached_input_tokens, u.cache_creation_input_tokens, u.output_tokens,
            u.reasoning_tokens)


def one_call(s: Stack) -> tuple[UsageRecord, ServedRecord]:
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    return rec, served


def oa(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


def test_openai_chat_call_is_metered_exactly_and_priced(s: Stack) -> None:
    out = oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                        extra_headers={"x-upstream-output-tokens": "12",
                                                       "x-upstream-cached-tokens": "4"})
    rec, served = one_call(s)
    assert out.usage is not None
    assert metered(rec) == usage_of(served)
    assert rec.usage.input_tokens == out.usage.prompt_tokens
    assert rec.usage.cached_input_tokens == 4
    assert rec.source is UsageSource.PROVIDER
    assert rec.cost_usd is not None
    assert rec.cost_usd > 0
    assert rec.price_source == "catalog"


def test_openai_chat_stream_gets_usage_without_the_app_seeing_the_extra_chunk(s: Stack) -> None:
    stream = oa(s).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                           extra_headers={"x-upstream-output-tokens": "20"})
    chunks = list(stream)
    rec, served = one_call(s)
    assert all(c.choices for c in chunks), "the usage-only chunk the app did not ask for leaked through"
    assert all(c.usage is None for c in chunks)
    assert served.request_body["stream_options"] == {"include_usage": True}
    assert metered(rec) == usage_of(served)
    assert rec.usage.output_tokens == 20
    assert rec.stream


def test_openai_chat_stream_that_asked_for_usage_still_sees_it(s: Stack) -> None:
    stream = oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                           stream_options={"include_usage": True})
    chunks = list(stream)
    rec, served = one_call(s)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage is not None
    assert usage_chunks[0].usage.completion_tokens == rec.usage.output_tokens == served.output_tokens


async def test_openai_responses_streamed_and_not_give_the_same_record(s: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    headers = {"x-upstream-output-tokens": "9", "x-upstream-reasoning-tokens": "300"}
    await client.responses.create(model="o4-mini", input="Why is the sky blue?", extra_headers=headers,
                                  reasoning={"effort": "low"})
    stream = await client.responses.create(model="o4-mini", input="Why is the sky blue?", extra_headers=headers,
                                           reasoning={"effort": "low"}, stream=True)
    async for _ in stream:
        pass
    plain, streamed = s.records(2)
    assert metered(plain) == metered(streamed)
    assert plain.usage.reasoning_tokens == 300
    assert [usage_of(r) for r in s.ledger.wait_finished(2)] == [metered(plain), metered(streamed)]


def test_anthropic_messages_count_cache_reads_and_writes_as_input(s: Stack) -> None:
    client = anthropic.Anthropic(base_url=s.anthropic_url, api_key="sk-ant-test", max_retries=0)
    headers = {"x-upstream-cached-tokens": "40", "x-upstream-cache-creation-tokens": "7",
               "x-upstream-output-tokens": "15"}
    msg = client.messages.create(model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES[1:],
                                 extra_headers=headers)
    rec, served = one_call(s)
    assert metered(rec) == usage_of(served)
    assert rec.usage.input_tokens == (msg.usage.input_tokens + 40 + 7)
    assert rec.usage.cached_input_tokens == 40
    assert rec.usage.cache_creation_input_tokens == 7


def test_anthropic_stream_with_thinking_gives_the_same_record_as_without_streaming(s: Stack) -> None:
    client = anthropic.Anthropic(base_url=s.anthropic_url, api_key="sk-ant-test", max_retries=0)
    kwargs: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 4000, "messages": MESSAGES[1:],
                              "thinking": {"type": "enabled", "budget_tokens": 2048},
                              "extra_headers": {"x-upstream-reasoning-tokens": "1500"}}
    client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        stream.until_done()
    plain, streamed = s.records(2)
    assert metered(plain) == metered(streamed)
    assert [usage_of(r) for r in s.ledger.wait_finished(2)] == [metered(plain), metered(streamed)]
    assert plain.usage.output_tokens >= 1500


def gem(s: Stack) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=gtypes.HttpOptions(base_url=s.gemini_url))


def test_gemini_thoughts_count_as_output_streamed_or_not(s: Stack) -> None:
    client = gem(s)
    config = gtypes.GenerateContentConfig(
        thinking_config=gtypes.ThinkingConfig(thinking_budget=1024),
        http_options=gtypes.HttpOptions(headers={"x-upstream-reasoning-tokens": "700",
                                                 "x-upstream-output-tokens": "11"}))
    resp = client.models.generate_content(model="gemini-2.5-flash", contents="Name a prime.", config=config)
    for _ in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Name a prime.",
                                                   config=config):
        pass
    plain, streamed = s.records(2)
    assert resp.usage_metadata is not None
    assert plain.usage.output_tokens == 711 == (resp.usage_metadata.candidates_token_count or 0) + 700
    assert plain.usage.reasoning_tokens == 700
    assert metered(plain) == metered(streamed)
    assert plain.operation == "generate"
    assert plain.model == "gemini-2.5-flash"


async def test_async_clients_of_all_three_sdks_are_metered(s: Stack) -> None:
    await openai.AsyncOpenAI(base_url=s.openai_url, api_key="k", max_retries=0).embeddings.create(
        model="text-embedding-3-small", input=["a b c", "d e"])
    await anthropic.AsyncAnthropic(base_url=s.anthropic_url, api_key="k", max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES[1:])
    client = gem(s)
    await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    records = s.records(3)
    served = s.ledger.wait_finished(3)
    assert sorted(r.operation for r in records) == ["embeddings", "generate", "messages"]
    by_id = {r.request_id: r for r in served}
    assert len(by_id) == 3
    assert sorted(metered(r) for r in records) == sorted(usage_of(r) for r in served)


def test_truncation_is_flagged_for_every_dialect(s: Stack) -> None:
    h = {"x-upstream-output-tokens": "50"}
    oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=10, extra_headers=h)
    anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES[1:], extra_headers=h)
    client = gem(s)  # keep a reference: a collected genai.Client closes its HTTP client
    client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=gtypes.GenerateContentConfig(
        max_output_tokens=10, http_options=gtypes.HttpOptions(headers=h)))
    records = s.records(3)
    assert [r.truncated for r in records] == [True, True, True]
    assert [r.usage.output_tokens for r in records] == [10, 10, 10]


def test_a_server_that_reports_no_usage_is_estimated_and_flagged(s: Stack) -> None:
    oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                  extra_headers={"x-upstream-omit-usage": "true", "x-upstream-output-tokens": "6"})
    rec, served = one_call(s)
    assert rec.source is UsageSource.ESTIMATED
    assert rec.usage.output_tokens == 6  # one token per word, as the upstream writes them
    assert abs(rec.usage.input_tokens - served.input_tokens) <= 8
    assert rec.cost_usd is not None


def test_an_unknown_model_is_reported_unpriced_not_free(s: Stack) -> None:
    oa(s).chat.completions.create(model="qwen-max", messages=MESSAGES)
    rec, _ = one_call(s)
    assert rec.cost_usd is None
    assert rec.price_source is None
    metrics = http_get(f"{s.admin}/metrics")
    assert 'tokenbudget_unpriced_calls_total{model="qwen-max",provider="openai"} 1.0' in metrics


def test_upstream_rate_limit_reaches_each_sdk_in_its_own_shape(s: Stack) -> None:
    h = {"x-upstream-fail": "429", "x-upstream-retry-after": "7"}
    with pytest.raises(openai.RateLimitError) as oe:
        oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=h)
    assert oe.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.RateLimitError):
        anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES[1:], extra_headers=h)
    client = gem(s)
    with pytest.raises(genai.errors.ClientError) as ge:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                       config=gtypes.GenerateContentConfig(http_options=gtypes.HttpOptions(headers=h)))
    assert ge.value.code == 429
    records = s.records(3)
    assert {r.outcome for r in records} == {Outcome.UPSTREAM_ERROR}
    assert all(r.usage.total_tokens == 0 and r.status == 429 for r in records)


def test_a_reset_before_headers_becomes_a_502_the_sdk_understands(s: Stack) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                      extra_headers={"x-upstream-fail": "reset-before-headers"})
    assert exc.value.status_code == 502
    assert "tokenbudget: upstream openai failed" in exc.value.message
    rec, _ = one_call(s)
    assert rec.outcome is Outcome.UPSTREAM_FAILED
    assert rec.source is UsageSource.NONE


def test_a_reset_mid_stream_breaks_the_apps_stream_too_and_is_estimated(s: Stack) -> None:
    stream = oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                           extra_headers={"x-upstream-fail": "reset-mid-stream",
                                                          "x-upstream-output-tokens": "40"})
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIConnectionError):
        read_all()
    rec, served = one_call(s)
    assert rec.outcome is Outcome.UPSTREAM_FAILED
    assert rec.source is UsageSource.ESTIMATED
    # The app got every token the provider emitted before the reset, and the estimate counts exactly those.
    assert 0 < rec.usage.output_tokens == len(encoding().encode("".join(received))) == served.emitted_output_tokens


def test_model_lists_and_token_counts_pass_through_unbilled(s: Stack) -> None:
    models = oa(s).models.list()
    assert len(models.data) > 0
    count = anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0).messages.count_tokens(
        model="claude-haiku-4-5", messages=MESSAGES[1:])
    assert count.input_tokens > 0
    assert s.state.usage_log.all() == []


def test_metrics_follow_the_genai_conventions(s: Stack) -> None:
    model = "gpt-4.1-nano"  # used by no other test in this module: its series start at zero
    oa(s).chat.completions.create(model=model, messages=MESSAGES, extra_headers={"x-upstream-output-tokens": "5"})
    s.records(1)
    text = http_get(f"{s.admin}/metrics")
    assert f'gen_ai_client_token_usage_sum{{gen_ai_provider_name="openai",gen_ai_request_model="{model}",' \
           'gen_ai_token_type="output"} 5.0' in text
    assert f'tokenbudget_requests_total{{model="{model}",outcome="ok",provider="openai"}} 1.0' in text
    assert "tokenbudget_added_latency_seconds_bucket" in text


def test_admin_usage_pull_and_ack_by_cursor(s: Stack) -> None:
    for _ in range(3):
        oa(s).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    s.records(3)
    first = json.loads(http_get(f"{s.admin}/usage?after=0&limit=2"))
    assert len(first["records"]) == 2
    again = json.loads(http_get(f"{s.admin}/usage?after=0&limit=2"))
    assert again["records"] == first["records"], "a retried pull must return the same records"
    http_post(f"{s.admin}/usage/ack", {"cursor": first["cursor"]})
    rest = json.loads(http_get(f"{s.admin}/usage?after={first['cursor']}"))
    assert [r["seq"] for r in rest["records"]] == [first["cursor"] + 1]
    assert json.dumps(rest).count("Name three prime numbers") == 0, "records must never carry prompts"
