"""One normalized usage shape for every provider, and the per-call record the sidecar keeps.

Providers disagree on what their counts include. We normalize to supersets so sums are meaningful:

field                        OpenAI chat / responses        Anthropic                      Gemini
input_tokens (all prompt)    prompt_/input_tokens (incl.    input_tokens + cache_read_ +   promptTokenCount (incl.
                             cached)                        cache_creation_input_tokens    cached)
cached_input_tokens          *_details.cached_tokens        cache_read_input_tokens        cachedContentTokenCount
cache_creation_input_tokens  *_details.cache_write_tokens   cache_creation_input_tokens    (none)
output_tokens (all output)   completion_/output_tokens      output_tokens (incl. thinking) candidatesTokenCount +
                             (incl. reasoning)                                             thoughtsTokenCount
reasoning_tokens (subset)    *_details.reasoning_tokens     output_tokens_details.         thoughtsTokenCount
                                                            thinking_tokens

Media: image and audio tokens are priced apart from text, so their shares are kept as subsets of the totals:
input_image_tokens (OpenAI images `input_tokens_details.image_tokens`), input_audio_tokens (transcription
`input_token_details.audio_tokens`), output_image_tokens (images `output_tokens_details.image_tokens`, or all
of an image answer's output when it gives no breakdown), output_audio_tokens and cached_input_audio_tokens
(Realtime's and Gemini Live's audio shares, priced at audio rates). Whisper bills by the second and reports no tokens:
audio_seconds holds its `usage.seconds` (docs/wire-formats.md, "Images and audio").

Streaming usage is a snapshot (Anthropic message_delta, Gemini usageMetadata): the last value of each
field wins; values are never summed across events.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

# The DryRun actions that mean "enforcement would have refused this call" (UsageRecord.counted_budgets).
DRY_RUN_REFUSALS = frozenset({"Block", "Reject"})


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_image_tokens: int = 0  # part of input_tokens: image input (OpenAI images edits)
    input_audio_tokens: int = 0  # part of input_tokens: audio input (gpt-4o-transcribe, Realtime, Gemini Live)
    cached_input_audio_tokens: int = 0  # part of cached_input_tokens: audio read from the cache (Realtime)
    output_image_tokens: int = 0  # part of output_tokens: generated image (gpt-image-*)
    output_audio_tokens: int = 0  # part of output_tokens: generated audio (Realtime, Gemini Live)
    audio_seconds: float = 0.0  # audio billed by duration (whisper-1); no tokens

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def reported(self) -> bool:
        """Something billable was reported: tokens, or seconds of audio (whisper-1 reports only those)."""
        return self.total_tokens > 0 or self.audio_seconds > 0


class UsageSource(StrEnum):
    PROVIDER = "provider"  # the provider's own usage report
    ESTIMATED = "estimated"  # tiktoken over what we saw: no usage arrived (cut stream, old server)
    NONE = "none"  # nothing billable (refused before forwarding, upstream error)
    UNMETERED = "unmetered"  # forwarded to a route whose answer reports no usage (file upload, batch creation)


class Outcome(StrEnum):
    OK = "ok"
    UPSTREAM_ERROR = "upstream_error"  # provider answered 4xx/5xx
    UPSTREAM_FAILED = "upstream_failed"  # connect/reset/timeout
    CLIENT_DISCONNECTED = "client_disconnected"
    REFUSED = "refused"  # the sidecar refused (bad input, policy)


class Disconnect(StrEnum):
    DRAIN = "Drain"
    CUT = "Cut"


class CallFeatures(BaseModel):
    """What a call's prompt looked like, never what it said: the inputs of a budget's waste insights.

    Token figures are the sidecar's tiktoken counts of the prompt's segments (each new segment counted once,
    whatever `prompt_estimate` says: admission may have kept its byte bound), so shares add up within one
    call whatever the provider's tokenizer; dollars are priced at the call's model and prices.
    Hashes are keyed and truncated (features.py): a reused prefix is recognizable, its text is not.
    """

    context_hashes: list[str] = []  # chained hash of the head (system, tools) and each leading message
    segments: int = 0  # head plus messages the prompt has
    prompt_tokens: int = 0  # the prompt's length: its segments' tokens (each message with 4 of framing)
    repeated_tokens: int = 0  # tokens of the longest leading prefix an earlier call already sent
    cacheable_tokens: int = 0  # repeated_tokens when long enough for a provider to cache, else 0
    cache_miss_tokens: int = 0  # cacheable tokens the provider did not report as read from its cache
    tool_output_tokens: int = 0  # tokens of tool results inside the prompt
    conversation: str | None = None  # keyed hash of the conversation the call belongs to
    turn: int = 0  # 1 for a conversation's first call
    growth_tokens: int | None = None  # prompt tokens over the previous turn's; None on a first turn
    retry: int = 0  # the SDK's retry counter (x-stainless-retry-count): 0 for a first attempt
    repeated_usd: Decimal | None = None  # what the repeated tokens cost (cached ones at the cached price)
    cache_miss_usd: Decimal | None = None  # what a cache hit on the missed tokens would have saved
    tool_output_usd: Decimal | None = None  # what the tool results in the prompt cost


class Acceptance(BaseModel):
    """An app's report that an answer was accepted, with what its conversation spent since the last one."""

    response_id: str
    conversation: str | None = None
    budgets: list[str] = []  # the budgets the accepted call counted against (this record counts against none)
    calls: int = 0  # calls of the conversation since its previous acceptance (0: the answer was not seen)
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)


