"""ThinkTier in the sidecar: size each reasoning call's thinking budget by its class, and learn better ones.

Modules, in the order a call meets them:

- `classify`: class and tier from trusted inputs (class header, path, model, prompt size), never prompt
  text; Required tiers only with the pod's authorization.
- `providers`: the tier's budget written as each provider's own knob, never a combination it rejects.
- `measure`: thinking tokens, truncation and thinking-only truncation of a settled call.
- `sketch` / `stats`: per-class streaming quantiles, recommendations, conditions, the admin snapshot.
- `engine`: `Thinking.apply` (before admission) and `Thinking.observe` (at settle), the proxy's two calls.
"""

from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinking_stats import UNCLASSIFIED, recommend, round_budget
from tokenbudget_sidecar.thinking.classify import Classification, Inputs, classify
from tokenbudget_sidecar.thinking.engine import Decision, Thinking, ThinkingMetrics
from tokenbudget_sidecar.thinking.measure import Measurement, measure
from tokenbudget_sidecar.thinking.providers import Family, Rewrite, Target, effort_for, family, rewrite

__all__ = [
    "UNCLASSIFIED",
    "Classification",
    "Decision",
    "Family",
    "Inputs",
    "LogHistogram",
    "Measurement",
    "Rewrite",
    "Target",
    "Thinking",
    "ThinkingMetrics",
    "classify",
    "effort_for",
    "family",
    "measure",
    "recommend",
    "rewrite",
    "round_budget",
]
