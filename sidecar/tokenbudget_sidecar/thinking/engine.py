"""ThinkTier in the data path: `apply` before admission, `observe` at settle, `snapshot` for the operator.

`apply` runs after the prompt is counted and before admission, so the reservation admission takes
already covers the output cap raised to fit the thinking budget. It costs a classification (a few
compiled regex and integer comparisons per class) and a rewrite of a handful of JSON fields: tens of
microseconds, far under the 10 ms an allocation may take.
"""

from __future__ import annotations

import logging
import weakref
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from tokenbudget_api.admin import ThinkingAnswer
from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.thinking_stats import ClassStats
from tokenbudget_api.tokenbudget import Enforcement
from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource
from tokenbudget_sidecar.dialects.base import JSON, Call, Dialect, Reading
from tokenbudget_sidecar.thinking.classify import Classification, CompiledThinkTier, Inputs, classify
from tokenbudget_sidecar.thinking.measure import Measurement, measure
from tokenbudget_sidecar.thinking.providers import Family, Rewrite, Target, effort_for, family, restore, rewrite, save
from tokenbudget_sidecar.thinking.stats import ThinkTierStats

log = logging.getLogger(__name__)

DEFAULT_ANSWER_ROOM = 4096
# Families whose provider may bill thinking without reporting it apart (estimate from output - answer).
BREAKDOWN_OPTIONAL = frozenset({Family.ANTHROPIC_ENABLED, Family.ANTHROPIC_ADAPTIVE, Family.OUTPUT_CAP})


@dataclass
class Decision:
    """What ThinkTier decided for one call; the proxy keeps it from `apply` to `observe`."""

    thinktier: str  # namespace/name
    klass: str  # class name or "unclassified"
    tier: str
    budget: int  # the tier's budget (tokens)
    classified: bool
    model: str  # the model the rewrite was written for
    output_cap: int | None  # the call's cap before the rewrite, to undo it (see retarget)
    target: Target
    rewrite: Rewrite
    authorized: bool = False
    denied: str | None = None
    saved: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rewritten(self) -> dict[str, Any]:
        """Dotted request fields written, e.g. {"thinking": {...}, "max_tokens": 9216}."""
        return self.rewrite.changes

    def wire(self) -> dict[str, object]:
        return {"thinkTier": self.thinktier, "class": self.klass, "tier": self.tier, "budgetTokens": self.budget,
                "family": self.rewrite.family.value, "knob": self.rewrite.knob, "budgetInForce": self.rewrite.budget,
                "keptAppSetting": self.rewrite.kept_app_setting, "rewritten": self.rewrite.changes,
                "skipped": self.rewrite.skipped, "authorized": self.authorized, "denied": self.denied}


class ThinkingMetrics:
    """Prometheus series, one set per registry (the state is rebuilt on every policy push; these are not)."""

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ThinkingMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, r: CollectorRegistry) -> None:
        self.calls = Counter("tokenbudget_thinking_calls", "Reasoning calls by ThinkTier class and tier in force.",
                             ["thinktier", "class", "tier"], registry=r)
        self.unclassified = Counter("tokenbudget_thinking_unclassified_calls", "Reasoning calls no class matched.",
                                    ["thinktier"], registry=r)
        self.authorization = Counter(
            "tokenbudget_thinking_authorization", "Calls whose class names a tier that requires authorization, "
            "by result (granted, denied).", ["thinktier", "class", "tier", "result"], registry=r)
        self.tokens = Counter("tokenbudget_thinking_tokens", "Thinking tokens measured, by source (provider, "
                              "estimated).", ["thinktier", "class", "source"], registry=r)
        self.truncations = Counter("tokenbudget_thinking_truncations", "Truncated reasoning calls, by kind (any, "
                                   "thinking_only).", ["thinktier", "class", "kind"], registry=r)
        self.quantile = Gauge("tokenbudget_thinking_tokens_quantile", "Thinking tokens per call at a quantile.",
                              ["thinktier", "class", "quantile"], registry=r)
        self.recommended = Gauge("tokenbudget_thinking_recommended_budget_tokens", "Recommended thinking budget "
                                 "(0 until minSamples).", ["thinktier", "class"], registry=r)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> ThinkingMetrics:
        found = cls._by_registry.get(registry)
        if found is None:
            found = cls._by_registry[registry] = cls(registry)
        return found


def output_ceiling(policy: SidecarPolicy) -> int | None:
    """Smallest request.maxOutputTokens of the enforced budgets: a cap above it would be clamped or refused."""
    caps = [b.spec.request.max_output_tokens for b in policy.budgets
            if b.spec.enforcement is Enforcement.ENFORCE and b.spec.request is not None
            and b.spec.request.max_output_tokens is not None]
    return min(caps) if caps else None


