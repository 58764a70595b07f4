"""A tier's token budget → each provider's own reasoning parameters, written into the request body.

Every rule here exists to keep the request one the provider accepts (docs/wire-formats.md §3.1, §4.1, §6.2,
§7.2, §11.7): a rewrite that earns a 400 would be worse than no rewrite at all.

| family (how the model is recognised)                 | knob written                                    |
|------------------------------------------------------|-------------------------------------------------|
| Anthropic, Claude 3.7 … 4.6 (`enabled`)              | `thinking: {type: enabled, budget_tokens: B}`,  |
|                                                      | `max_tokens = B + answer room` (≤ model max)    |
| Anthropic, Claude 4.7 and later (`adaptive` only)    | `thinking: {type: adaptive}`,                   |
|                                                      | `output_config.effort` by thresholds, and       |
|                                                      | `max_tokens = B + answer room`                  |
| OpenAI o1/o3/o4/gpt-5 (not -chat), gpt-oss (`effort`) | chat `reasoning_effort`, responses              |
|                                                      | `reasoning.effort`: low ≤ lowUpTo < medium ≤    |
|                                                      | mediumUpTo < high                               |
| Gemini 2.5 (`budget`)                                | `generationConfig.thinkingConfig.thinkingBudget`|
|                                                      | = B clamped to the model's range                |
| Gemini 3 (`level`)                                   | `…thinkingConfig.thinkingLevel` LOW/MEDIUM/HIGH |
|                                                      | (Pro: LOW/HIGH), never together with a budget   |
| self-hosted reasoning (R1, QwQ, Qwen3, o1-mini …)     | the output cap: min(app cap, B + answer room)   |

The app's own setting wins when it asks for less than its tier and is lowered to the tier when it asks
for more. Anthropic's `max_tokens` counts thinking, so it is raised to budget + the room the app asked
for its answer: otherwise the budget would have to be below the app's cap (a 400 when it is not) and the
thinking would eat the answer. OpenAI and Gemini caps are left alone: those models think by default, so
an app's cap there already includes thinking. Every cap we write respects the output caps of the
enforced TokenBudgets (`ceiling`), so admission never rejects or clamps a call because of us.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tokenbudget_api.thinking_limits import (  # shared with the operator, which checks tiers against them
    anthropic_max_output,
    claude_version,
    gemini_budget_range,
)
from tokenbudget_api.thinking_limits import model_name as _model_name
from tokenbudget_api.thinktier import ANTHROPIC_MIN_THINKING, EffortThresholds
from tokenbudget_sidecar.dialects.base import JSON, Call, Dialect

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""OpenAI's reasoning_effort enum (2026), weakest first; also Anthropic's output_config.effort subset."""
EFFORT_RANK = {e: i for i, e in enumerate(EFFORTS)}
ANTHROPIC_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})
GEMINI_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")
GEMINI_PRO_LEVELS = ("LOW", "HIGH")  # Pro-class Gemini 3 models accept only these
ANSWER_ROOM_MIN = 1  # an answer room of 0 would make max_tokens == budget_tokens: a 400


class Family(StrEnum):
    """How a model takes a thinking budget; None (not a member) means it does not reason."""

    ANTHROPIC_ENABLED = "anthropic-enabled"
    ANTHROPIC_ADAPTIVE = "anthropic-adaptive"
    OPENAI_EFFORT = "openai-effort"
    GEMINI_BUDGET = "gemini-budget"
    GEMINI_LEVEL = "gemini-level"
    OUTPUT_CAP = "output-cap"


# Self-hosted and third-party reasoning models behind the OpenAI wire format. They take no budget knob
# we can rely on (vLLM, Ollama and DashScope each differ), so the output cap is the lever.
SELF_HOSTED_REASONING = ("*deepseek-r1*", "*deepseek-reasoner*", "*qwq*", "qwen3*", "*-thinking*", "*reasoner*",
                         "*reasoning*", "magistral*", "o1-mini*", "o1-preview*", "*-r1", "*-r1-*")
