"""Per-Model and per-User limits through the official SDKs: each key has its own window, whatever the dialect.

The user key comes from the budget's user header, else the request's own field: OpenAI `user`, Anthropic
`metadata.user_id`, and the Gemini label the budget names in `userLabel` (labels are not read otherwise).
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, http_get, stack

MESSAGES: list[Any] = [{"role": "user", "content": "Name three prime numbers."}]


def budget(*limits: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"budgets": [{"namespace": "default", "name": "team", "spec": {"selector": {}, "limits": list(limits),
                                                                          **spec}}]}


def sdks(s: Stack) -> tuple[openai.OpenAI, anthropic.Anthropic, genai.Client]:
    return (openai.OpenAI(base_url=s.openai_url, api_key="k", max_retries=0),
            anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0),
            genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=s.gemini_url)))


def windows(s: Stack) -> dict[tuple[str, str | None], str]:
    (b,) = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    return {(w["name"], w["key"]): w["used"] for w in b["windows"]}


def test_a_per_model_limit_refuses_each_model_at_its_own_count_in_every_sdk() -> None:
    with stack(**budget({"name": "per-model", "period": "Day", "requests": 2, "per": "Model"},
                        {"name": "per-model-tokens", "period": "Day", "tokens": 10_000_000, "per": "Model"})) as s:
        oa, an, gm = sdks(s)
        calls = {
            "gpt-4o-mini": lambda: oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES),
            "gpt-4o": lambda: list(oa.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)),
            "claude-haiku-4-5": lambda: an.messages.create(model="claude-haiku-4-5", max_tokens=20,
                                                           messages=MESSAGES),
            "gemini-2.5-flash": lambda: gm.models.generate_content(model="gemini-2.5-flash", contents="hi"),
        }
        for call in calls.values():  # two of each model, interleaved: each counts only against its own key
            call()
        for call in calls.values():
            call()
        with pytest.raises(openai.RateLimitError, match="per-model"):
            calls["gpt-4o-mini"]()
        with pytest.raises(openai.RateLimitError, match="per-model"):
            calls["gpt-4o"]()
        with pytest.raises(anthropic.RateLimitError, match="per-model"):
            calls["claude-haiku-4-5"]()
        with pytest.raises(genai.errors.ClientError) as ge:
            calls["gemini-2.5-flash"]()
        assert ge.value.code == 429
        assert "per-model" in (ge.value.message or "")
        gm.models.generate_content(model="gemini-2.5-pro", contents="hi")  # another model: its own room
        served = s.ledger.wait_finished(9)
        assert len(served) == 9, "refused calls never reach the provider"
        used = windows(s)
        for model in calls:
            assert used["per-model", model] == "2"
            billed = sum(r.total_tokens for r in served if r.model == model)
            assert used["per-model-tokens", model] == str(billed), "the provider's figures, per model"
        assert used["per-model", "gemini-2.5-pro"] == "1"


@pytest.mark.parametrize("label", ["user", None])
def test_anthropic_metadata_and_the_budgets_gemini_label_are_user_keys(label: str | None) -> None:
    spec = {"userLabel": label} if label else {}
    with stack(**budget({"name": "per-user", "period": "Day", "requests": 1, "per": "User"}, **spec)) as s:
        _, an, gm = sdks(s)

        def claude(user: str) -> None:
            an.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=MESSAGES,
                               metadata={"user_id": user})

        def gemini(user: str) -> None:
            gm.models.generate_content(model="gemini-2.5-flash", contents="hi",
                                       config=gtypes.GenerateContentConfig(labels={"user": user, "team": "x"}))

        claude("ann")
        claude("bob")  # another user: another window
        with pytest.raises(anthropic.RateLimitError, match="per-user"):
            claude("ann")
        gemini("carl")
        if label:
            gemini("dora")
            with pytest.raises(genai.errors.ClientError) as ge:
                gemini("carl")
            assert ge.value.code == 429
            assert {r.user for r in s.records(5)} == {"ann", "bob", "carl", "dora"}
        else:  # labels are not user keys unless the budget says so: both calls are the same (no) user
            with pytest.raises(genai.errors.ClientError):
                gemini("dora")
            assert s.state.usage_log.all()[-2].user is None
        served = s.ledger.records
        assert [r.request_body["labels"]["user"] for r in served if r.dialect == "gemini"] == (
            ["carl", "dora"] if label else ["carl"]), "labels reach the provider untouched"
