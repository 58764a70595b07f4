"""The TokenBudget API (tokenbudget.io/v1alpha1): what a platform team declares and what it reads back.

Spec is intent only; everything observed (usage, stage, synced pods) lives in status. Cross-field rules
are CEL so the apiserver rejects a bad budget at `kubectl apply` time with a message naming the field,
and the same rules are mirrored in validators so the sidecar can trust a policy file it reads alone.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from tokenbudget_api import names
from tokenbudget_api.common import CEL, ApiModel, Condition, LabelSelector, Money, Name, Percent, cel
from tokenbudget_api.insights import InsightsSpec, InsightsStatus
from tokenbudget_api.notifications import NotificationStatus, NotificationTarget

TIME_ZONE_PATTERN = r"^(UTC|[A-Z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){1,2})$"
DURATION_PATTERN = r"^[1-9][0-9]{0,5}(s|m|h|d)$"
HTTP_URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9-]{1,64}$"


class Enforcement(StrEnum):
    ENFORCE = "Enforce"
    DRY_RUN = "DryRun"


class OnOversize(StrEnum):
    REJECT = "Reject"
    CLAMP = "Clamp"


class UncappedOutput(StrEnum):
    HOLD = "Hold"
    REJECT = "Reject"


class Period(StrEnum):
    MINUTE = "Minute"
    HOUR = "Hour"
    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"


class LimitKey(StrEnum):
    USER = "User"
    MODEL = "Model"


class Action(StrEnum):
    ALERT = "Alert"
    THROTTLE = "Throttle"
    DOWNGRADE = "Downgrade"
    BLOCK = "Block"


class Dialect(StrEnum):
    OPENAI = "OpenAI"
    ANTHROPIC = "Anthropic"
    GEMINI = "Gemini"
    AZURE_OPENAI = "AzureOpenAI"  # OpenAI's wire format at /openai/deployments/{deployment}/..., api-key header


class OnDisconnect(StrEnum):
    DRAIN = "Drain"
    CUT = "Cut"


class FailMode(StrEnum):
    OPEN = "Open"
    CLOSED = "Closed"


class UnmeteredRoutes(StrEnum):
    """Calls the sidecar forwards but cannot meter (file uploads, batch creation): their answers report
    no usage, yet the provider may bill them."""

    ALLOW = "Allow"
    DENY = "Deny"


class RequestCaps(ApiModel):
    """Per-call caps, checked before a call leaves the pod."""

    max_prompt_tokens: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="Largest prompt (input tokens, counted with tiktoken before the call) a single call may send.",
    )
    max_output_tokens: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="Largest output cap (max_tokens and friends, thinking included) a single call may ask for.",
    )
    on_oversize: OnOversize = Field(
        default=OnOversize.REJECT,
        description="Reject a call whose output cap exceeds maxOutputTokens (400), or Clamp the cap down to it.",
    )
    uncapped_output: UncappedOutput = Field(
        default=UncappedOutput.HOLD,
        description="A call that sets no output cap when no maxOutputTokens applies: Hold the sidecar's default "
        "output allowance for it (the provider may bill more), or Reject it with a 400 naming the field to set.",
    )


class Limit(ApiModel):
    """A budget window: how much may be spent per calendar period (or rolling duration)."""

    model_config = {"json_schema_extra": {CEL: [
        cel("has(self.period) != has(self.duration)", "exactly one of period or duration must be set"),
        cel("(has(self.tokens) ? 1 : 0) + (has(self.costUSD) ? 1 : 0) + (has(self.requests) ? 1 : 0) == 1",
            "exactly one of tokens, costUSD or requests must be set"),
    ]}}

    name: Name = Field(description="Unique name of this window within the budget, e.g. daily-tokens.")
    period: Period | None = Field(
        default=None,
        description="Calendar window in spec.timeZone: resets at the start of each minute, hour, day, "
        "ISO week (Monday) or month, never at first request + period.",
    )
    duration: str | None = Field(
        default=None, pattern=DURATION_PATTERN, max_length=8,
        description="Rolling window instead of a calendar one, e.g. 15m, 6h, 7d.",
    )
    tokens: int | None = Field(
        default=None, ge=1, le=10**15, description="Token limit: input plus output tokens, thinking included."
    )
    cost_usd: Money | None = Field(
        default=None, alias="costUSD", description="Dollar limit as a decimal string, e.g. \"250.00\"."
    )
    requests: int | None = Field(default=None, ge=1, le=10**12, description="Limit on the number of calls.")
    per: LimitKey | None = Field(
        default=None,
        description="Apply the limit to each User (from the user header, else the OpenAI user field, Anthropic "
        "metadata.user_id or the Gemini label userLabel names) or each Model separately instead of to the budget "
        "as a whole.",
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> Limit:
        if (self.period is None) == (self.duration is None):
            raise ValueError("exactly one of period or duration must be set")
        if sum(x is not None for x in (self.tokens, self.cost_usd, self.requests)) != 1:
            raise ValueError("exactly one of tokens, costUSD or requests must be set")
        return self

    @property
    def rolling_seconds(self) -> int | None:
        if self.duration is None:
            return None
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.duration[-1]]
        return int(self.duration[:-1]) * unit


class Concurrency(ApiModel):
    """Caps calls in flight from one pod, so a retry storm cannot fan out without bound."""

    max_in_flight: int = Field(ge=1, le=100_000, description="Calls that may be in flight at once per pod.")
    max_queued: int = Field(
        default=0, ge=0, le=100_000,
        description="Calls that may wait for a slot; beyond this they get 429 with Retry-After at once.",
    )
    queue_timeout_seconds: int = Field(
        default=10, ge=1, le=600, description="Longest a queued call waits for a slot before a 429."
    )


class LadderStep(ApiModel):
    """One rung of the graduated response, taken when any window's use reaches `at` percent."""

    model_config = {"json_schema_extra": {CEL: [
        cel("self.action != 'Downgrade' || (has(self.modelMap) && size(self.modelMap) > 0)",
            "a Downgrade step needs a non-empty modelMap"),
        cel("self.action != 'Throttle' || has(self.maxRequestsPerMinute)",
            "a Throttle step needs maxRequestsPerMinute"),
    ]}}

    at: int = Field(ge=1, le=100, description="Percent of a window's limit at which this step applies.")
    action: Action = Field(
        description="Alert (record, metric, Event), Throttle (delay calls to a rate), Downgrade (rewrite the "
        "model through modelMap) or Block (429 until the window resets)."
    )
    max_requests_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Throttle rate per pod, for Throttle steps."
    )
    model_map: dict[str, str] | None = Field(
        default=None, max_length=64,
        description="Model to use instead, keyed by the model asked for (e.g. qwen-max: qwen-flash).",
    )

    @model_validator(mode="after")
    def _action_fields(self) -> LadderStep:
        if self.action is Action.DOWNGRADE and not self.model_map:
            raise ValueError("a Downgrade step needs a non-empty modelMap")
        if self.action is Action.THROTTLE and self.max_requests_per_minute is None:
            raise ValueError("a Throttle step needs maxRequestsPerMinute")
        return self


