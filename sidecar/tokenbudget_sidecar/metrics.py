"""Prometheus metrics, named after the OpenTelemetry GenAI conventions where one exists.

Each app gets its own registry so several sidecars can live in one process (tests, benchmarks).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar.tokens import TOKENIZER, TokenizerCollector

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.interrupted = Counter("tokenbudget_interrupted_calls", "Calls in flight when the sidecar last died, "
                                   "recorded at its start from their intents (estimated).", ["provider"],
                                   registry=r)
        self.lease_starved = Counter(
            "tokenbudget_lease_starved_calls", "Calls refused because this pod's lease grant was spent (or missing "
            "for the period) while the budget had room, after waiting for a push: lease rounds are not keeping up.",
            ["budget"], registry=r)
        self.in_flight = Gauge("tokenbudget_in_flight", "Calls in flight.", ["provider"], registry=r)
        r.register(TokenizerCollector(TOKENIZER))

    def observe(self, rec: UsageRecord) -> None:
        labels = (rec.model, rec.dialect)
        self.requests.labels(rec.dialect, rec.model, rec.outcome.value).inc()
        if rec.interrupted:
            self.interrupted.labels(rec.dialect).inc()
        self.operation_duration.labels(rec.operation, *labels).observe(rec.duration_ms / 1000)
        u = rec.usage
        if u.total_tokens:
            self.token_usage.labels("input", *labels).observe(u.input_tokens)
            self.token_usage.labels("output", *labels).observe(u.output_tokens)
            for kind, value in (("input", u.input_tokens), ("cached_input", u.cached_input_tokens),
                                ("cache_creation_input", u.cache_creation_input_tokens),
                                ("output", u.output_tokens), ("reasoning", u.reasoning_tokens)):
                if value:
                    self.tokens.labels(kind, *labels, rec.source.value).inc(value)
            if rec.cost_usd is None:
                self.unpriced.labels(*labels).inc()
            else:
                self.cost.labels(*labels).inc(float(rec.cost_usd))