class UsageRecord(BaseModel):
    """What one call cost: the unit the ledger stores and the operator aggregates."""

    seq: int = 0  # monotonic per sidecar, assigned when the record is appended
    request_id: str
    time: dt.datetime
    upstream: str
    dialect: str
    operation: str  # chat, completions, responses, embeddings, images, transcriptions, messages, generate, embed, …
    route: str | None = None  # an unmetered call's route, ids left out (e.g. "POST /v1/files")
    model: str
    user: str | None = None
    stream: bool = False
    status: int = 0
    outcome: Outcome = Outcome.OK
    usage: Usage = Usage()
    source: UsageSource = UsageSource.PROVIDER
    cost_usd: Decimal | None = None  # None: the model has no known price
    price_source: str | None = None  # "catalog", "override", or None when unpriced
    truncated: bool = False
    # The sidecar died with the call in flight: this record was made at its restart from the intent written
    # before forwarding (ledger.py), the prompt estimate plus the output cap, since the provider bills it.
    # Also a background Response the sidecar never saw end, recorded so at its age limit (background.py).
    interrupted: bool = False
    # Made before the operator's first policy push reached this sidecar (injected pods wait for it, at most
    # TOKENBUDGET_AWAIT_POLICY_S): it names no budget, so the operator counts it against the budgets that
    # select the pod, and the sidecar's first push does the same in its windows.
    awaiting_policy: bool = False
    disconnect: Disconnect | None = None
    response_id: str | None = None  # the provider's id for the answer, to reconcile with its bill
    budgets: list[str] = []  # namespace/name of every budget the call counted against
    decisions: list[str] = []  # enforcement decisions, e.g. "ns/name:Downgrade", "ns/name:DryRun:Block"
    prompt_estimate: int = 0  # tiktoken's pre-flight count, for comparison with the provider's
    # prompt_estimate is the prompt's UTF-8 byte bound, not tiktoken's count: no decision needed the exact
    # figure and the provider reported the input (sidecar prompt_count.py), so no encoding was loaded for it.
    prompt_bound: bool = False
    think_class: str | None = None  # ThinkTier class of a reasoning call ("unclassified" if none matched)
    think_tier: str | None = None  # the tier in force for it (defaultTier when a Required tier was refused)
    duration_ms: int = 0
    features: CallFeatures | None = None  # per-call waste features (features.py); None for unmetered routes
    # An acceptance report (features.py): carried by the call whose `x-tokenbudget-accepted` header named an
    # earlier answer, or by a record of its own (operation "outcome", no budgets) for POST /outcomes.
    accepted: Acceptance | None = None

    def counted_budgets(self) -> list[str]:
        """The budgets whose windows this call's use counts in: those it names, less any DryRun budget that
        would have refused it (Block or Reject).

        Why: enforcement would not have let that call spend, so a dry run that counted it would reach its
        limit sooner than its enforcing twin and over-report refusals; its windows follow enforcement instead,
        and the would-have refusal (with its tokens and dollars) is counted in `status.dryRun`. The sidecar's
        windows, its ledger replay and checkpoint, and the operator's status and leases all use this one rule.
        """
        refused = {parts[0] for parts in (d.split(":") for d in self.decisions)
                   if len(parts) == 3 and parts[1] == "DryRun" and parts[2] in DRY_RUN_REFUSALS}
        return [b for b in self.budgets if b not in refused]