class PriceTier(ApiModel):
    """A context-size price tier: these prices apply to calls whose input exceeds aboveInputTokens."""

    above_input_tokens: int = Field(ge=1, le=100_000_000, description="Input size above which this tier applies.")
    input_per_million: Money = Field(description="USD per million input tokens in this tier.")
    output_per_million: Money = Field(description="USD per million output tokens in this tier.")


class ModelPrice(ApiModel):
    """A price override for a model the catalog does not know or prices differently for you."""

    model: str = Field(min_length=1, max_length=253, description="Model id exactly as the app sends it.")
    input_per_million: Money = Field(description="USD per million input tokens (uncached).")
    output_per_million: Money = Field(description="USD per million output tokens, reasoning included.")
    cached_input_per_million: Money | None = Field(
        default=None, description="USD per million cached input tokens; defaults to the input price."
    )
    cache_write_per_million: Money | None = Field(
        default=None, description="USD per million tokens written to the prompt cache; defaults to input."
    )
    tiers: list[PriceTier] | None = Field(
        default=None, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["aboveInputTokens"]},
        description="Higher prices for long contexts (e.g. above 200K input tokens).",
    )


class Models(ApiModel):
    """Which models may be called, and prices for those the catalog lacks."""

    allow: list[str] | None = Field(
        default=None, max_length=256,
        description="If set, only these models may be called (shell-style wildcards allowed, e.g. gpt-5*).",
    )
    prices: list[ModelPrice] | None = Field(
        default=None, max_length=256,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["model"]},
        description="Per-model price overrides; they win over the built-in catalog.",
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the budget's namespace."""

    name: Name = Field(description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class Upstream(ApiModel):
    """A provider endpoint the sidecar forwards to; apps address it as /<name>/... on the sidecar."""

    name: Name = Field(description="Path prefix on the sidecar, e.g. openai for http://127.0.0.1:8787/openai/v1.")
    base_url: str = Field(
        alias="baseURL", pattern=HTTP_URL_PATTERN, max_length=2048,
        description="Provider base URL without the API version, e.g. https://api.openai.com.",
    )
    dialect: Dialect = Field(
        description="Wire format spoken by the provider: OpenAI, Anthropic, Gemini or AzureOpenAI (base URL: the "
        "resource endpoint, e.g. https://my-resource.openai.azure.com).")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="If set, the sidecar injects this key and the app never holds it.",
    )
    deployments: dict[str, str] | None = Field(
        default=None, max_length=256,
        description="AzureOpenAI: deployment name -> the model it serves, so calls are priced as that model "
        "(limits and records name the deployment, as the app does).",
    )


