"""ThinkTier in the sidecar: classification, provider parameters, measurement, statistics, end to end.

Golden request bodies live in tests/sidecar/golden/thinking/<case>.json: a hand-written request and, per tier, the
body the sidecar forwards. Regenerate the `expected` part (inputs are never touched) and review the diff:

    TOKENBUDGET_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/sidecar/test_thinking.py -k golden
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.thinking_stats import ClassStats
from tokenbudget_api.thinktier import Calibration, ThinkTierSpec, Tier
from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_api.usage import Usage, UsageRecord, UsageSource
from tokenbudget_sidecar.dialects import DIALECTS, Dialect, Reading
from tokenbudget_sidecar.thinking import UNCLASSIFIED, Inputs, LogHistogram, Thinking, measure, recommend
from tokenbudget_sidecar.thinking.classify import CompiledThinkTier, classify
from tokenbudget_sidecar.thinking.measure import Measurement
from tokenbudget_sidecar.thinking.providers import (
    ANTHROPIC_EFFORTS,
    EFFORTS,
    GEMINI_LEVELS,
    GEMINI_PRO_LEVELS,
    Family,
    anthropic_max_output,
    claude_version,
    family,
    gemini_budget_range,
)
from tokenbudget_sidecar.thinking.stats import ThinkTierStats

GOLDEN_DIR = Path(__file__).parent / "golden" / "thinking"
UPDATE = os.environ.get("TOKENBUDGET_UPDATE_GOLDEN", "") not in ("", "0", "false")
CASES = sorted(p.stem for p in GOLDEN_DIR.glob("*.json"))

TIERS = [
    {"name": "shallow", "budgetTokens": 2048},
    {"name": "standard", "budgetTokens": 8192},
    {"name": "deep", "budgetTokens": 32768},
    {"name": "max", "budgetTokens": 65536, "authorization": "Required"},
]
CLASS_OF = {"shallow": "lookup", "standard": "support", "deep": "analysis", "max": "research"}
MESSAGES: list[Any] = [{"role": "user", "content": "Is 2^61-1 prime?"}]


def think_tier(*, authorized: list[str] | None = None, min_samples: int = 100, **spec: Any) -> dict[str, Any]:
    return {
        "namespace": "team", "name": "reasoning", "generation": 1, "authorizedTiers": authorized or [],
        "spec": {
            "selector": {}, "defaultTier": "standard", "tiers": TIERS,
            "classes": [{"name": c, "tier": t, "match": {"headerValues": [c]}} for t, c in CLASS_OF.items()],
            "calibration": {"minSamples": min_samples}, **spec,
        },
    }


def policy(*, budgets: list[dict[str, Any]] | None = None, **kw: Any) -> SidecarPolicy:
    return SidecarPolicy.model_validate({"thinkTiers": [think_tier(**kw)], "budgets": budgets or []})


def rewrite_for(thinking: Thinking, dialect_name: str, path: str, body: dict[str, Any],
                headers: dict[str, str] | None = None, prompt_tokens: int = 20) -> tuple[Any, Any, dict[str, Any]]:
    """(decision, call, forwarded body) for one request through `Thinking.apply`."""
    dialect = DIALECTS[DialectName(dialect_name)]
    operation = dialect.operation("POST", path)
    assert operation is not None
    call = dialect.parse(operation, path, body, None)
    after = copy.deepcopy(body)
    decision = thinking.apply(dialect, call, after, "/up" + path, headers or {}, prompt_tokens)
    return decision, call, after


# --- golden request bodies -----------------------------------------------------------------------------------


def golden_run(data: dict[str, Any]) -> dict[str, Any]:
    thinking = Thinking(policy(authorized=["max"]))
    out: dict[str, Any] = {}
    for tier, klass in CLASS_OF.items():
        decision, call, after = rewrite_for(thinking, data["dialect"], data["path"], data["body"],
                                            {"x-tokenbudget-class": klass})
        out[tier] = {
            "body": after if after != data["body"] else "unchanged",
            "decision": None if decision is None else {
                "tier": decision.tier, "family": decision.rewrite.family.value,
                "budgetInForce": decision.rewrite.budget, "keptAppSetting": decision.rewrite.kept_app_setting,
                "skipped": decision.rewrite.skipped,
                "outputCap": call.output_cap},
        }
    return out


@pytest.mark.parametrize("case", CASES)
def test_golden_each_request_is_rewritten_per_tier_as_recorded(case: str) -> None:
    path = GOLDEN_DIR / f"{case}.json"
    data = json.loads(path.read_text())
    actual = golden_run(data)
    if UPDATE:
        data["expected"] = actual
        path.write_text(json.dumps(data, indent=2) + "\n")
        return
    assert "expected" in data, f"{case}.json has no expected output; regenerate (see the module docstring)"
    assert json.loads(json.dumps(actual)) == data["expected"]


def test_golden_cases_cover_every_provider_family() -> None:
    families = set()
    for case in CASES:
        for tier in json.loads((GOLDEN_DIR / f"{case}.json").read_text())["expected"].values():
            if tier["decision"] is not None:
                families.add(tier["decision"]["family"])
    assert families == {f.value for f in Family}


# --- no provider-invalid combination, ever ----------------------------------------------------------------

ANTHROPIC_MODELS = ["claude-3-7-sonnet-20250219", "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "claude-opus-4-1",
                    "claude-opus-4-6", "claude-opus-4-7", "claude-3-5-haiku-20241022"]
OPENAI_MODELS = ["gpt-5", "gpt-5-mini", "o3", "o4-mini", "o1", "gpt-oss-120b", "gpt-4o", "gpt-4.1", "gpt-5-chat-latest",
                 "qwq-32b", "deepseek-r1", "o1-mini"]
GEMINI_MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-3-pro-preview",
                 "gemini-3-flash-preview", "gemini-2.0-flash"]
OPENAI_EFFORTS_BY_MODEL = {"o": ("low", "medium", "high"), "gpt-5": ("minimal", "low", "medium", "high"),
                           "gpt-oss": ("low", "medium", "high")}


def _openai_app_efforts(model: str) -> tuple[str, ...]:
    if model.startswith("gpt-5"):
        return OPENAI_EFFORTS_BY_MODEL["gpt-5"]
    return OPENAI_EFFORTS_BY_MODEL["gpt-oss" if model.startswith("gpt-oss") else "o"]


@st.composite
def anthropic_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    model = draw(st.sampled_from(ANTHROPIC_MODELS))
    version = claude_version(model)
    assert version is not None
    max_tokens = draw(st.integers(1, anthropic_max_output(model)))
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": MESSAGES,
                            "stream": draw(st.booleans())}
    kinds = ["none", "disabled"] if version[1:] >= (3, 7) else ["none"]  # the app's own request is valid
    if (3, 7) <= version[1:] < (4, 7) and max_tokens > 1024:
        kinds.append("enabled")
    if version[1:] >= (4, 6):
        kinds.append("adaptive")
    kind = draw(st.sampled_from(kinds))
    if kind == "enabled":
        body["thinking"] = {"type": "enabled", "budget_tokens": draw(st.integers(1024, max_tokens - 1))}
    elif kind == "disabled":
        body["thinking"] = {"type": "disabled"}
    elif kind == "adaptive":
        body["thinking"] = {"type": "adaptive"}
        if draw(st.booleans()):
            body["output_config"] = {"effort": draw(st.sampled_from(sorted(ANTHROPIC_EFFORTS)))}
    else:  # no thinking: the app may use parameters that thinking does not allow
        if draw(st.booleans()):
            body["temperature"] = draw(st.sampled_from([0.0, 0.2, 1.0]))
        if draw(st.booleans()):
            body["tool_choice"] = draw(st.sampled_from([{"type": "auto"}, {"type": "any"}]))
    return "Anthropic", "/v1/messages", body


@st.composite
def openai_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    model = draw(st.sampled_from(OPENAI_MODELS))
    responses = draw(st.booleans())
    fam = family("openai", "responses" if responses else "chat", model)
    body: dict[str, Any] = {"model": model, "stream": draw(st.booleans())}
    if responses:
        body["input"] = "Is 2^61-1 prime?"
    else:
        body["messages"] = MESSAGES
    if draw(st.booleans()):
        key = "max_output_tokens" if responses else draw(st.sampled_from(
            ["max_completion_tokens"] if fam is Family.OPENAI_EFFORT else ["max_completion_tokens", "max_tokens"]))
        body[key] = draw(st.integers(1, 200_000))
    if fam is Family.OPENAI_EFFORT and draw(st.booleans()):
        effort = draw(st.sampled_from([*_openai_app_efforts(model), "ultra"]))  # "ultra": a value no model takes
        if responses:
            body["reasoning"] = {"effort": effort, "summary": "auto"}
        else:
            body["reasoning_effort"] = effort
    path = "/v1/responses" if responses else "/v1/chat/completions"
    return "OpenAI", path, body


@st.composite
def gemini_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    model = draw(st.sampled_from(GEMINI_MODELS))
    snake = draw(st.booleans())
    keys = ("generation_config", "thinking_config", "thinking_budget", "thinking_level") if snake else (
        "generationConfig", "thinkingConfig", "thinkingBudget", "thinkingLevel")
    config: dict[str, Any] = {}
    if draw(st.booleans()):
        config["maxOutputTokens"] = draw(st.integers(1, 65_536))
    thinking: dict[str, Any] = {}
    gemini3 = model.startswith("gemini-3")
    choice = draw(st.sampled_from(["none", "budget", "level", "both"] if gemini3 else ["none", "budget"]))
    if choice in ("budget", "both"):
        lo, hi = gemini_budget_range(model)
        options = [st.just(-1), st.integers(lo, hi)]
        if "pro" not in model:
            options.append(st.just(0))
        thinking[keys[2]] = draw(st.one_of(*options))
    if choice in ("level", "both"):
        thinking[keys[3]] = draw(st.sampled_from(GEMINI_PRO_LEVELS if "pro" in model else GEMINI_LEVELS))
    if thinking:
        config[keys[1]] = thinking
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if config:
        body[keys[0]] = config
    verb = draw(st.sampled_from(["generateContent", "streamGenerateContent"]))
    return "Gemini", f"/v1beta/models/{model}:{verb}", body


def provider_errors(dialect_name: str, path: str, model: str, body: dict[str, Any], budget: int,
                    answer_room: int, ceiling: int | None) -> list[str]:
    """Every rule of docs/wire-formats.md §3.1, §4.1, §6.2, §7.2 and §11.7 that the forwarded body breaks."""
    errors = []
    if dialect_name == "Anthropic":
        thinking = body.get("thinking") or {}
        version = claude_version(model)
        max_tokens = body["max_tokens"]
        if max_tokens > anthropic_max_output(model):
            errors.append("max_tokens above the model's maximum")
        if thinking.get("type") in ("enabled", "adaptive"):
            if version is None or version[1:] < (3, 7):
                errors.append("thinking on a model that cannot think")
            if body.get("temperature") not in (None, 1, 1.0) or body.get("top_k") is not None:
                errors.append("thinking with temperature/top_k")
            if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
                errors.append("thinking with forced tool use")
        if thinking.get("type") == "enabled":
            b = thinking["budget_tokens"]
            if not 1024 <= b < max_tokens:
                errors.append(f"budget_tokens {b} outside [1024, max_tokens={max_tokens})")
            if version is not None and version[1:] >= (4, 7):
                errors.append("thinking.type enabled on Claude 4.7+")
        if thinking.get("type") == "adaptive" and version is not None and version[1:] < (4, 6):
            errors.append("adaptive thinking before Claude 4.6")
        effort = (body.get("output_config") or {}).get("effort")
        if effort is not None and effort not in ANTHROPIC_EFFORTS:
            errors.append(f"output_config.effort {effort!r}")
    elif dialect_name == "OpenAI":
        responses = path.endswith("/responses")
        fam = family("openai", "responses" if responses else "chat", model)
        effort = (body.get("reasoning") or {}).get("effort") if responses else body.get("reasoning_effort")
        if effort is not None:
            if fam is not Family.OPENAI_EFFORT:
                errors.append("reasoning effort on a model that rejects it")
            elif effort not in _openai_app_efforts(model):
                errors.append(f"effort {effort!r} not accepted by {model}")
        if "max_tokens" in body and "max_completion_tokens" in body:
            errors.append("both max_tokens and max_completion_tokens")
        if fam is Family.OUTPUT_CAP:
            cap = body.get("max_output_tokens", body.get("max_completion_tokens", body.get("max_tokens")))
            if cap is None or cap > budget + answer_room:
                errors.append(f"self-hosted cap {cap} above budget + answer room")
    else:
        config = body.get("generationConfig") or body.get("generation_config") or {}
        thinking = config.get("thinkingConfig") or config.get("thinking_config") or {}
        has_budget = "thinkingBudget" in thinking or "thinking_budget" in thinking
        level = thinking.get("thinkingLevel", thinking.get("thinking_level"))
        if has_budget and level is not None:
            errors.append("both thinkingBudget and thinkingLevel")
        if level is not None:
            if not model.startswith("gemini-3"):
                errors.append("thinkingLevel before Gemini 3")
            if level not in (GEMINI_PRO_LEVELS if "pro" in model else GEMINI_LEVELS):
                errors.append(f"thinkingLevel {level!r} not accepted by {model}")
        if has_budget and model.startswith("gemini-2.5"):
            value = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
            assert isinstance(value, int)
            lo, hi = gemini_budget_range(model)
            if not (value == -1 or (value == 0 and "pro" not in model) or lo <= value <= hi):
                errors.append(f"thinkingBudget {value} outside {model}'s range")
    return errors


def admission_clamp(dialect: Dialect, call: Any, body: dict[str, Any], ceiling: int | None) -> None:
    """What admission does next with an enforced request cap (Clamp, or a call without a cap)."""
    if ceiling is not None and (call.output_cap is None or call.output_cap > ceiling):
        dialect.set_output_cap(call, body, ceiling)


PROPERTY_THINKING = Thinking(policy(authorized=["max"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=st.one_of(anthropic_requests(), openai_requests(), gemini_requests()),
       budget=st.integers(1024, 200_000), klass=st.sampled_from([*CLASS_OF.values(), None]),
       ceiling=st.one_of(st.none(), st.integers(1, 100_000)))
def test_no_tier_and_app_setting_ever_produces_a_request_the_provider_rejects(
        request: tuple[str, str, dict[str, Any]], budget: int, klass: str | None, ceiling: int | None) -> None:
    dialect_name, path, body = request
    thinking = PROPERTY_THINKING
    thinking.ceiling = ceiling  # an enforced TokenBudget's request.maxOutputTokens
    if klass is not None:  # any budget the API allows, on any class
        tt = thinking.thinktiers[0]
        tier = tt.tiers[next(t for t, c in CLASS_OF.items() if c == klass)]
        tt.tiers[tier.name] = tier.model_copy(update={"budget_tokens": budget})
    decision, call, after = rewrite_for(thinking, dialect_name, path, body,
                                        {"x-tokenbudget-class": klass} if klass else {})
    if decision is None:
        assert after == body, "a call ThinkTier does not apply to is forwarded untouched"
    dialect = DIALECTS[DialectName(dialect_name)]
    admission_clamp(dialect, call, after, ceiling)
    model = call.model
    tier_budget = decision.budget if decision is not None else budget
    assert provider_errors(dialect_name, path, model, after, tier_budget, thinking.answer_room, ceiling) == []
    if decision is None:
        return
    for field_name, value in decision.rewritten.items():  # every effort we write is one every model accepts
        if field_name.endswith(("effort", "reasoning_effort")):
            assert value in ("low", "medium", "high")
    if decision.rewrite.kept_app_setting and decision.rewrite.family is not Family.OUTPUT_CAP:
        assert decision.rewrite.budget <= decision.budget


def test_the_effort_enum_has_the_order_the_lowering_rule_relies_on() -> None:
    assert EFFORTS.index("minimal") < EFFORTS.index("low") < EFFORTS.index("medium") < EFFORTS.index("high")
    assert EFFORTS.index("high") < EFFORTS.index("xhigh") < EFFORTS.index("max")


def test_effort_thresholds_come_from_the_spec() -> None:
    thinking = Thinking(policy(openAIEffort={"lowUpTo": 1024, "mediumUpTo": 2048}))
    decision, _, after = rewrite_for(thinking, "OpenAI", "/v1/chat/completions", {"model": "o3", "messages": []},
                                     {"x-tokenbudget-class": "lookup"})
    assert after["reasoning_effort"] == "medium"  # 2048 is medium with these thresholds, low by default
    assert decision is not None
    assert decision.rewrite.budget == 2048


# --- trusted inputs only ---------------------------------------------------------------------------------


def test_prompt_text_cannot_raise_a_tier_but_the_class_header_can() -> None:
    thinking = Thinking(policy(authorized=["max"]))
    pleading = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "metadata": {"user_id": "research"},
                "system": "x-tokenbudget-class: research", "messages": [
                    {"role": "user", "content": "Think harder, use the max budget. x-tokenbudget-class: research"}]}
    decision, _, after = rewrite_for(thinking, "Anthropic", "/v1/messages", pleading)
    assert decision is not None
    assert (decision.klass, decision.tier) == (UNCLASSIFIED, "standard")
    assert after["thinking"]["budget_tokens"] == 8192
    decision, _, after = rewrite_for(thinking, "Anthropic", "/v1/messages", pleading,
                                     {"x-tokenbudget-class": "research"})
    assert decision is not None
    assert (decision.klass, decision.tier) == ("research", "max")
    assert after["thinking"]["budget_tokens"] == 63_000  # 64000 (Sonnet 4.5's max) - the app's 1000 answer tokens


def test_classification_cannot_see_the_prompt_at_all() -> None:
    assert {f.name for f in dataclasses.fields(Inputs)} == {"header", "path", "model", "prompt_tokens"}


def test_classes_match_on_path_model_and_prompt_size_in_order() -> None:
    spec = ThinkTierSpec.model_validate({
        "selector": {}, "defaultTier": "standard", "tiers": TIERS, "classHeader": "x-query-class",
        "classes": [
            {"name": "batch", "tier": "shallow", "match": {"pathPrefix": "/batch/"}},
            {"name": "long-context", "tier": "deep", "match": {"minPromptTokens": 50_000, "models": ["claude-*"]}},
            {"name": "tagged", "tier": "deep", "match": {"headerValues": ["hard"], "maxPromptTokens": 1000}},
        ]})
    from tokenbudget_api.policy import ThinkTierPolicy
    tts = [CompiledThinkTier(ThinkTierPolicy(name="t", spec=spec))]

    def klass(path: str = "/anthropic/v1/messages", model: str = "claude-opus-4-1", prompt: int = 10,
              header: dict[str, str] | None = None) -> str:
        found = classify(tts, Inputs(header or {}, path, model, prompt))
        assert found is not None
        return found.klass

    assert klass(path="/batch/v1/messages") == "batch"
    assert klass(prompt=60_000) == "long-context"
    assert klass(prompt=60_000, model="gemini-2.5-pro") == UNCLASSIFIED
    assert klass(header={"x-query-class": "hard"}) == "tagged"
    assert klass(header={"x-query-class": "hard"}, prompt=5000) == UNCLASSIFIED  # every field must match
    assert klass(header={"x-tokenbudget-class": "hard"}) == UNCLASSIFIED  # only spec.classHeader counts


def test_a_required_tier_is_refused_without_authorization_and_granted_with_it(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenbudget_sidecar.thinking")
    body = {"model": "claude-opus-4-6", "max_tokens": 1000, "messages": MESSAGES}
    research = {"x-tokenbudget-class": "research"}
    refused = Thinking(policy())
    decision, _, after = rewrite_for(refused, "Anthropic", "/v1/messages", body, research)
    assert decision is not None
    assert (decision.klass, decision.tier, decision.denied) == ("research", "standard", "max")
    assert after["thinking"]["budget_tokens"] == 8192
    assert "not authorized for" in caplog.text
    granted = Thinking(policy(authorized=["max"]))
    for _ in range(2):
        decision, _, after = rewrite_for(granted, "Anthropic", "/v1/messages", body, research)
    assert decision is not None
    assert decision.authorized
    assert decision.tier == "max"
    assert after["thinking"] == {"type": "enabled", "budget_tokens": 65536}
    assert after["max_tokens"] == 66536
    assert "uses authorized tier max" in caplog.text
    by_name = {c["name"]: c for c in refused.report().dump()["thinkTiers"][0]["classes"]}  # type: ignore[index]
    assert (by_name["research"]["tier"], by_name["research"]["authorizationDenied"]) == ("standard", 1)
    by_name = {c["name"]: c for c in granted.report().dump()["thinkTiers"][0]["classes"]}  # type: ignore[index]
    assert (by_name["research"]["tier"], by_name["research"]["authorizedUses"]) == ("max", 2)


# --- measurement -------------------------------------------------------------------------------------------


def record(model: str, usage: Usage, *, truncated: bool = False, source: UsageSource = UsageSource.PROVIDER,
           dialect: str = "anthropic") -> UsageRecord:
    import datetime as dt
    return UsageRecord(request_id="r", time=dt.datetime.now(dt.UTC), upstream="u", dialect=dialect,
                       operation="messages", model=model, usage=usage, source=source, truncated=truncated)


def test_anthropic_thinking_without_a_breakdown_is_output_minus_answer() -> None:
    # Claude 4 shows a short summary of its thinking but bills all of it: the summary would undercount.
    reading = Reading(answer_text=["four words of answer"], thinking_text=["a short summary"])
    m = measure(record("claude-sonnet-4-5", Usage(input_tokens=10, output_tokens=1204)), reading,
                thinking_on=True, exact_budget=2048, breakdown_optional=True)
    assert (m.thinking_tokens, m.answer_tokens, m.estimated) == (1200, 4, True)


def test_a_reported_breakdown_is_believed_and_zero_means_zero() -> None:
    reading = Reading(answer_text=["four words of answer"])
    m = measure(record("gpt-5", Usage(output_tokens=30, reasoning_tokens=0), dialect="openai"), reading,
                thinking_on=True, exact_budget=None, breakdown_optional=False)
    assert (m.thinking_tokens, m.estimated) == (0, False)
    m = measure(record("gemini-2.5-flash", Usage(output_tokens=730, reasoning_tokens=700)), reading,
                thinking_on=True, exact_budget=2048, breakdown_optional=False)
    assert (m.thinking_tokens, m.answer_tokens, m.budget_bound) == (700, 30, False)


def test_a_length_stop_with_an_empty_answer_is_a_thinking_only_truncation() -> None:
    cut = record("gpt-5", Usage(output_tokens=200, reasoning_tokens=200), truncated=True, dialect="openai")
    m = measure(cut, Reading(), thinking_on=True, exact_budget=None, breakdown_optional=False)
    assert m.truncated
    assert m.thinking_only
    long_answer = record("gpt-5", Usage(output_tokens=200, reasoning_tokens=50), truncated=True, dialect="openai")
    m = measure(long_answer, Reading(), thinking_on=True, exact_budget=None, breakdown_optional=False)
    assert m.truncated
    assert not m.thinking_only


def test_self_hosted_inline_think_tags_are_thinking_not_answer() -> None:
    reading = Reading(answer_text=["<think>one two three four five six seven eight nine ten", "</think>Yes."])
    m = measure(record("qwq-32b", Usage(), source=UsageSource.ESTIMATED, dialect="openai"), reading,
                thinking_on=True, exact_budget=None, breakdown_optional=True)
    assert m.estimated
    assert m.thinking_tokens == 10
    assert m.answer_tokens == 2
    cut = Reading(answer_text=["<think>still thinking when the cap hit"])
    m = measure(record("qwq-32b", Usage(), truncated=True, source=UsageSource.ESTIMATED), cut, thinking_on=True,
                exact_budget=None, breakdown_optional=True)
    assert m.thinking_only


# --- statistics ------------------------------------------------------------------------------------------


def nearest_rank(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_histogram_quantiles_are_within_one_percent_of_the_exact_ones(seed: int) -> None:
    rnd = random.Random(seed)
    values = [int(rnd.lognormvariate(8, 1.2)) + 100 for _ in range(5000)] + [0] * 200
    hist = LogHistogram()
    for v in values:
        hist.add(v)
    for q in (0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0):
        exact, approx = nearest_rank(values, q), hist.quantile(q)
        assert approx is not None
        assert abs(approx - exact) <= 0.01 * exact + 0.5, (q, exact, approx)
    assert len(hist.buckets) < 1000


def test_histograms_merge_exactly_so_the_operator_can_combine_pods() -> None:
    rnd = random.Random(9)
    pods = [[rnd.randrange(0, 50_000) for _ in range(1000)] for _ in range(3)]
    merged = LogHistogram()
    for values in pods:
        hist = LogHistogram()
        for v in values:
            hist.add(v)
        merged.merge(LogHistogram.from_wire(json.loads(json.dumps(hist.wire()))))
    whole = LogHistogram()
    for v in [v for values in pods for v in values]:
        whole.add(v)
    assert merged.wire() == whole.wire()


def test_recommendations_are_rounded_up_to_a_provider_valid_budget() -> None:
    assert recommend(1000, 20) == 1280  # 1200 -> the next multiple of 256
    assert recommend(100, 20) == 1024  # never below Anthropic's minimum
    assert recommend(1_000_000, 20) == 199_936  # never above what the API accepts
    assert recommend(4096, 0) == 4096


@pytest.mark.parametrize(("mu", "sigma"), [(8.0, 0.5), (9.0, 0.8), (8.5, 0.3), (6.5, 0.3)])
def test_recommendations_converge_to_p95_plus_20_percent_of_the_true_distribution(mu: float, sigma: float) -> None:
    rnd = random.Random(42)
    cal = Calibration(min_samples=100, percentile=95)
    stats = ClassStats("c", Tier(name="deep", budget_tokens=65536))
    for i in range(20_000):
        need = int(rnd.lognormvariate(mu, sigma))
        stats.add(Measurement(need, 10, False, False, False, False))
        if i + 1 < cal.min_samples:
            assert stats.recommendation(cal) is None, "nothing is recommended before minSamples"
    target = math.exp(mu + 1.6448536 * sigma) * 1.2  # the distribution's true P95, plus 20%
    observed = stats.hist.quantile(0.95)
    assert observed is not None
    assert abs(observed * 1.2 - target) <= 0.05 * target
    recommended = stats.recommendation(cal)
    assert recommended is not None
    assert recommended % 256 == 0
    assert 0 <= recommended - observed * 1.2 < 256
    if target >= 20 * 256:  # from 5K tokens up, rounding up to a multiple of 256 stays within 5% too
        assert abs(recommended - target) <= 0.05 * target, (recommended, target)


def class_stats_with(tt: ThinkTierStats, name: str, samples: list[tuple[int, bool, bool]]) -> None:
    for thinking, truncated, thinking_only in samples:
        tt.classes[name].add(Measurement(thinking, 5, False, truncated, thinking_only, False))


def test_conditions_fire_on_truncation_under_use_and_unclassified_calls() -> None:
    pol = policy(min_samples=50)
    tt = ThinkTierStats(CompiledThinkTier(pol.think_tiers[0]))
    assert {c["type"]: c["status"] for c in tt.conditions()}["TruncationHigh"] == "Unknown"
    class_stats_with(tt, "lookup", [(1900, i < 3, i < 1) for i in range(100)])  # 3% truncated, near its budget
    class_stats_with(tt, "analysis", [(4000, False, False)] * 100)  # uses 12% of 32768
    tt.calls, tt.unclassified_calls = 1000, 60
    conditions = {c["type"]: c for c in tt.conditions()}
    assert conditions["TruncationHigh"]["status"] == "True"
    assert conditions["TruncationHigh"]["message"].startswith("lookup: 3.00% of calls truncated")
    assert conditions["UnderUsed"]["status"] == "True"
    assert "analysis: 87.79%" in conditions["UnderUsed"]["message"]
    assert conditions["UnclassifiedHigh"]["status"] == "True"
    classes = {c["name"]: c for c in tt.report().dump()["classes"]}  # type: ignore[attr-defined]
    assert classes["lookup"]["truncationPercent"] == "3.00"
    assert classes["lookup"]["thinkingOnlyTruncations"] == 1
    assert classes["analysis"]["underUsePercent"] == "87.79"
    assert classes["analysis"]["recommendedBudgetTokens"] == 4864  # 4000 x 1.2 = 4800 -> 4864


def test_the_snapshot_is_thinktier_status_shaped() -> None:
    from tokenbudget_api.thinktier import ClassStatus, ThinkTierStatus
    thinking = Thinking(policy())
    snap = thinking.report().dump()["thinkTiers"][0]  # type: ignore[index]
    status = ThinkTierStatus.model_validate({"classes": snap["classes"], "unclassifiedPercent": snap[
        "unclassifiedPercent"]})
    assert status.classes is not None
    assert [c.name for c in status.classes] == [*CLASS_OF.values(), UNCLASSIFIED]
    assert ClassStatus.model_validate(snap["classes"][0]).wire() == {
        "name": "lookup", "tier": "shallow", "budgetTokens": 2048, "samples": 0, "thinkingOnlyTruncations": 0}


def test_a_policy_push_keeps_figures_unless_the_class_budget_changed() -> None:
    old = Thinking(policy())
    class_stats_with(old.stats["team/reasoning"], "lookup", [(1000, False, False)] * 5)
    class_stats_with(old.stats["team/reasoning"], "support", [(3000, False, False)] * 5)
    tiers = [dict(t) for t in TIERS]
    tiers[1]["budgetTokens"] = 4096  # standard: support's budget changes
    new = Thinking(policy(tiers=tiers))
    new.adopt(old)
    classes = new.stats["team/reasoning"].classes
    assert (classes["lookup"].samples, classes["support"].samples) == (5, 0)


# --- end to end through the real sidecar with the official SDKs ------------------------------------------


def ant(s: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0)


def oa(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="k", max_retries=0)


def gem(headers: dict[str, str]) -> gtypes.GenerateContentConfig:
    return gtypes.GenerateContentConfig(http_options=gtypes.HttpOptions(headers=headers))


def h(klass: str | None, reasoning: int, output: int = 8) -> dict[str, str]:
    out = {"x-upstream-reasoning-tokens": str(reasoning), "x-upstream-output-tokens": str(output)}
    return {**out, "x-tokenbudget-class": klass} if klass else out


def test_end_to_end_the_upstream_sees_the_tiers_and_the_snapshot_counts_what_happened() -> None:
    with stack(thinkTiers=[think_tier(min_samples=1)]) as st_:
        ant(st_).messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES,
                                 extra_headers=h("lookup", 1500, 20))
        # needs more thinking than its budget (cut at 2048) and more answer than its room (truncated)
        events = list(ant(st_).messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES,
                                               stream=True, extra_headers=h("lookup", 3000, 300)))
        assert events[-1].type == "message_stop"
        # gpt-5 at medium thinks 5000 tokens into a 200-token cap: nothing left for the answer
        cut = oa(st_).chat.completions.create(model="gpt-5", messages=MESSAGES, max_completion_tokens=200,
                                              extra_headers=h("support", 5000))
        assert cut.choices[0].finish_reason == "length"
        assert not cut.choices[0].message.content
        list(oa(st_).responses.create(model="o3", input="Is 2^61-1 prime?", stream=True,
                                      extra_headers=h("analysis", 400)))
        client = genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=st_.gemini_url))
        client.models.generate_content(model="gemini-2.5-flash", contents="hi", config=gem(h("lookup", 700)))
        client.models.generate_content(model="gemini-3-flash-preview", contents="hi", config=gem(h(None, 300)))
        oa(st_).chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=h("analysis", 0))
        oa(st_).chat.completions.create(  # the user's plea is prompt text: it changes nothing
            model="o4-mini", messages=[{"role": "user", "content": "think harder, use the max budget"}],
            extra_headers=h(None, 100))
        served = st_.ledger.wait_finished(8)
        records = st_.records(8)
        snapshot = json.loads(http_get(f"{st_.admin}/thinking"))
        metrics = http_get(f"{st_.admin}/metrics")
    series = 'tokenbudget_thinking_truncations_total{class="support",kind="thinking_only",thinktier="team/reasoning"}'
    assert f"{series} 1.0" in metrics

    bodies = [r.request_body for r in served]
    assert bodies[0]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert bodies[0]["max_tokens"] == 2304
    assert served[1].reasoning_tokens == 2048
    assert served[1].truncated
    assert bodies[2]["reasoning_effort"] == "medium"
    assert bodies[2]["max_completion_tokens"] == 200
    assert bodies[3]["reasoning"]["effort"] == "high"
    assert bodies[4]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
    assert bodies[5]["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "MEDIUM"}
    assert "reasoning_effort" not in bodies[6]
    assert bodies[7]["reasoning_effort"] == "medium"
    assert [(r.think_class, r.think_tier) for r in records] == [
        ("lookup", "shallow"), ("lookup", "shallow"), ("support", "standard"), ("analysis", "deep"),
        ("lookup", "shallow"), (UNCLASSIFIED, "standard"), (None, None), (UNCLASSIFIED, "standard")]

    tt = snapshot["thinkTiers"][0]
    assert (tt["calls"], tt["unclassified"], tt["unclassifiedPercent"]) == (7, 2, "28.57")
    assert snapshot["skipped"] == {"modelDoesNotReason": 1}
    classes = {c["name"]: c for c in tt["classes"]}
    lookup, support = classes["lookup"], classes["support"]
    assert (lookup["samples"], lookup["truncations"], lookup["thinkingOnlyTruncations"]) == (3, 1, 0)
    assert lookup["p50"] == pytest.approx(1500, rel=0.01)
    assert (lookup["budgetBoundPercent"], lookup["truncationPercent"]) == ("33.33", "33.33")
    assert lookup["recommendedBudgetTokens"] == 2560  # P95 2048 x 1.2 = 2458 -> 2560
    assert (support["samples"], support["truncations"], support["thinkingOnlyTruncations"]) == (1, 1, 1)
    assert classes["analysis"]["p50"] == pytest.approx(400, rel=0.01)
    assert classes[UNCLASSIFIED]["samples"] == 2
    conditions = {c["type"]: c["status"] for c in tt["conditions"]}
    assert conditions == {"TruncationHigh": "True", "BudgetBound": "True", "UnderUsed": "True",
                          "UnclassifiedHigh": "True"}


def test_end_to_end_the_top_tier_needs_the_pods_authorization() -> None:
    for authorized, budget in (([], 8192), (["max"], 65536)):
        with stack(thinkTiers=[think_tier(authorized=authorized)]) as st_:
            ant(st_).messages.create(model="claude-opus-4-6", max_tokens=1000, messages=MESSAGES,
                                     extra_headers=h("research", 100))
            body = st_.ledger.wait_finished(1)[0].request_body
            assert body["thinking"]["budget_tokens"] == budget
            assert body["max_tokens"] == budget + 1000


def test_end_to_end_the_raised_cap_respects_a_budgets_output_cap_and_a_downgrade_rethinks() -> None:
    budget = {"namespace": "default", "name": "team", "spec": {
        "selector": {}, "request": {"maxOutputTokens": 4096, "onOversize": "Reject"},
        "limits": [{"name": "day", "period": "Day", "tokens": 100_000}],
        "ladder": [{"at": 1, "action": "Downgrade", "modelMap": {"claude-opus-4-7": "claude-sonnet-4-5"}}]}}
    with stack(thinkTiers=[think_tier()], budgets=[budget]) as st_:
        first = ant(st_).messages.with_raw_response.create(
            model="claude-opus-4-7", max_tokens=1000, messages=MESSAGES, extra_headers=h("support", 1200))
        ant(st_).messages.create(model="claude-opus-4-7", max_tokens=1000, messages=MESSAGES,
                                 extra_headers=h("support", 100))  # past 1% of the day: downgraded
        served = st_.ledger.wait_finished(2)
    assert first.headers["x-tokenbudget-reserved-tokens"].isdigit()
    # 8192 + 1000 would be refused by the 4096 cap: thinking shrinks so the app keeps its 1000 answer tokens
    assert served[0].request_body["thinking"] == {"type": "adaptive"}
    assert served[0].request_body["output_config"] == {"effort": "medium"}
    assert served[0].request_body["max_tokens"] == 4096
    assert served[1].model == "claude-sonnet-4-5"
    assert served[1].request_body["thinking"] == {"type": "enabled", "budget_tokens": 3096}
    assert "output_config" not in served[1].request_body
    assert served[1].request_body["max_tokens"] == 4096
