"""Prometheus metrics, named after the OpenTelemetry GenAI conventions where one exists.

Each app gets its own registry so several sidecars can live in one process (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar.tokens import TOKENIZER, TokenizerCollector

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        r = self.registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens per call (OTel gen_ai.client.token.usage).",
            ["gen_ai_token_type", "gen_ai_request_model", "gen_ai_provider_name"], buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "Call duration (OTel gen_ai.client.operation.duration).",
            ["gen_ai_operation_name", "gen_ai_request_model", "gen_ai_provider_name"], registry=r,
        )
        self.tokens = Counter(
            "tokenbudget_tokens", "Tokens by type: input, cached_input, cache_creation_input, output, reasoning.",
            ["type", "model", "provider", "source"], registry=r,
        )
        self.cost = Counter("tokenbudget_cost_usd", "Dollars spent.", ["model", "provider"], registry=r)
        self.unpriced = Counter("tokenbudget_unpriced_calls", "Calls to a model with no known price.",
                                ["model", "provider"], registry=r)
        self.requests = Counter("tokenbudget_requests", "Calls by outcome.", ["provider", "model", "outcome"],
                                registry=r)
        self.added_latency = Histogram(
            "tokenbudget_added_latency_seconds",
            "Time the sidecar itself adds: before the upstream request, and after the upstream's last byte.",
            ["provider"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.unmetered = Counter("tokenbudget_unmetered_calls", "Calls forwarded to a route whose answers report "
                                 "no usage (file uploads, batch creation), by route without ids.",
                                 ["provider", "route", "outcome"], registry=r)
        self.interrupted = Counter("tokenbudget_interrupted_calls", "Calls recorded from their intents, estimated: "
                                   "in flight when the sidecar last died (recorded at its start), or background "
                                   "Responses it never saw end (tokenbudget_background_expired_calls).",
                                   ["provider"], registry=r)
        self.background_expired = Counter(
            "tokenbudget_background_expired_calls", "Background Responses recorded estimated because this sidecar "
            "never saw them end: reason expired (TOKENBUDGET_DEFERRAL_TTL_S after the create) or evicted (the "
            "oldest past TOKENBUDGET_MAX_DEFERRALS). Many: the app polls through another pod or uses webhooks.",
            ["provider", "reason"], registry=r)
        self.lease_starved = Counter(
            "tokenbudget_lease_starved_calls", "Calls refused because this pod's lease grant was spent (or missing "
            "for the period) while the budget had room, after waiting for a push: lease rounds are not keeping up.",
            ["budget"], registry=r)
        self.unread_events = Counter(
            "tokenbudget_stream_unread_events", "Stream events relayed to the app whole but too large to read "
            "(sse.MAX_EVENT_BYTES, jsonarray.MAX_ELEMENT_CHARS): usage they carried is missed (estimated when no "
            "other usage came).",
            ["provider"], registry=r)
        self.in_flight = Gauge("tokenbudget_in_flight", "Calls in flight.", ["provider"], registry=r)
        self.sessions = Gauge("tokenbudget_websocket_sessions", "WebSocket sessions open through the sidecar "
                              "(websocket.py): their responses are counted as they report, never held.",
                              ["provider"], registry=r)
        r.register(TokenizerCollector(TOKENIZER))

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once per label set: prometheus_client's own lookup checks and
        converts the values and takes a lock on every call, and a call records into about ten children."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, rec: UsageRecord, added_s: float | None = None) -> None:
        child, model, dialect = self.child, rec.model, rec.dialect
        child(self.requests, dialect, model, rec.outcome.value).inc()
        if rec.interrupted:
            child(self.interrupted, dialect).inc()
        child(self.operation_duration, rec.operation, model, dialect).observe(rec.duration_ms / 1000)
        if added_s is not None:
            child(self.added_latency, dialect).observe(added_s)
        u = rec.usage
        if u.total_tokens:
            child(self.token_usage, "input", model, dialect).observe(u.input_tokens)
            child(self.token_usage, "output", model, dialect).observe(u.output_tokens)
            source = rec.source.value
            for kind, value in (("input", u.input_tokens), ("cached_input", u.cached_input_tokens),
                                ("cache_creation_input", u.cache_creation_input_tokens),
                                ("output", u.output_tokens), ("reasoning", u.reasoning_tokens)):
                if value:
                    child(self.tokens, kind, model, dialect, source).inc(value)
            if rec.cost_usd is None:
                child(self.unpriced, model, dialect).inc()
            else:
                child(self.cost, model, dialect).inc(float(rec.cost_usd))