class TokenBudgetSpec(ApiModel):
    """The budget a platform team declares for the pods its selector matches."""

    model_config = {"json_schema_extra": {CEL: [
        cel("!has(self.ladder) || self.ladder.map(s, s.at).isSorted()",
            "ladder steps must be in ascending order of at", ".ladder"),
    ]}}

    selector: LabelSelector = Field(description="Pods (in this namespace) the budget applies to.")
    enforcement: Enforcement = Field(
        default=Enforcement.ENFORCE,
        description="Enforce, or DryRun: block, rewrite and delay nothing but record what would have happened "
                    "(status.dryRun); a DryRun budget's windows count only the calls enforcement would have let "
                    "through.",
    )
    time_zone: str = Field(
        default="UTC", pattern=TIME_ZONE_PATTERN, max_length=64,
        description="IANA time zone of the calendar windows, e.g. Australia/Sydney.",
    )
    user_header: str = Field(
        default=names.USER_HEADER, pattern=HEADER_NAME_PATTERN,
        description="Request header naming the end user for per-User limits (else the OpenAI user field).",
    )
    user_label: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_-]*$",
        description="Gemini request label (labels in the body, GenerateContentConfig.labels in google-genai) "
        "naming the end user for per-User limits when no user header is sent; unset: labels are not read.",
    )
    request: RequestCaps | None = Field(default=None, description="Per-call caps.")
    limits: list[Limit] | None = Field(
        default=None, max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Budget windows; every one applies, and the first to run out stops the call.",
    )
    concurrency: Concurrency | None = Field(default=None, description="Caps on calls in flight.")
    ladder: list[LadderStep] | None = Field(
        default=None, max_length=16,
        description="Graduated actions by percent of the fullest window, e.g. Alert 50, Throttle 80, "
        "Downgrade 85, Block 95.",
    )
    hysteresis_percent: int = Field(
        default=2, ge=0, le=20,
        description="A step is left only when use falls this many points below its threshold (no flapping).",
    )
    models: Models | None = Field(default=None, description="Allowed models and price overrides.")
    upstreams: list[Upstream] | None = Field(
        default=None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Providers the sidecar forwards to; by default openai, anthropic and gemini at their "
        "public endpoints.",
    )
    on_disconnect: OnDisconnect = Field(
        default=OnDisconnect.DRAIN,
        description="When the app hangs up mid-stream: Drain (read on for the real usage) or Cut (close "
        "upstream, estimate what was generated).",
    )
    fail_mode: FailMode = Field(
        default=FailMode.CLOSED,
        description="When the shared budget cannot be checked (lease expired, operator away): Open admits, "
        "Closed refuses.",
    )
    unmetered_routes: UnmeteredRoutes = Field(
        default=UnmeteredRoutes.ALLOW,
        description="Calls to provider routes whose answers report no usage (file uploads, batch creation; "
        "reads are always allowed): Allow forwards and records them as unmetered, Deny answers 403 in the "
        "provider's shape naming the route.",
    )
    insights: InsightsSpec | None = Field(
        default=None, description="Waste insights: an app's conversation header and the thresholds above "
        "which the Waste condition turns True.")
    notifications: list[NotificationTarget] | None = Field(
        default=None, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Webhooks the operator tells of stage changes and end-of-period summaries (URLs in the "
        "Secret tokenbudget-notifications).",
    )

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, value: str) -> str:
        if value != "UTC":
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"{value!r} is not an IANA time zone") from exc
        return value

    @field_validator("ladder")
    @classmethod
    def _ascending(cls, value: list[LadderStep] | None) -> list[LadderStep] | None:
        if value and [s.at for s in value] != sorted(s.at for s in value):
            raise ValueError("ladder steps must be in ascending order of at")
        return value

    @field_validator("limits")
    @classmethod
    def _unique_names(cls, value: list[Limit] | None) -> list[Limit] | None:
        seen = [lim.name for lim in value or []]
        if len(seen) != len(set(seen)):
            raise ValueError("limit names must be unique")
        return value

    @field_validator("notifications")
    @classmethod
    def _unique_targets(cls, value: list[NotificationTarget] | None) -> list[NotificationTarget] | None:
        seen = [t.name for t in value or []]
        if len(seen) != len(set(seen)):
            raise ValueError("notification target names must be unique")
        return value


# ----- status -----------------------------------------------------------------------------------------


