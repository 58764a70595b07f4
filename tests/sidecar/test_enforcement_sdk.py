"""TokenBudget enforcement in the running sidecar, seen through the official SDKs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, http_get, http_post, stack

from tokenbudget_api.usage import Outcome

MESSAGES: list[Any] = [{"role": "user", "content": "Name three prime numbers."}]


def budget(spec: dict[str, Any], name: str = "team") -> dict[str, Any]:
    return {"budgets": [{"namespace": "default", "name": name, "spec": {"selector": {}, **spec}}]}


def oa(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="k", max_retries=0)


@pytest.fixture
def caps() -> Iterator[Stack]:
    spec = {"request": {"maxPromptTokens": 50, "maxOutputTokens": 64, "onOversize": "Clamp"}}
    with stack(**budget(spec)) as st:
        yield st


def test_a_prompt_over_the_cap_is_refused_before_the_call_with_count_and_cap(caps: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        oa(caps).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "word " * 200}])
    # 202 tokens of text ("user" and 200 words with their trailing space), 4 + 4 framing, 3 priming
    assert "the prompt has 213 tokens" in exc.value.message
    assert "above the 50 allowed by budget default/team" in exc.value.message
    assert caps.ledger.records == []


def test_output_caps_are_clamped_in_whichever_field_each_dialect_uses(caps: Stack) -> None:
    oa(caps).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=500)
    oa(caps).chat.completions.create(model="gpt-4o", messages=MESSAGES)  # no cap at all: gets the budget's
    oa(caps).responses.create(model="gpt-4o", input="hi", max_output_tokens=900)
    anthropic.Anthropic(base_url=caps.anthropic_url, api_key="k", max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=1000, messages=MESSAGES)
    client = genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=caps.gemini_url))
    client.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                   config=gtypes.GenerateContentConfig(max_output_tokens=2000))
    bodies = [r.request_body for r in caps.ledger.wait_finished(5)]
    assert bodies[0]["max_completion_tokens"] == 64
    assert bodies[1]["max_completion_tokens"] == 64
    assert bodies[2]["max_output_tokens"] == 64
    assert bodies[3]["max_tokens"] == 64
    assert bodies[4]["generationConfig"]["maxOutputTokens"] == 64
    assert all("default/team:Clamp" in r.decisions for r in caps.records(5))


def test_an_oversized_output_cap_is_rejected_when_the_budget_says_reject() -> None:
    with stack(**budget({"request": {"maxOutputTokens": 64, "onOversize": "Reject"}})) as st:
        with pytest.raises(anthropic.BadRequestError) as exc:
            anthropic.Anthropic(base_url=st.anthropic_url, api_key="k", max_retries=0).messages.create(
                model="claude-haiku-4-5", max_tokens=1000, messages=MESSAGES)
        assert "asks for up to 1000 output tokens, above the 64" in str(exc.value)
        assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_64_concurrent_clients_never_overrun_a_budget_with_room_for_10_calls() -> None:
    # Each call holds its prompt estimate (tiktoken + framing + 10% margin: 20 here; the provider counts
    # 14) plus its 20-token cap; the limit has room for 10 such holds at once.
    prompt = 20
    limit = 10 * (prompt + 20)
    spec = {"limits": [{"name": "day", "period": "Day", "tokens": limit}]}
    with stack(**budget(spec)) as st:
        client = openai.AsyncOpenAI(base_url=st.openai_url, api_key="k", max_retries=0)

        async def one(i: int) -> str:
            try:
                await client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Name three prime numbers."}],
                    max_completion_tokens=20, stream=i % 2 == 0,
                    extra_headers={"x-upstream-output-tokens": "20", "x-upstream-chunk-delay-ms": "5"})
                return "ok"
            except openai.RateLimitError as exc:
                assert exc.response.headers.get("retry-after")
                return "refused"

        results = await asyncio.gather(*(one(i) for i in range(64)))
        records = await asyncio.to_thread(st.records, 64)
    settled = sum(r.usage.total_tokens for r in records)
    admitted = results.count("ok")
    served = [r for r in records if r.outcome is Outcome.OK]
    print(f"\nadmitted {admitted} of 64, settled {settled} tokens of a {limit}-token limit "
          f"(overrun {max(settled - limit, 0)})")
    assert settled <= limit, "reservations sized to the cap: the limit is never exceeded"
    assert admitted >= 10, "calls that used less than they held free room for later ones"
    assert len(served) == admitted
    assert results.count("refused") == 64 - admitted


def test_downgrade_rewrites_the_model_and_tells_the_app() -> None:
    spec = {"ladder": [{"at": 1, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini",
                                                                     "gemini-2.5-pro": "gemini-2.5-flash"}}],
            "limits": [{"name": "day", "period": "Day", "tokens": 2000}]}
    with stack(**budget(spec)) as st:
        oa(st).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_completion_tokens=50)  # past 1%
        raw = oa(st).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES,
                                                               max_completion_tokens=50)
        assert raw.headers["x-tokenbudget-downgraded"] == "gpt-4o->gpt-4o-mini"
        client = genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=st.gemini_url))
        client.models.generate_content(model="gemini-2.5-pro", contents="hi",
                                       config=gtypes.GenerateContentConfig(max_output_tokens=50))
        served = st.ledger.wait_finished(3)
        records = st.records(3)
    assert [r.model for r in served] == ["gpt-4o", "gpt-4o-mini", "gemini-2.5-flash"]
    assert served[2].endpoint.endswith("/models/gemini-2.5-flash:generateContent")
    assert [r.model for r in records] == ["gpt-4o", "gpt-4o-mini", "gemini-2.5-flash"]


def test_a_blocked_budget_answers_429_in_each_providers_shape_with_retry_after() -> None:
    spec = {"ladder": [{"at": 1, "action": "Block"}], "limits": [{"name": "hour", "period": "Hour", "tokens": 1000}],
            "request": {"maxOutputTokens": 50}}
    with stack(**budget(spec)) as st:
        oa(st).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as oe:
            oa(st).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert 1 <= int(oe.value.response.headers["retry-after"]) <= 3600
        assert "budget default/team is at its Block stage" in oe.value.message
        with pytest.raises(anthropic.RateLimitError) as ae:
            anthropic.Anthropic(base_url=st.anthropic_url, api_key="k", max_retries=0).messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES)
        assert ae.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        client = genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=st.gemini_url))
        with pytest.raises(genai.errors.ClientError) as ge:
            client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert ge.value.code == 429
        assert ge.value.details["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert st.ledger.wait_finished(1)[0].model == "gpt-4o"
        assert len(st.ledger.records) == 1, "refused calls never reach the provider"


def test_dry_run_blocks_nothing_but_says_what_it_would_have_done() -> None:
    spec = {"enforcement": "DryRun", "ladder": [{"at": 1, "action": "Block"}],
            "limits": [{"name": "hour", "period": "Hour", "tokens": 100}]}
    with stack(**budget(spec)) as st:
        for _ in range(4):
            raw = oa(st).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        assert "default/team:DryRun:Block" in raw.headers["x-tokenbudget-dry-run"]
        st.records(4)
        snapshot = json.loads(http_get(f"{st.admin}/budgets"))
    (b,) = snapshot["budgets"]
    assert b["enforcement"] == "DryRun"
    assert b["wouldHave"]["Block"]["count"] >= 2
    assert b["wouldHave"]["Block"]["tokens"] > 0
    assert len(st.ledger.records) == 4


def test_every_response_carries_decision_headers() -> None:
    spec = {"limits": [{"name": "day", "period": "Day", "tokens": 100000}]}
    with stack(**budget(spec)) as st:
        raw = oa(st).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES,
                                                               max_completion_tokens=30)
    assert raw.headers["x-tokenbudget-stage"] == "Normal"
    assert raw.headers["x-tokenbudget-reserved-tokens"] == str(int(raw.headers["x-tokenbudget-reserved-tokens"]))
    assert raw.headers["x-tokenbudget-remaining"].startswith("default/team/day=")
    assert int(raw.headers["x-tokenbudget-actual-tokens"]) < int(raw.headers["x-tokenbudget-reserved-tokens"])


async def test_a_concurrency_cap_queues_a_few_and_refuses_the_rest_at_once() -> None:
    spec = {"concurrency": {"maxInFlight": 2, "maxQueued": 2, "queueTimeoutSeconds": 30}}
    with stack(**budget(spec)) as st:
        client = openai.AsyncOpenAI(base_url=st.openai_url, api_key="k", max_retries=0)

        async def one() -> str:
            try:
                await client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES,
                    extra_headers={"x-upstream-output-tokens": "3", "x-upstream-chunk-delay-ms": "150"})
                return "ok"
            except openai.RateLimitError as exc:
                assert "waiting (the queue is full)" in exc.message
                return "refused"

        results = await asyncio.gather(*(one() for _ in range(8)))
    assert sorted(results) == ["ok"] * 4 + ["refused"] * 4


def test_a_policy_push_is_idempotent_and_keeps_what_was_spent() -> None:
    spec = {"limits": [{"name": "day", "period": "Day", "tokens": 10000}]}
    with stack(**budget(spec)) as st:
        oa(st).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        st.records(1)
        policy = st.state.policy.model_dump(mode="json", by_alias=True)
        same = json.loads(http_post(f"{st.admin}/policy", policy, method="PUT"))
        assert same["changed"] is False
        policy["version"] = "v2"
        policy["budgets"][0]["spec"]["limits"][0]["tokens"] = 20000
        applied = json.loads(http_post(f"{st.admin}/policy", policy, method="PUT"))
        assert applied == {"applied": "v2", "changed": True}
        (b,) = json.loads(http_get(f"{st.admin}/budgets"))["budgets"]
    (w,) = b["windows"]
    assert w["limit"] == "20000"
    assert int(w["used"]) > 0, "use survives the new policy"


def test_a_user_header_named_by_any_budget_names_the_calls_user_for_every_budget() -> None:
    """Issue 13 part 7: only the first budget's userHeader used to be read, so a second budget's per-User
    limit saw every call as "anonymous"."""
    first = {"namespace": "default", "name": "team", "spec": {"selector": {}}}
    per_user = {"namespace": "default", "name": "per-user", "spec": {
        "selector": {}, "userHeader": "x-end-user",
        "limits": [{"name": "one-each", "period": "Day", "requests": 1, "per": "User"}]}}
    with stack(budgets=[first, per_user]) as st:
        def ask(user: str) -> None:
            oa(st).chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-end-user": user})

        ask("alice")
        ask("bob")  # another user: another window
        with pytest.raises(openai.RateLimitError):
            ask("alice")
        records = st.records(3)
    assert [r.user for r in records] == ["alice", "bob", "alice"]