SELF_HOSTED_NOT_REASONING = ("*instruct*",)  # e.g. qwen3-235b-a22b-instruct-2507 does not think
_SELF_HOSTED = re.compile("|".join(fnmatch.translate(p) for p in SELF_HOSTED_REASONING))
_SELF_HOSTED_NOT = re.compile("|".join(fnmatch.translate(p) for p in SELF_HOSTED_NOT_REASONING))

GEMINI_NO_THINKING = ("*image*", "*tts*", "*audio*", "*live*", "*embedding*")


def family(dialect: str, operation: str, model: str) -> Family | None:
    """The way this model takes a thinking budget, or None for calls a tier cannot apply to."""
    if dialect == "anthropic" and operation == "messages":
        version = claude_version(model)
        if version is None or version[1:] < (3, 7):
            return None  # Claude 3.5 and older (and unrecognised ids) reject `thinking`
        return Family.ANTHROPIC_ADAPTIVE if version[1:] >= (4, 7) else Family.ANTHROPIC_ENABLED
    if dialect == "openai" and operation in ("chat", "responses"):
        name = _model_name(model)
        if name.startswith(("o1-mini", "o1-preview")):
            return Family.OUTPUT_CAP  # reasoning models that reject reasoning_effort
        if (name.startswith(("o1", "o3", "o4", "gpt-5")) and "-chat" not in name) or name.startswith("gpt-oss"):
            return Family.OPENAI_EFFORT
        if _SELF_HOSTED.match(name) and not _SELF_HOSTED_NOT.match(name):
            return Family.OUTPUT_CAP
        return None  # gpt-4o, gpt-4.1, gpt-5-chat…: reasoning_effort would be a 400
    if dialect == "gemini" and operation == "generate":
        name = _model_name(model)
        if any(fnmatch.fnmatchcase(name, p) for p in GEMINI_NO_THINKING):
            return None
        if name.startswith("gemini-3"):
            return Family.GEMINI_LEVEL
        if name.startswith("gemini-2.5"):
            return Family.GEMINI_BUDGET
    return None


def effort_for(budget: int, thresholds: EffortThresholds) -> str:
    """low / medium / high for a token budget: values every reasoning model accepts."""
    if budget <= thresholds.low_up_to:
        return "low"
    if budget <= thresholds.medium_up_to:
        return "medium"
    return "high"


@dataclass(frozen=True)
class Target:
    """What the tier asks for, and the limits any cap we write must respect."""

    budget: int  # the tier's thinking tokens
    effort: str  # the tier's budget on the low/medium/high scale (spec.openAIEffort thresholds)
    answer_room: int  # answer tokens to allow on top of thinking when the app set no cap (output-cap family)
    ceiling: int | None = None  # smallest maxOutputTokens of the enforced TokenBudgets, if any


@dataclass
class Rewrite:
    """What was done to one request body."""

    family: Family
    knob: str  # the provider parameter that carries the budget, e.g. "thinking.budget_tokens"
    budget: int  # thinking tokens allowed in force (the tier's, the app's lower one, or a clamped one); 0 = off
    exact: bool = False  # the provider enforces `budget` as a token limit (so hitting it means the model was cut)
    kept_app_setting: bool = False  # the app asked for no more than its tier: left as it was
    changes: dict[str, Any] = field(default_factory=dict)  # dotted field → value written (None: removed)
    skipped: str | None = None  # why thinking was not touched (thinking off, incompatible parameters)

    @property
    def thinking(self) -> bool:
        return self.budget > 0 and self.skipped is None


REWRITTEN_FIELDS = ("thinking", "output_config", "reasoning_effort", "reasoning", "max_tokens", "max_completion_tokens",
                    "max_output_tokens", "generationConfig", "generation_config")
"""The top-level request fields any family may rewrite."""
_MISSING = object()


def save(body: JSON) -> dict[str, Any]:
    """Copies of the fields a rewrite may touch, to undo it (see Thinking.retarget)."""
    return {k: copy.deepcopy(body[k]) if k in body else _MISSING for k in REWRITTEN_FIELDS}


