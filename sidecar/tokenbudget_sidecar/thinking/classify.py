"""Which class, and so which tier, a call belongs to, from trusted inputs only.

The inputs are the class header (set by the app's code, not by its users), the request path, the model
and the prompt's size as tiktoken counted it. The prompt's *text* is deliberately not an input: a
`Inputs` value cannot carry it, so "think harder, use the max budget" typed by a user can never move a
call to a bigger tier. Required tiers are granted only when the pod's policy lists them in
`authorizedTiers`, which the operator derives from the pod's annotation, never from a request header.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tokenbudget_api.policy import ThinkTierPolicy
from tokenbudget_api.thinking_stats import UNCLASSIFIED
from tokenbudget_api.thinktier import Authorization, QueryClass, ThinkTierSpec, Tier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """Everything classification may look at. There is intentionally no field for prompt text."""

    header: Mapping[str, str]  # request headers; only each ThinkTier's classHeader is read
    path: str  # the request path on the sidecar, e.g. /openai/v1/chat/completions
    model: str
    prompt_tokens: int  # tiktoken count with framing, computed by the proxy before admission


@dataclass(frozen=True)
class Classification:
    thinktier: str  # namespace/name of the ThinkTier that decided
    klass: str  # class name, or UNCLASSIFIED
    tier: Tier  # the tier in force for this call
    classified: bool
    authorized: bool = False  # a Required tier, granted by the pod's authorization
    denied: str | None = None  # a Required tier this pod is not authorized for (fell back to defaultTier)


@dataclass(frozen=True)
class CompiledClass:
    """A QueryClass with its model patterns compiled once per policy push (fnmatch per call is slow)."""

    name: str
    tier: str
    header_values: frozenset[str] | None
    path_prefix: str | None
    models: re.Pattern[str] | None
    min_prompt_tokens: int | None
    max_prompt_tokens: int | None

    @classmethod
    def of(cls, q: QueryClass) -> CompiledClass:
        m = q.match
        models = None
        if m.models is not None:
            models = re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in m.models) or "(?!)")
        return cls(q.name, q.tier, frozenset(v.strip() for v in m.header_values) if m.header_values is not None
                   else None, m.path_prefix, models, m.min_prompt_tokens, m.max_prompt_tokens)

    def matches(self, header: str | None, inputs: Inputs) -> bool:
        """Every field the class sets must match; a class that sets none matches every call."""
        if self.header_values is not None and (header is None or header.strip() not in self.header_values):
            return False
        if self.path_prefix is not None and not inputs.path.startswith(self.path_prefix):
            return False
        if self.models is not None and not self.models.match(inputs.model.lower()):
            return False
        if self.min_prompt_tokens is not None and inputs.prompt_tokens < self.min_prompt_tokens:
            return False
        return self.max_prompt_tokens is None or inputs.prompt_tokens <= self.max_prompt_tokens


class CompiledThinkTier:
    """One ThinkTier as this pod sees it: its classes in order and the Required tiers it may use."""

    def __init__(self, policy: ThinkTierPolicy) -> None:
        self.policy = policy
        self.key = f"{policy.namespace}/{policy.name}"
        self.spec: ThinkTierSpec = policy.spec
        self.tiers = {t.name: t for t in policy.spec.tiers}
        self.default = self.tiers[policy.spec.default_tier]
        self.classes = [CompiledClass.of(c) for c in policy.spec.classes or []]
        self.authorized = frozenset(policy.authorized_tiers)
        self.applied = dict(policy.applied_budgets or {})  # autoApply: class -> budget instead of its tier's

    def in_force(self, klass: str, tier: Tier) -> Tier:
        """The tier a class's calls run under: with an applied budget (autoApply), that budget in place of the
        tier's own; the tier's name and authorization stay, so reports still name the declared tier."""
        budget = self.applied.get(klass)
        return tier if budget is None or budget == tier.budget_tokens else tier.model_copy(
            update={"budget_tokens": budget})

    def match(self, inputs: Inputs) -> Classification | None:
        """The first class that matches, with its tier (or defaultTier if not authorized); None: no class."""
        header = inputs.header.get(self.spec.class_header)
        for c in self.classes:
            if c.matches(header, inputs):
                return self._grant(c.name, self.tiers[c.tier])
        return None

    def _grant(self, klass: str, tier: Tier) -> Classification:
        if tier.authorization is not Authorization.REQUIRED:
            return Classification(self.key, klass, self.in_force(klass, tier), classified=True)
        if tier.name in self.authorized:
            log.info("thinktier %s: class %s uses authorized tier %s (%d tokens)", self.key, klass, tier.name,
                     tier.budget_tokens)
            return Classification(self.key, klass, self.in_force(klass, tier), classified=True, authorized=True)
        log.warning("thinktier %s: class %s asks for tier %s, which this pod is not authorized for; "
                    "using default tier %s", self.key, klass, tier.name, self.default.name)
        return Classification(self.key, klass, self.default, classified=True, denied=tier.name)  # never applied

    def unclassified(self) -> Classification:
        return Classification(self.key, UNCLASSIFIED, self.in_force(UNCLASSIFIED, self.default), classified=False)


def classify(thinktiers: list[CompiledThinkTier], inputs: Inputs) -> Classification | None:
    """First ThinkTier (policy order) with a matching class decides; else the first one's defaultTier.

    None only when no ThinkTier selects the pod.
    """
    for tt in thinktiers:
        found = tt.match(inputs)
        if found is not None:
            return found
    return thinktiers[0].unclassified() if thinktiers else None