class Thinking:
    """The ThinkTiers that select this pod, and what their classes' calls did."""

    def __init__(self, policy: SidecarPolicy, registry: CollectorRegistry | None = None,
                 answer_room: int = DEFAULT_ANSWER_ROOM) -> None:
        self.thinktiers = [CompiledThinkTier(p) for p in policy.think_tiers]
        self.by_key = {tt.key: tt for tt in self.thinktiers}
        self.stats = {tt.key: ThinkTierStats(tt) for tt in self.thinktiers}
        self.ceiling = output_ceiling(policy)
        self.answer_room = answer_room
        self.skipped: Tally[str] = Tally()  # reasoning-free calls by reason, for the snapshot
        self.metrics = ThinkingMetrics.of(registry) if registry is not None else None

    def adopt(self, old: Thinking) -> None:
        """Keep figures across a policy push (classes whose tier budget changed start afresh)."""
        self.skipped = old.skipped
        for key, stats in self.stats.items():
            if key in old.stats:
                stats.adopt(old.stats[key])

    # --- the two calls the proxy makes -------------------------------------------------------------------

    def apply(self, dialect: Dialect, call: Call, body: JSON, path: str, headers: Mapping[str, str],
              prompt_tokens: int) -> Decision | None:
        """Classify the call and write its tier into `body` (and `call.output_cap`).

        Called after the prompt is counted and before admission. None: no ThinkTier selects the pod, or
        the call cannot reason (embeddings, gpt-4o, Claude 3.5…), and nothing was changed.
        """
        if not self.thinktiers:
            return None
        fam = family(dialect.name, call.operation, call.model)
        if fam is None:
            self.skipped["modelDoesNotReason"] += 1
            return None
        c = classify(self.thinktiers, Inputs(headers, path, call.model, prompt_tokens))
        assert c is not None  # there is at least one ThinkTier
        tt = self.by_key[c.thinktier]
        budget = c.tier.budget_tokens
        target = Target(budget, effort_for(budget, tt.spec.openai_effort), self.answer_room, self.ceiling)
        saved = save(body)
        cap = call.output_cap
        done = rewrite(fam, dialect, call, body, target)
        self.stats[c.thinktier].on_apply(c)
        self._count_apply(c)
        return Decision(c.thinktier, c.klass, c.tier.name, budget, c.classified, call.model, cap, target, done,
                        c.authorized, c.denied, saved)

    def retarget(self, decision: Decision | None, dialect: Dialect, call: Call, body: JSON) -> Decision | None:
        """Redo the rewrite after admission switched the model (Downgrade), e.g. from an adaptive-only Claude to
        an `enabled` one, or to a model that does not reason at all. A no-op when the model is unchanged."""
        if decision is None or call.model == decision.model:
            return decision
        restore(body, decision.saved)
        call.output_cap = decision.output_cap
        fam = family(dialect.name, call.operation, call.model)
        if fam is not None:
            decision.rewrite = rewrite(fam, dialect, call, body, decision.target)
            decision.model = call.model
        ceiling = self.ceiling
        if ceiling is not None and (call.output_cap is None or call.output_cap > ceiling):
            dialect.set_output_cap(call, body, ceiling)  # what admission's clamp had done to the original
        return decision if fam is not None else None

    def observe(self, decision: Decision | None, record: UsageRecord, reading: Reading) -> Measurement | None:
        """Measure a settled call into its class. None when there was nothing to learn from it."""
        if decision is None:
            return None
        stats = self._class(decision)
        if stats is None:
            return None  # the policy changed under the call: its class or budget is gone
        if record.outcome is not Outcome.OK or record.source is UsageSource.NONE:
            stats.not_measured += 1
            return None
        rw = decision.rewrite
        if not rw.thinking:
            stats.thinking_off += 1
            return None
        m = measure(record, reading, thinking_on=True, exact_budget=rw.budget if rw.exact else None,
                    breakdown_optional=rw.family in BREAKDOWN_OPTIONAL)
        stats.add(m)
        self._count_observe(decision, stats, m)
        return m

    # --- reading it back ------------------------------------------------------------------------------------

    def report(self) -> ThinkingAnswer:
        """What GET /thinking serves: per ThinkTier, ClassStatus-shaped classes, conditions, unclassified share."""
        return ThinkingAnswer(think_tiers=[s.report() for s in self.stats.values()], skipped=dict(self.skipped))

    def _class(self, decision: Decision) -> ClassStats | None:
        tts = self.stats.get(decision.thinktier)
        stats = tts.classes.get(decision.klass) if tts is not None else None
        if stats is None or stats.tier.name != decision.tier or stats.budget != decision.budget:
            return None
        return stats

    def _count_apply(self, c: Classification) -> None:
        if self.metrics is None:
            return
        self.metrics.calls.labels(c.thinktier, c.klass, c.tier.name).inc()
        if not c.classified:
            self.metrics.unclassified.labels(c.thinktier).inc()
        if c.authorized:
            self.metrics.authorization.labels(c.thinktier, c.klass, c.tier.name, "granted").inc()
        if c.denied is not None:
            self.metrics.authorization.labels(c.thinktier, c.klass, c.denied, "denied").inc()

    def _count_observe(self, d: Decision, stats: ClassStats, m: Measurement) -> None:
        if self.metrics is None:
            return
        mx = self.metrics
        mx.tokens.labels(d.thinktier, d.klass, "estimated" if m.estimated else "provider").inc(m.thinking_tokens)
        if m.truncated:
            mx.truncations.labels(d.thinktier, d.klass, "any").inc()
        if m.thinking_only:
            mx.truncations.labels(d.thinktier, d.klass, "thinking_only").inc()
        for q in ("0.5", "0.95", "0.99"):
            mx.quantile.labels(d.thinktier, d.klass, q).set(stats.hist.quantile(float(q)) or 0)
        cal = self.stats[d.thinktier].calibration
        mx.recommended.labels(d.thinktier, d.klass).set(stats.recommendation(cal) or 0)