class Stage(StrEnum):
    NORMAL = "Normal"
    ALERT = "Alert"
    THROTTLE = "Throttle"
    DOWNGRADE = "Downgrade"
    BLOCK = "Block"


class Unit(StrEnum):
    TOKENS = "Tokens"
    USD = "USD"
    REQUESTS = "Requests"


class WindowStatus(ApiModel):
    """Use of one window (or one key of a per-User/per-Model window) in its current period."""

    name: str = Field(description="The limit's name.")
    key: str | None = Field(default=None, description="User or model, for per-key limits.")
    unit: Unit = Field(description="Tokens, USD or Requests.")
    used: str = Field(description="Spent so far in this period, as a decimal string.")
    limit: str = Field(description="The limit, as a decimal string.")
    percent: Percent = Field(description="used / limit, rounded down, capped at 100.")
    remaining: str | None = Field(
        default=None, description="limit - used in this period, never below 0, as a decimal string in the unit.")
    resets_at: dt.datetime | None = Field(default=None, description="When the current period ends.")


class Consumer(ApiModel):
    """One of the largest consumers in the current periods."""

    kind: str = Field(description="Pod or User.")
    name: str = Field(description="Pod name or user id.")
    tokens: int = Field(ge=0, description="Tokens used.")
    cost_usd: Money = Field(alias="costUSD", description="Dollars spent.")


class WouldHave(ApiModel):
    """In DryRun, what enforcement would have done."""

    action: str = Field(description="Reject, Block, Throttle, Downgrade or Clamp.")
    count: int = Field(ge=0, description="Calls affected.")
    tokens: int = Field(ge=0, description="Tokens those calls used.")
    cost_usd: Money = Field(alias="costUSD", description="Dollars those calls cost.")


class PodCounts(ApiModel):
    """How many selected pods enforce the current generation."""

    selected: int = Field(ge=0, description="Pods the selector matches that have a sidecar.")
    synced: int = Field(ge=0, description="Of those, pods whose sidecar applied the current policy.")
    without_sidecar: int | None = Field(
        default=None, ge=0,
        description="Pods the selector matches that run without the sidecar, unmetered (created before the "
        "namespace opted in, admitted while the webhook was down, or opted out).")
    without_sidecar_pods: list[str] | None = Field(
        default=None, max_length=10, description="The first of those pods by name (at most 10).")


class TokenBudgetStatus(ApiModel):
    """What the operator observed; written by the operator only, at most once per budget every few seconds."""

    observed_generation: int | None = Field(default=None, ge=0, description="Generation last acted on.")
    conditions: list[Condition] | None = Field(
        default=None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Synced, LadderStage, Exhausted; Ready summarizes.",
    )
    stage: Stage | None = Field(default=None, description="Ladder stage in force: Normal, Alert, Throttle, "
                                "Downgrade or Block.")
    used_percent: Percent | None = Field(default=None, description="Percent used of the fullest window.")
    tightest_window: str | None = Field(default=None, description="Name of the fullest window.")
    windows: list[WindowStatus] | None = Field(default=None, max_length=256, description="Use per window.")
    top_consumers: list[Consumer] | None = Field(default=None, max_length=20, description="Largest consumers.")
    dry_run: list[WouldHave] | None = Field(default=None, max_length=16, description="DryRun decisions.")
    pods: PodCounts | None = Field(default=None, description="Selected and synced pods.")
    insights: InsightsStatus | None = Field(default=None, description="Waste over the last day, with dollars.")
    notifications: list[NotificationStatus] | None = Field(
        default=None, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Per notification target, what was delivered (so nothing is sent twice across restarts).")
    last_updated: dt.datetime | None = Field(default=None, description="When status was last written.")


class TokenBudget(ApiModel):
    """A hard, observable token and dollar budget on the LLM traffic of the pods it selects."""

    api_version: str = Field(default=names.API_VERSION, description="tokenbudget.io/v1alpha1")
    kind: str = Field(default=names.TOKENBUDGET_KIND, description="TokenBudget")
    metadata: dict[str, object] = Field(default_factory=dict, description="Standard object metadata.")
    spec: TokenBudgetSpec = Field(description="The budget.")
    status: TokenBudgetStatus | None = Field(default=None, description="What the operator observed.")


TOKEN_BUDGET_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Ladder stage in force"},
    {"name": "Used%", "type": "integer", "jsonPath": ".status.usedPercent",
     "description": "Percent used of the fullest window"},
    {"name": "Window", "type": "string", "jsonPath": ".status.tightestWindow",
     "description": "Name of the fullest window"},
    {"name": "Synced", "type": "integer", "jsonPath": ".status.pods.synced", "description": "Pods in sync"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.enforcement", "priority": 1},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

