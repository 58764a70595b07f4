#!/usr/bin/env python3
"""What the crash intent costs each call (intents.py): the hot path's extra work, and the latency it adds.

Two measurements, on a real ledger directory (a temp dir on the work disk):

1. The hot path alone, per call: building the intent (a record copy priced with the catalog) and
   appending its line (`UsageLog.intend`), then the call's own record (`UsageLog.append`, which closes the
   intent); against the record alone. Also the bytes per call on disk and the fsyncs (the group commit
   takes the intents in, so fsyncs per call should not change).
2. End to end, in-process: the sidecar (create_app, ledger on) in front of the test upstream, one aiohttp
   client sending plain chat calls one at a time; rounds alternate "intents on" and "intents off" (the
   proxy's intent step replaced by a no-op), so drifts on this shared machine hit both alike.

Prints figures; asserts nothing. Run: `.venv/bin/python benchmarks/intent_cost.py [--calls 20000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_sidecar import intents, proxy
from tokenbudget_sidecar.app import create_app, create_state
from tokenbudget_sidecar.dialects import Call
from tokenbudget_sidecar.ledger import Ledger
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.usage_log import UsageLog
from tokenbudget_testing.upstream.app import serve_in_thread

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def admitted(i: int) -> UsageRecord:
    return UsageRecord(request_id=f"req-{i:08d}", time=NOW, upstream="openai", dialect="openai", operation="chat",
                       model="gpt-4o-mini", user=f"user-{i % 50}", prompt_estimate=120,
                       decisions=["team/a:Clamp"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hot_path(calls: int) -> None:
    prices = PriceBook([])
    call = Call("chat", "gpt-4o-mini", output_cap=256)
    for label, with_intent in (("record only", False), ("intent + record", True), ("record only", False),
                               ("intent + record", True)):
        with tempfile.TemporaryDirectory() as tmp:
            log = UsageLog(Ledger(Path(tmp)))
            assert log.ledger is not None
            per: list[float] = []
            started = time.perf_counter()
            for i in range(calls):
                rec = admitted(i)
                t0 = time.perf_counter()
                if with_intent:
                    log.intend(intents.interrupted_record(rec, call, default_output_tokens=4096,
                                                          budgets=["team/a"], decisions=rec.decisions,
                                                          prices=prices, base_url="https://api.openai.com/v1"))
                rec.usage = Usage(input_tokens=118, output_tokens=40)
                log.append(rec)
                per.append(time.perf_counter() - t0)
            total = time.perf_counter() - started
            log.ledger.sync(timeout=30)
            size = log.ledger.disk_bytes()
            fsyncs = log.ledger.fsync_count
            log.close()
        print(f"  {label:16} mean {statistics.fmean(per) * 1e6:6.1f} µs  p50 {pct(per, .5) * 1e6:6.1f} µs  "
              f"p99 {pct(per, .99) * 1e6:6.1f} µs  {size / calls:5.0f} B/call on disk  {fsyncs} fsyncs "
              f"({total:.2f} s for {calls} calls)")


def serve(app: web.Application) -> tuple[str, threading.Event, threading.Thread]:
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), threading.Event()
    url: list[str] = []

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        ready.set()
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    return url[0], stop, thread


async def rounds(base: str, n_rounds: int, per_round: int) -> dict[bool, list[float]]:
    body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Count to three."}]}).encode()
    real = proxy.intents
    off = types.SimpleNamespace(interrupted_record=lambda *a, **k: None)
    out: dict[bool, list[float]] = {True: [], False: []}
    async with aiohttp.ClientSession() as http:
        for r in range(n_rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                proxy.intents = real if on else off  # type: ignore[assignment]
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    async with http.post(f"{base}/openai/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"}) as resp:
                        await resp.read()
                    out[on].append(time.perf_counter() - t0)
    proxy.intents = real
    return out


def end_to_end(n_rounds: int, per_round: int) -> None:
    with serve_in_thread() as upstream, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_port=0, admin_port=0, ledger_dir=Path(tmp), log_level="WARNING")
        policy = SidecarPolicy.model_validate({"upstreams": [{"name": "openai", "baseURL": upstream,
                                                              "dialect": "OpenAI"}]})
        state = create_state(settings, policy)
        real_intend = state.usage_log.intend

        def intend(record: Any) -> None:
            if record is not None:
                real_intend(record)

        state.usage_log.intend = intend  # type: ignore[method-assign]
        base, stop, thread = serve(create_app(settings, state))
        try:
            out = asyncio.run(rounds(base, n_rounds, per_round))
        finally:
            stop.set()
            thread.join(15)
    on, off = out[True], out[False]
    for label, values in (("intents on", on), ("intents off", off)):
        print(f"  {label:12} p50 {pct(values, .5) * 1e3:6.3f} ms  p99 {pct(values, .99) * 1e3:6.3f} ms  "
              f"({len(values)} calls)")
    print(f"  added by the intent: p50 {(pct(on, .5) - pct(off, .5)) * 1e6:+.0f} µs, "
          f"p99 {(pct(on, .99) - pct(off, .99)) * 1e6:+.0f} µs (noise on a shared 2-core machine is tens of µs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="hot-path calls per variant")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=200)
    args = parser.parse_args()
    print(f"hot path, {args.calls} calls per variant (ledger on disk, group commit 50 ms):")
    hot_path(args.calls)
    print(f"end to end, {args.rounds} rounds x {args.per_round} plain chat calls per variant, one at a time:")
    end_to_end(args.rounds, args.per_round)


if __name__ == "__main__":
    main()
