"""Server-wide knobs of the test upstream.

Per-call behaviour is driven by request headers (see the package docstring) so that a test can steer
one call through any proxy; the knobs here are the few things that describe *which* provider build we
imitate and rarely change within a test run. They can be set from the environment with the prefix
``TOKENBUDGET_TESTUPSTREAM_`` (e.g. ``TOKENBUDGET_TESTUPSTREAM_ANTHROPIC_JSON_PADDING=true``) because
the upstream is also started as a separate process by tests, the demo and the benchmarks.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: OpenAI ``reasoning_effort`` / ``reasoning.effort`` → thinking budget in tokens. The provider keeps the
#: mapping secret; these round numbers only have to be monotonic and documented (low/medium/high are the
#: 1024/8192/32768 asked for by the sidecar's think tiers). Anthropic ``output_config.effort`` and Gemini
#: ``thinkingLevel`` (upper-cased names) use the same table.
DEFAULT_EFFORT_BUDGETS: dict[str, int] = {
    "none": 0,
    "minimal": 128,
    "low": 1024,
    "medium": 8192,
    "high": 32768,
    "xhigh": 65536,
    "max": 131072,
}


class UpstreamSettings(BaseSettings):
    """Static configuration of one test-upstream server."""

    model_config = SettingsConfigDict(env_prefix="TOKENBUDGET_TESTUPSTREAM_", extra="ignore")

    default_output_tokens: int = Field(
        8, ge=0, description="Visible answer tokens when x-upstream-output-tokens is absent."
    )
    default_chunk_tokens: int = Field(
        1, ge=1, description="Tokens per streamed delta when x-upstream-chunk-tokens is absent."
    )
    effort_budgets: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS),
        description="Reasoning-effort name (lower case) → thinking budget in tokens.",
    )
    cut_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of the content events written before reset-mid-stream / in-stream-error strike.",
    )
    reset_grace_s: float = Field(
        0.2, ge=0.0, le=10.0,
        description="How long reset-mid-stream waits after its last event before the reset: a TCP reset makes the "
        "peer's kernel drop what it received but had not read yet, so without a pause the events a test counts as "
        "emitted could vanish on a loaded machine before the proxy read them.",
    )
    stall_s: float = Field(
        3.0, ge=0.0, le=60.0,
        description="How long stall-mid-stream keeps silent (after cut_fraction of the content) before a reset.",
    )
    anthropic_json_padding: bool = Field(
        False, description="Pad Anthropic SSE JSON with spaces before the closing brace, as the live API does."
    )
    gemini_crlf: bool = Field(True, description="Separate Gemini SSE events with CRLF, as the live API does.")
    strict_params: bool = Field(
        True,
        description=(
            "Reject parameter combinations the real providers reject (OpenAI max_tokens on reasoning models, "
            "stream_options without stream, reasoning_effort on non-reasoning models; Anthropic thinking "
            "budgets outside [1024, max_tokens); Gemini thinkingBudget together with thinkingLevel)."
        ),
    )
    gemini_default_retry_delay_s: float = Field(
        1.0, ge=0.0, description="retryDelay of a Gemini 429 when x-upstream-retry-after is absent (seconds)."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    shutdown_timeout_s: float = Field(
        0.5,
        ge=0.0,
        description="How long serve() lets in-flight calls run on exit before cutting them (aiohttp waits "
        "this long twice: for the handler, then after asking it to stop).",
    )
    models: list[str] = Field(
        default_factory=lambda: [
            "gpt-4o-mini",
            "gpt-4o",
            "o3-mini",
            "gpt-5",
            "text-embedding-3-small",
            "claude-sonnet-4-6",
            "gemini-2.5-flash",
        ],
        description="Ids listed by GET /v1/models (any id is accepted by the generation endpoints).",
    )
