"""Invalid TokenBudget and ThinkTier objects, each with the field the rejection must name.

Shared by the pydantic tests (fast, no cluster) and the apiserver tests, so the CRD schema and the
models are held to the same table.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    return loaded


@dataclass(frozen=True)
class Invalid:
    id: str
    base: str
    mutate: Callable[[dict[str, Any]], None]
    field: str  # what the apiserver's message must name
    message: str = ""  # and, for CEL rules, the rule's message

    def build(self) -> dict[str, Any]:
        obj = copy.deepcopy(example(self.base))
        obj["metadata"] = {"name": f"bad-{self.id}", "namespace": "default"}
        self.mutate(obj["spec"])
        return obj


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(spec: dict[str, Any]) -> None:
        node: Any = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return apply


_DELETE = object()
TB = "tokenbudget-team.yaml"
TN = "tokenbudget-notifications.yaml"
TT = "thinktier.yaml"


def _swap_ladder(spec: dict[str, Any]) -> None:
    spec["ladder"][0], spec["ladder"][3] = spec["ladder"][3], spec["ladder"][0]


def _duplicate_limit(spec: dict[str, Any]) -> None:
    spec["limits"].append(copy.deepcopy(spec["limits"][0]))


INVALID: list[Invalid] = [
    Invalid("negative-tokens", TB, _set("limits.0.tokens", -5), "spec.limits[0].tokens"),
    Invalid("ladder-above-100", TB, _set("ladder.3.at", 120), "spec.ladder[3].at"),
    Invalid("ladder-out-of-order", TB, _swap_ladder, "spec.ladder", "ascending order"),
    Invalid("unknown-enforcement", TB, _set("enforcement", "Sometimes"), "spec.enforcement"),
    Invalid("unknown-period", TB, _set("limits.0.period", "Fortnight"), "spec.limits[0].period"),
    Invalid("time-zone-not-iana", TB, _set("timeZone", "GMT+5:30"), "spec.timeZone"),
    Invalid("money-not-decimal", TB, _set("limits.1.costUSD", "12,50"), "spec.limits[1].costUSD"),
    Invalid("money-as-number", TB, _set("limits.1.costUSD", 12.5), "spec.limits[1].costUSD"),
    Invalid("duplicate-limit-name", TB, _duplicate_limit, "spec.limits[3]", "Duplicate value"),
    Invalid("period-and-duration", TB, _set("limits.0.duration", "15m"), "spec.limits[0]",
            "exactly one of period or duration"),
    Invalid("two-units", TB, _set("limits.0.requests", 10), "spec.limits[0]",
            "exactly one of tokens, costUSD or requests"),
    Invalid("duration-not-a-duration", TB, _set("limits.2.duration", "5 minutes"), "spec.limits[2].duration"),
    Invalid("downgrade-without-map", TB, _set("ladder.2.modelMap", _DELETE), "spec.ladder[2]",
            "needs a non-empty modelMap"),
    Invalid("throttle-without-rate", TB, _set("ladder.1.maxRequestsPerMinute", _DELETE), "spec.ladder[1]",
            "needs maxRequestsPerMinute"),
    Invalid("zero-prompt-cap", TB, _set("request.maxPromptTokens", 0), "spec.request.maxPromptTokens"),
    Invalid("unknown-oversize-action", TB, _set("request.onOversize", "Truncate"), "spec.request.onOversize"),
    Invalid("hysteresis-too-wide", TB, _set("hysteresisPercent", 50), "spec.hysteresisPercent"),
    Invalid("upstream-not-a-url", TB, _set("upstreams.0.baseURL", "api.openai.com"), "spec.upstreams[0].baseURL"),
    Invalid("missing-selector", TB, _set("selector", _DELETE), "spec.selector"),
    Invalid("unknown-notification-format", TN, _set("notifications.0.format", "Teams"),
            "spec.notifications[0].format"),
    Invalid("unknown-notification-event", TN, _set("notifications.1.events", ["Hourly"]),
            "spec.notifications[1].events[0]"),
    Invalid("notification-secret-key-with-slash", TN, _set("notifications.0.urlSecretKey", "hooks/slack"),
            "spec.notifications[0].urlSecretKey"),
    Invalid("duplicate-notification-target", TN, _set("notifications.1.name", "team-slack"), "spec.notifications[1]",
            "Duplicate value"),
    Invalid("thinking-below-1024", TT, _set("tiers.0.budgetTokens", 512), "spec.tiers[0].budgetTokens"),
    Invalid("default-tier-unknown", TT, _set("defaultTier", "huge"), "spec.defaultTier", "must name a tier"),
    Invalid("default-tier-needs-authorization", TT, _set("defaultTier", "max"), "spec.defaultTier",
            "must not require authorization"),
    Invalid("class-names-unknown-tier", TT, _set("classes.0.tier", "tiny"), "spec.classes",
            "every class must name a tier"),
    Invalid("effort-thresholds-reversed", TT, _set("openAIEffort.lowUpTo", 20000), "spec.openAIEffort",
            "lowUpTo must be below mediumUpTo"),
    Invalid("percentile-out-of-range", TT, _set("calibration.percentile", 100), "spec.calibration.percentile"),
]
