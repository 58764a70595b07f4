#!/usr/bin/env python3
"""What per-call waste features cost (features.py): the hot path's extra work per call, and record bytes.

Workloads, each a sequence of chat bodies fed to `FeatureMemory.observe` then `settle` (what the proxy
does per call), against the tiktoken prompt count the proxy already does for admission (the baseline):

- `growing`: conversations of 20 turns over a 1,200-token system prompt (each turn re-sends the history:
  only the new messages are tokenized, the rest is hashed and looked up);
- `fresh`: single-turn calls with new 300-token questions (everything new: the worst case);
- `large`: one 60,000-token tool result per call, new each time.

Prints µs per call (median, p99), the ratio to the prompt count alone, and the JSON bytes features add to
a record. Asserts nothing. Run: `.venv/bin/python benchmarks/features_cost.py [--calls 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.dialects import DIALECTS
from tokenbudget_sidecar.features import FeatureMemory
from tokenbudget_sidecar.pricing import PriceBook

OPENAI = DIALECTS[next(iter(DIALECTS))]  # OpenAI
SYSTEM = {"role": "system", "content": "You answer for the platform team." + " here" * 1200}


def growing(calls: int) -> Iterator[dict[str, Any]]:
    n = 0
    while True:
        history: list[dict[str, Any]] = [SYSTEM]
        for turn in range(20):
            history.append({"role": "user", "content": f"question {n} turn {turn} " + "word " * 40})
            yield {"model": "gpt-4o", "messages": list(history)}
            history.append({"role": "assistant", "content": f"answer {n} {turn} " + "reply " * 80})
            n += 1
            if n >= calls:
                return


def fresh(calls: int) -> Iterator[dict[str, Any]]:
    for n in range(calls):
        yield {"model": "gpt-4o", "messages": [SYSTEM, {"role": "user", "content": f"q{n} " + "token " * 300}]}


def large(calls: int) -> Iterator[dict[str, Any]]:
    for n in range(calls):
        result = {"role": "tool", "tool_call_id": "c", "content": f"r{n} " + "row " * 60_000}
        yield {"model": "gpt-4o", "messages": [{"role": "user", "content": "summarize"}, result]}


async def measure(bodies: list[dict[str, Any]]) -> tuple[list[float], list[float], int]:
    counter = tokens.TokenCounter(32 * 1024, 4 * 1024 * 1024)
    memory = FeatureMemory()
    prices = PriceBook([])
    base, extra, size = [], [], 0
    for i, body in enumerate(bodies):
        t0 = time.perf_counter()
        prompt = OPENAI.prompt(body)
        estimate, _ = await counter.count("gpt-4o", prompt.texts, prompt.messages)
        t1 = time.perf_counter()
        pending = memory.observe("chat", "gpt-4o", body, {})
        record = UsageRecord(request_id=str(i), time=dt.datetime.now(dt.UTC), upstream="openai", dialect="openai",
                             operation="chat", model="gpt-4o", usage=Usage(input_tokens=estimate, output_tokens=10),
                             response_id=f"resp-{i}")
        memory.settle(pending, record, prices, "https://api.openai.com")
        t2 = time.perf_counter()
        base.append(t1 - t0)
        extra.append(t2 - t1)
        assert record.features is not None
        size += len(json.dumps(record.features.model_dump(mode="json")))
    return base, extra, size // max(len(bodies), 1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    tokens.preload()
    print(f"{'workload':10} {'calls':>6} {'count p50 µs':>13} {'features p50 µs':>16} {'features p99 µs':>16} "
          f"{'ratio':>6} {'record +B':>10}")
    for name, gen, calls in (("growing", growing, args.calls), ("fresh", fresh, args.calls),
                             ("large", large, max(args.calls // 50, 10))):
        base, extra, size = asyncio.run(measure(list(gen(calls))))
        ratio = statistics.median(extra) / statistics.median(base)
        print(f"{name:10} {calls:>6} {pct(base, 0.5):>13.0f} {pct(extra, 0.5):>16.0f} {pct(extra, 0.99):>16.0f} "
              f"{ratio:>6.2f} {size:>10}")


if __name__ == "__main__":
    main()