def restore(body: JSON, saved: dict[str, Any]) -> None:
    for key, value in saved.items():
        if value is _MISSING:
            body.pop(key, None)
        else:
            body[key] = copy.deepcopy(value)


def rewrite(fam: Family, dialect: Dialect, call: Call, body: JSON, target: Target) -> Rewrite:
    """Write `target` into `body` (and `call.output_cap`) the way `fam` takes it."""
    if fam in (Family.ANTHROPIC_ENABLED, Family.ANTHROPIC_ADAPTIVE):
        done = _anthropic(fam, dialect, call, body, target)
    elif fam is Family.OPENAI_EFFORT:
        done = _openai_effort(call, body, target)
    elif fam in (Family.GEMINI_BUDGET, Family.GEMINI_LEVEL):
        done = _gemini(fam, call, body, target)
    else:
        done = _output_cap(dialect, call, body, target)
    if done.skipped is not None:
        done.budget = 0  # no thinking budget is in force on this call
    return done


# --- Anthropic -------------------------------------------------------------------------------------------


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def fit_anthropic(budget: int, room: int, limit: int) -> tuple[int, int] | None:
    """(budget_tokens, max_tokens) with 1024 ≤ budget < max_tokens ≤ limit, keeping the app's answer room
    when the limit allows (thinking shrinks first); None when not even 1024 + 1 fits."""
    room = max(room, ANSWER_ROOM_MIN)
    if budget + room <= limit:
        return budget, budget + room
    if limit - room >= ANTHROPIC_MIN_THINKING:
        return limit - room, limit
    if limit > ANTHROPIC_MIN_THINKING:
        return ANTHROPIC_MIN_THINKING, limit
    return None


def _tool_loop(body: JSON) -> bool:
    """History with tool_use/tool_result blocks: enabling thinking mid-loop is a 400 (§6.2)."""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:  # not a list: the provider's 400 to give
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result", "server_tool_use") for b in content
        ):
            return True
    return False


def _anthropic_incompatible(body: JSON) -> str | None:
    """Why thinking cannot be switched on for this request without a 400, if it cannot (§6.2)."""
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return "temperature is set (thinking needs the default)"
    if body.get("top_k") is not None:
        return "top_k is set (incompatible with thinking)"
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and top_p < 0.95:
        return "top_p below 0.95 (incompatible with thinking)"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return "forced tool use (incompatible with thinking)"
    if _tool_loop(body):
        return "tool loop in history (switching thinking on mid-loop is a 400)"
    return None


