"""Request headers → a plan of how many tokens of what the "model" produces.

Tests drive the upstream only through headers (``x-upstream-*``), which pass through the official
SDKs (``extra_headers`` / default headers) and through any proxy in between, so one test can set up a
whole scenario without a side channel. The header names and meanings are listed in the package
docstring; this module turns them and the request's own budget knobs into a :class:`Plan`.

Planning rule (the same for every dialect): the model *needs* ``x-upstream-reasoning-tokens`` of
thinking (zero when the request switched thinking off) and ``x-upstream-output-tokens`` of answer.
Thinking comes first and is cut silently to the request's thinking budget (not a truncation: the model
simply thinks less), then to the output cap (a truncation). The answer gets what the cap leaves; if
that is less than it needs, it is cut too (truncation). So "thinking ate the whole cap" is
reproduced by a reasoning need at least as large as the cap: empty answer, truncated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from .settings import UpstreamSettings

H_OUTPUT = "x-upstream-output-tokens"
H_REASONING = "x-upstream-reasoning-tokens"
H_CACHED = "x-upstream-cached-tokens"
H_CACHE_CREATION = "x-upstream-cache-creation-tokens"
H_FAIL = "x-upstream-fail"
H_FAIL_ATTEMPTS = "x-upstream-fail-attempts"
H_SDK_RETRY = "x-stainless-retry-count"  # the openai and anthropic SDKs number their attempts with it
H_RETRY_AFTER = "x-upstream-retry-after"
H_CHUNK_DELAY = "x-upstream-chunk-delay-ms"
H_CHUNK_TOKENS = "x-upstream-chunk-tokens"
H_OMIT_USAGE = "x-upstream-omit-usage"
H_REQUEST_ID = "x-upstream-request-id"
H_KEEPALIVE = "x-upstream-keepalive"

Failure = Literal["429", "500", "503", "529", "reset-before-headers", "reset-mid-stream", "in-stream-error",
                  "stall-mid-stream"]
STATUS_FAILURES: frozenset[str] = frozenset({"429", "500", "503", "529"})
_FAILURES: frozenset[str] = STATUS_FAILURES | {"reset-before-headers", "reset-mid-stream", "in-stream-error",
                                                "stall-mid-stream"}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ControlError(ValueError):
    """A malformed x-upstream-* header: answered with a 400 in the dialect's error shape."""


@dataclass(frozen=True)
class Controls:
    """The x-upstream-* headers of one request, parsed and defaulted."""

    output_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    fail: Failure | None
    retry_after_s: float | None
    chunk_delay_s: float
    chunk_tokens: int
    omit_usage: bool
    keepalive: bool = False


def _int(headers: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ControlError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ControlError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise ControlError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ControlError(f"{name} must be >= 0, got {value}")
    return value


def parse_controls(headers: Mapping[str, str], settings: UpstreamSettings) -> Controls:
    """Read the control headers (case-insensitive mapping, e.g. aiohttp's CIMultiDict)."""
    fail_raw = headers.get(H_FAIL)
    fail: Failure | None = None
    if fail_raw is not None and fail_raw.strip():
        value = fail_raw.strip().lower()
        if value not in _FAILURES:
            raise ControlError(f"{H_FAIL} must be one of {sorted(_FAILURES)}, got {fail_raw!r}")
        fail = cast(Failure, value)  # checked against the Literal's members just above
        attempts = _int(headers, H_FAIL_ATTEMPTS, -1)
        if attempts >= 0 and _int(headers, H_SDK_RETRY, 0) >= attempts:
            fail = None  # the SDK's retry past the failing attempts succeeds
    omit_raw = (headers.get(H_OMIT_USAGE) or "").strip().lower()
    if omit_raw not in _TRUE | _FALSE:
        raise ControlError(f"{H_OMIT_USAGE} must be true or false, got {omit_raw!r}")
    keepalive_raw = (headers.get(H_KEEPALIVE) or "").strip().lower()
    if keepalive_raw not in _TRUE | _FALSE:
        raise ControlError(f"{H_KEEPALIVE} must be true or false, got {keepalive_raw!r}")
    delay_ms = _float(headers, H_CHUNK_DELAY)
    return Controls(
        output_tokens=_int(headers, H_OUTPUT, settings.default_output_tokens),
        reasoning_tokens=_int(headers, H_REASONING, 0),
        cached_tokens=_int(headers, H_CACHED, 0),
        cache_creation_tokens=_int(headers, H_CACHE_CREATION, 0),
        fail=fail,
        retry_after_s=_float(headers, H_RETRY_AFTER),
        chunk_delay_s=(delay_ms or 0.0) / 1000.0,
        chunk_tokens=_int(headers, H_CHUNK_TOKENS, settings.default_chunk_tokens, minimum=1),
        omit_usage=omit_raw in _TRUE,
        keepalive=keepalive_raw in _TRUE,
    )


@dataclass(frozen=True)
class Plan:
    """Token counts of one generation, in normalized units (see ledger.py)."""

    prompt_tokens: int
    """Every prompt token, cache reads and writes included."""
    cached_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    visible_tokens: int
    truncated: bool

    @property
    def output_tokens(self) -> int:
        """Everything generated: thinking plus answer."""
        return self.reasoning_tokens + self.visible_tokens

    def chunk_count(self, per_chunk: int) -> int:
        """Deltas of ``per_chunk`` tokens a stream of this plan has (thinking and answer chunked apart).

        A non-streamed call waits this many chunk delays before answering, so its latency matches the
        stream's.
        """
        return -(-self.reasoning_tokens // per_chunk) + -(-self.visible_tokens // per_chunk)

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens neither read from nor written to the cache (Anthropic's ``input_tokens``)."""
        return self.prompt_tokens - self.cached_tokens - self.cache_creation_tokens


def effort_budget(effort: object, settings: UpstreamSettings) -> int | None:
    """Thinking budget for a reasoning-effort name (any case); None for absent or unknown names."""
    if not isinstance(effort, str):
        return None
    return settings.effort_budgets.get(effort.lower())


def make_plan(
    controls: Controls,
    *,
    counted_prompt: int,
    output_cap: int | None,
    thinking_budget: int | None,
    thinking_enabled: bool = True,
    cache_writes_supported: bool = True,
) -> Plan:
    """Apply the planning rule of the module docstring.

    Cache reads and writes are carved out of the counted prompt; when the headers ask for more than
    the prompt holds, the prompt is taken to be exactly that long (as if the cached prefix were longer
    than the text sent), so every reported number stays consistent. ``cache_writes_supported=False``
    (Gemini has no cache-write field) ignores x-upstream-cache-creation-tokens.
    """
    cached = controls.cached_tokens
    creation = controls.cache_creation_tokens if cache_writes_supported else 0
    prompt = max(counted_prompt, cached + creation)

    thinking = controls.reasoning_tokens if thinking_enabled else 0
    if thinking_budget is not None:
        thinking = min(thinking, max(thinking_budget, 0))
    visible = controls.output_tokens
    truncated = False
    if output_cap is not None:
        cap = max(output_cap, 0)
        if thinking > cap:
            thinking, truncated = cap, True
        room = cap - thinking
        if visible > room:
            visible, truncated = room, True
    return Plan(
        prompt_tokens=prompt,
        cached_tokens=cached,
        cache_creation_tokens=creation,
        reasoning_tokens=thinking,
        visible_tokens=visible,
        truncated=truncated,
    )
