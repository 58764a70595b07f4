"""A faithful stand-in LLM provider for tests, the demo and benchmarks.

One aiohttp server speaks three dialects on their native paths (relative to each provider's base
URL): OpenAI (``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``, ``GET /v1/models``),
Anthropic (``POST /v1/messages``, ``/v1/messages/count_tokens``) and Gemini
(``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent`` / ``:countTokens``, and the
same under ``/v1/models/…``, which google-genai 3.x uses), and WebSocket sessions (``ws_sessions``,
``ws_openai``, ``ws_gemini``: OpenAI Realtime ``GET /v1/realtime``, Responses ``GET /v1/responses``, Gemini Live
``GET /ws/…BidiGenerateContent``). The official SDKs talk to it unchanged:
``OpenAI(base_url=f"{url}/v1")``, ``Anthropic(base_url=url)``,
``genai.Client(http_options=HttpOptions(base_url=url))``. Auth headers are accepted and recorded, never
checked.

Behaviour is deterministic and driven per call by request headers, so a test can set up a scenario
through the SDKs' ``extra_headers`` and through any proxy in between:

``x-upstream-output-tokens: N``
    Visible answer tokens the model wants to write (default 8). The text is English words, one token
    each in o200k_base and cl100k_base.
``x-upstream-reasoning-tokens: N``
    Thinking tokens the model needs (default 0). Thinking comes first and is cut silently to the
    request's thinking budget, then to the output cap (a truncation); the answer gets what the cap
    leaves (less than wanted is a truncation). Budgets: Anthropic ``thinking.budget_tokens`` (thinking
    happens only when ``thinking`` is enabled/adaptive), Gemini ``thinkingBudget`` (0 = off, -1 or
    absent = no budget) or ``thinkingLevel``, OpenAI ``reasoning_effort`` / ``reasoning.effort``
    (``none`` = off) via :data:`~tokenbudget_testing.upstream.settings.DEFAULT_EFFORT_BUDGETS`:
    minimal 128, low 1024, medium 8192, high 32768, xhigh 65536, max 131072. Output caps:
    ``max_completion_tokens`` (else ``max_tokens``), ``max_output_tokens``, ``max_tokens``,
    ``maxOutputTokens``. Truncation shows as ``finish_reason: "length"``, Responses ``status:
    "incomplete"`` with reason ``max_output_tokens``, ``stop_reason: "max_tokens"``, ``finishReason:
    "MAX_TOKENS"``. A reasoning need at least as large as the cap reproduces thinking-only truncation.
``x-upstream-cached-tokens: N`` / ``x-upstream-cache-creation-tokens: N``
    Prompt-cache reads / writes, carved out of the counted prompt (the prompt grows to fit when they
    exceed it). Reported per provider: OpenAI and Gemini prompt counts include them; Anthropic
    ``input_tokens`` excludes both. Gemini has no cache-write field and ignores the second header.
``x-upstream-fail: 429 | 500 | 503 | 529 | reset-before-headers | reset-mid-stream | in-stream-error |
stall-mid-stream``
    An HTTP error in the dialect's shape; a TCP reset before any response byte; a reset part-way
    through the body (``settings.cut_fraction`` of the content, never the final usage; sent
    ``settings.reset_grace_s`` after the last event, so what was emitted reached the peer); the
    dialect's in-stream error event at that point (a non-streamed call gets HTTP 500 / 529 / 503 for
    OpenAI / Anthropic / Gemini instead); or silence at that point for ``settings.stall_s`` and then a
    reset (a client's read timeout strikes first).
``x-upstream-fail-attempts: N``
    Apply ``x-upstream-fail`` only to the first N attempts, as the SDK numbers them in
    ``x-stainless-retry-count`` (openai and anthropic SDKs): the SDK's own retry then succeeds.
``x-upstream-retry-after: seconds``
    ``Retry-After`` header on OpenAI/Anthropic errors; ``RetryInfo.retryDelay`` in a Gemini 429 body.
``x-upstream-chunk-delay-ms: N`` / ``x-upstream-chunk-tokens: N``
    Token cadence: wait N ms before each streamed chunk of ``chunk-tokens`` tokens (default 1). Hidden
    reasoning (OpenAI, Gemini without ``includeThoughts``) waits without sending; a non-streamed call
    waits for all its chunks before answering.
``x-upstream-omit-usage: true``
    Behave like an old server that reports no usage at all, streamed or not.
``x-upstream-keepalive: true``
    Streams (SSE) send an SSE comment block, ``: keep-alive`` and a blank line, before each event, as servers
    and gateways do to keep idle streams open.

Prompt tokens are counted with tiktoken o200k_base and the cookbook chat rule; see
:mod:`tokenbudget_testing.upstream.tokens` for the exact rule.

Every call is recorded in a :class:`Ledger` of :class:`ServedRecord` (normalized usage, truncation,
whether usage reached the client, whether the response completed, the request body and headers):
in-process as ``app[LEDGER]``, over HTTP as ``GET /_upstream/served`` and ``DELETE /_upstream/served``.
Every response carries ``x-upstream-request-id``, equal to the response id the SDK exposes.

Run it standalone with ``python -m tokenbudget_testing.upstream --host 127.0.0.1 --port 8000``.

Modules: ``app`` (routes, generic request flow, ``serve``/``serve_in_thread``), ``behaviour`` (headers →
token plan), ``call`` (writing bodies/streams, failure injection, ledger bookkeeping), ``dialect``
(per-dialect hooks), ``openai_dialect``/``openai_responses``/``anthropic_dialect``/``gemini_dialect``
(the wire formats), ``sse`` (event framing), ``tokens`` (counting and generated words), ``ledger``,
``settings``.
"""

from .app import LEDGER, SETTINGS, create_app, serve, serve_in_thread
from .behaviour import (
    H_CACHE_CREATION,
    H_CACHED,
    H_CHUNK_DELAY,
    H_CHUNK_TOKENS,
    H_FAIL,
    H_FAIL_ATTEMPTS,
    H_KEEPALIVE,
    H_OMIT_USAGE,
    H_OUTPUT,
    H_REASONING,
    H_REQUEST_ID,
    H_RETRY_AFTER,
)
from .ledger import Dialect, Ledger, ServedRecord
from .settings import DEFAULT_EFFORT_BUDGETS, UpstreamSettings

__all__ = [
    "DEFAULT_EFFORT_BUDGETS",
    "H_CACHED",
    "H_CACHE_CREATION",
    "H_CHUNK_DELAY",
    "H_CHUNK_TOKENS",
    "H_FAIL",
    "H_FAIL_ATTEMPTS",
    "H_KEEPALIVE",
    "H_OMIT_USAGE",
    "H_OUTPUT",
    "H_REASONING",
    "H_REQUEST_ID",
    "H_RETRY_AFTER",
    "LEDGER",
    "SETTINGS",
    "Dialect",
    "Ledger",
    "ServedRecord",
    "UpstreamSettings",
    "create_app",
    "serve",
    "serve_in_thread",
]