def _anthropic(fam: Family, dialect: Dialect, call: Call, body: JSON, target: Target) -> Rewrite:
    adaptive = fam is Family.ANTHROPIC_ADAPTIVE
    knob = "output_config.effort" if adaptive else "thinking.budget_tokens"
    out = Rewrite(fam, knob, target.budget, exact=not adaptive)
    max_tokens = _int(body.get("max_tokens"))
    if max_tokens is None or max_tokens <= 0:
        out.skipped = "max_tokens missing or 0 (nothing to generate)"
        return out
    limit = min(x for x in (anthropic_max_output(call.model), target.ceiling) if x is not None)
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None

    def set_max(value: int) -> None:
        if value != max_tokens:
            dialect.set_output_cap(call, body, value)
            out.changes["max_tokens"] = value

    if kind == "disabled":
        out.budget, out.kept_app_setting, out.skipped = 0, True, "the app disabled thinking"
        return out
    if kind == "enabled" and isinstance(thinking, dict):
        app_budget = _int(thinking.get("budget_tokens"))
        if app_budget is None:
            out.skipped = "thinking.budget_tokens missing (the provider will answer 400)"
            return out
        out.knob = "thinking.budget_tokens"
        out.exact = True
        room = max_tokens - app_budget if max_tokens > app_budget else max_tokens
        valid = ANTHROPIC_MIN_THINKING <= app_budget < max_tokens <= limit
        if app_budget <= target.budget and valid:
            out.budget, out.kept_app_setting = app_budget, True
            return out
        fitted = fit_anthropic(min(app_budget, target.budget), room, limit)
        if fitted is None:
            # Admission will clamp max_tokens to the ceiling, below any valid budget: as sent, a sure 400.
            del body["thinking"]
            out.changes["thinking"] = None
            out.budget, out.skipped = 0, f"output ceiling {limit} leaves no room for a 1024-token thinking budget"
            return out
        budget, new_max = fitted
        thinking["budget_tokens"] = budget
        out.changes["thinking.budget_tokens"] = budget
        set_max(new_max)
        out.budget = budget
        return out
    if kind == "adaptive" or (kind is None and adaptive):
        # The model decides how long to think; the effort steers it and max_tokens bounds it.
        config = body.get("output_config")
        app_effort = config.get("effort") if isinstance(config, dict) else None
        app_effort = app_effort if isinstance(app_effort, str) else None  # a list here raised (unhashable)
        if kind is None:
            why = _anthropic_incompatible(body)
            if why is not None:
                out.skipped = why
                return out
            fitted = fit_anthropic(target.budget, max_tokens, limit)
            if fitted is None:
                out.skipped = f"output ceiling {limit} leaves no room for thinking"
                return out
            body["thinking"] = {"type": "adaptive"}
            out.changes["thinking"] = {"type": "adaptive"}
            set_max(fitted[1])
            out.budget = fitted[0]
        out.knob = "output_config.effort"
        if app_effort in ANTHROPIC_EFFORTS and EFFORT_RANK[str(app_effort)] <= EFFORT_RANK[target.effort]:
            out.kept_app_setting = kind == "adaptive"
            return out
        body["output_config"] = {**(config if isinstance(config, dict) else {}), "effort": target.effort}
        out.changes["output_config.effort"] = target.effort
        return out
    if kind is not None:
        out.skipped = f"unknown thinking type {kind!r}"
        return out
    # No thinking asked for: switch it on with the tier's budget, on top of the app's answer room.
    why = _anthropic_incompatible(body)
    if why is not None:
        out.skipped = why
        return out
    fitted = fit_anthropic(target.budget, max_tokens, limit)
    if fitted is None:
        out.skipped = f"output ceiling {limit} leaves no room for a 1024-token thinking budget"
        return out
    budget, new_max = fitted
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.changes["thinking"] = {"type": "enabled", "budget_tokens": budget}
    set_max(new_max)
    out.budget = budget
    return out


# --- OpenAI ----------------------------------------------------------------------------------------------


def _openai_effort(call: Call, body: JSON, target: Target) -> Rewrite:
    responses = call.operation == "responses"
    knob = "reasoning.effort" if responses else "reasoning_effort"
    out = Rewrite(Family.OPENAI_EFFORT, knob, target.budget)
    reasoning = body.get("reasoning")
    current = (reasoning.get("effort") if isinstance(reasoning, dict) else None) if responses else (
        body.get("reasoning_effort"))
    if isinstance(current, str) and current in EFFORT_RANK and EFFORT_RANK[current] <= EFFORT_RANK[target.effort]:
        out.kept_app_setting = True
        if current == "none":
            out.budget, out.skipped = 0, "the app switched reasoning off"
        return out
    # Absent, above the tier, or a value no model accepts: the tier's effort (low/medium/high are
    # accepted by every reasoning model, o1 included).
    if responses:
        body["reasoning"] = {**(reasoning if isinstance(reasoning, dict) else {}), "effort": target.effort}
    else:
        body["reasoning_effort"] = target.effort
    out.changes[knob] = target.effort
    return out


def _output_cap(dialect: Dialect, call: Call, body: JSON, target: Target) -> Rewrite:
    """Self-hosted reasoning: the cap bounds thinking + answer, so the tier sets the cap."""
    out = Rewrite(Family.OUTPUT_CAP, "output cap", target.budget)
    cap = target.budget + target.answer_room
    if target.ceiling is not None:
        cap = min(cap, target.ceiling)
    if call.output_cap is not None and call.output_cap <= cap:
        out.kept_app_setting = True
        return out
    if call.output_cap is None and call.operation == "chat" and not _model_name(call.model).startswith("o1"):
        # No cap yet: max_tokens is the one every compatible server reads (Ollama ignores
        # max_completion_tokens, §8.2); only OpenAI's own o1-mini/o1-preview need max_completion_tokens.
        body["max_tokens"] = cap
        call.output_cap = cap
        out.changes["max_tokens"] = cap
        return out
    dialect.set_output_cap(call, body, cap)
    written = next((k for k in ("max_output_tokens", "max_completion_tokens", "max_tokens") if body.get(k) == cap),
                   "output cap")
    out.changes[written] = cap
    return out


# --- Gemini ----------------------------------------------------------------------------------------------


def _key(container: dict[str, Any], camel: str, snake: str) -> str:
    """The spelling the app used (proto3 JSON accepts both); camelCase when neither is there."""
    return snake if snake in container and camel not in container else camel


def gemini_level(effort: str, model: str) -> str:
    if "pro" in _model_name(model):
        return "HIGH" if effort == "high" else "LOW"  # a tier is a ceiling: medium rounds down on Pro
    return {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}[effort]


def _gemini(fam: Family, call: Call, body: JSON, target: Target) -> Rewrite:
    level_family = fam is Family.GEMINI_LEVEL
    ckey = _key(body, "generationConfig", "generation_config")
    config = body.get(ckey)
    if not isinstance(config, dict):
        config = {}
    tkey = _key(config, "thinkingConfig", "thinking_config")
    thinking = config.get(tkey)
    if not isinstance(thinking, dict):
        thinking = {}
    bkey = _key(thinking, "thinkingBudget", "thinking_budget")
    lkey = _key(thinking, "thinkingLevel", "thinking_level")
    prefix = f"{ckey}.{tkey}."
    out = Rewrite(fam, prefix + (lkey if level_family else bkey), target.budget, exact=not level_family)
    lo, hi = gemini_budget_range(call.model)
    tier_budget = min(max(target.budget, lo), hi)
    app_budget, app_level = _int(thinking.get(bkey)), thinking.get(lkey)
    # Both knobs at once is always a 400; keep the one this model family takes.
    if bkey in thinking and lkey in thinking:
        drop = bkey if level_family else lkey
        thinking.pop(drop)
        out.changes[prefix + drop] = None
        app_budget, app_level = (None, app_level) if level_family else (app_budget, None)
    uses_budget = app_budget is not None or (not level_family and bkey in thinking)

    def commit() -> Rewrite:
        config[tkey] = thinking
        body[ckey] = config
        return out

    if uses_budget or not level_family:
        out.knob, out.exact = prefix + bkey, True
        if lkey in thinking:  # thinkingLevel on a 2.5 model is a 400: the budget replaces it
            thinking.pop(lkey)
            out.changes[prefix + lkey] = None
        if app_budget == 0:
            out.budget, out.kept_app_setting, out.skipped = 0, True, "the app switched thinking off"
            return commit() if out.changes else out
        if app_budget is not None and 0 < app_budget <= tier_budget:
            out.budget, out.kept_app_setting = app_budget, True
            return commit() if out.changes else out
        thinking[bkey] = tier_budget  # absent, dynamic (-1), above the tier, or malformed
        out.changes[prefix + bkey] = tier_budget
        out.budget = tier_budget
        return commit()
    tier_level = gemini_level(target.effort, call.model)
    allowed = GEMINI_PRO_LEVELS if "pro" in _model_name(call.model) else GEMINI_LEVELS
    if isinstance(app_level, str) and app_level.upper() in allowed and (
        GEMINI_LEVELS.index(app_level.upper()) <= GEMINI_LEVELS.index(tier_level)
    ):
        out.kept_app_setting = True
        return commit() if out.changes else out
    thinking[lkey] = tier_level
    out.changes[prefix + lkey] = tier_level
    return commit()
