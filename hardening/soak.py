"""`make soak`: the sidecar under 80 % of its measured maximum rate for a while (10 minutes by default).

A real sidecar process (ledger on disk, admin token) in front of the test upstream process, both on
loopback. First its maximum rate is measured (closed loop, 32 clients, no budget); then a budget with a
request limit over a rolling minute a little under the offered load is pushed (so a tenth of the calls
are refused, steadily, as the window rolls), and calls are offered at 80 % of that maximum: mixed streamed and plain,
OpenAI and Anthropic routes. An operator stand-in pulls and acknowledges usage every second.

Sampled every 5 s: RSS, open file descriptors, ledger bytes and segments; every 100 ms: the latency of
`/healthz` on the admin port, which runs on the same event loop as the data path (its p99 is the event
loop's lag, plus a loopback round trip). Exits non-zero when, after warm-up, RSS grew by more than 10 %,
the fd count grew, any call failed (a 5xx, a reset, a 200 that did not end), the pulled records do not
match the calls made, or the ledger did not compact (more than two segments' worth on disk at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rig import (
    TOKEN,
    Puller,
    Tally,
    call,
    dir_bytes,
    open_fds,
    policy,
    rss_kib,
    sidecar_env,
    upstream_process,
)
from sidecar_process import sidecar_process  # type: ignore[import-not-found]

from tokenbudget_api.policy import SidecarPolicy

SEGMENT_BYTES = 1 << 20  # the ledger's default segment size (ledger.py)
WORKERS = 48  # clients (connections); the maximum rate is measured with 32
LOADED = 'tokenbudget_tokenizer_available{encoding="o200k_base"} 1.0'
SHED_S = 1.0  # a slot this late is skipped rather than sent (the achieved rate is reported)


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    ledger_bytes: int
    segments: int


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    shed: int = 0
    tokenizer_at: float | None = None  # when the sidecar had loaded o200k_base (lazily, at its first need)


async def max_rate(session: aiohttp.ClientSession, sidecar: str, seconds: float) -> float:
    tally = Tally()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.monotonic() < deadline:
            await call(session, sidecar, next(counter), tally)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(32)))
    if tally.errors:
        raise SystemExit(f"calls failed while measuring the maximum rate: {tally.error_samples}")
    return tally.ok / (time.monotonic() - began)


async def offer(session: aiohttp.ClientSession, sidecar: str, rate: float, seconds: float, run: Run) -> None:
    """Calls on a fixed schedule (one every 1/rate s) by WORKERS clients: a call starts at its slot, or as
    soon as a client is free; a slot more than SHED_S late is skipped (counted as shed), so the run ends on
    time even when the machine cannot give the sidecar what it measured at first (2 shared cores)."""
    began = time.monotonic()
    slots = iter(range(int(rate * seconds)))

    async def worker() -> None:
        for n in slots:
            delay = began + n / rate - time.monotonic()
            if delay < -SHED_S:
                run.shed += 1
                continue
            if delay > 0:
                await asyncio.sleep(delay)
            await call(session, sidecar, n, run.tally)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


def snapshot(pid: int, ledger: Path, t: float) -> Sample:
    """One sample (a few /proc and directory reads: well under a millisecond)."""
    return Sample(t, rss_kib(pid), open_fds(pid), dir_bytes(ledger), len(list(ledger.glob("usage-*.jsonl"))))


async def sample(pid: int, ledger: Path, run: Run, stop: asyncio.Event, began: float,
                 session: aiohttp.ClientSession, admin: str) -> None:
    while not stop.is_set():
        run.samples.append(snapshot(pid, ledger, time.monotonic() - began))
        if run.tokenizer_at is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{admin}/metrics") as resp:
                    if LOADED in await resp.text():
                        run.tokenizer_at = time.monotonic() - began
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


async def probe_lag(session: aiohttp.ClientSession, admin: str, run: Run, stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.perf_counter()
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{admin}/healthz") as resp:
                await resp.read()
            run.lags.append(time.perf_counter() - began)
        await asyncio.sleep(0.1)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    return float(statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60)


async def soak(minutes: float, probe_s: float, work: Path) -> int:
    ledger = work / "ledger"
    with upstream_process(work / "upstream.log") as up, sidecar_process(
            work, SidecarPolicy.model_validate(policy(up.url)), env=sidecar_env(work), ledger_dir=ledger) as sc:
        pid = sc.proc.pid
        connector = aiohttp.TCPConnector(limit=WORKERS + 8)
        async with aiohttp.ClientSession(connector=connector) as session, aiohttp.ClientSession() as admin:
            measured = await max_rate(session, sc.data, probe_s)
            rate = 0.8 * measured
            seconds = minutes * 60
            rpm = max(1, int(rate * min(60.0, seconds) * 0.9))  # each minute's last tenth is refused
            puller = Puller(sc.admin)
            await puller.pull(admin)  # the probe's records
            probe_records = puller.records
            async with admin.put(f"{sc.admin}/policy", json=policy(up.url, requests_per_minute=rpm, version="soak"),
                                 headers={"authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200, await resp.text()
            print(f"maximum rate {measured:.0f} calls/s; offering {rate:.0f}/s for {seconds:.0f} s; "
                  f"budget {rpm} requests per minute", flush=True)
            run, stop, began = Run(), asyncio.Event(), time.monotonic()
            background = [asyncio.create_task(sample(pid, ledger, run, stop, began, admin, sc.admin)),
                          asyncio.create_task(probe_lag(admin, sc.admin, run, stop)),
                          asyncio.create_task(puller.loop(admin, 1.0, stop))]
            await offer(session, sc.data, rate, seconds, run)
            await asyncio.sleep(1.5)  # settle, let the last records reach the ledger
            stop.set()
            await asyncio.gather(*background)
            await puller.pull(admin)
            run.samples.append(snapshot(pid, ledger, time.monotonic() - began))
        alive = sc.proc.poll() is None
    return verdict(run, puller.records - probe_records, seconds, alive, rate)


MIN_TREND_S = 120.0  # shorter runs still check errors, records, fds and the ledger, not memory


def verdict(run: Run, records: int, seconds: float, alive: bool, offered: float) -> int:
    # Warm-up: a fifth of the run (5-60 s), and past the lazy load of the tokenizer (~74 MiB once, when a
    # decision first needs an exact count: a step, not a leak).
    warm = max(5.0, min(60.0, seconds * 0.2), (run.tokenizer_at or 0.0) + 5.0)
    after = [s for s in run.samples if s.t >= warm] or run.samples[-1:]
    head, tail = after[:3], after[-3:]
    base_rss = statistics.median(s.rss_kib for s in head)
    end_rss = statistics.median(s.rss_kib for s in tail)
    growth = end_rss / base_rss - 1
    base_fds = max(s.fds for s in head)
    end_fds = statistics.median(s.fds for s in tail)
    lags = sorted(run.lags) or [0.0]
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    end = run.samples[-1]
    t = run.tally
    figures = {
        "seconds": round(seconds), "tokenizer_loaded_at_s": run.tokenizer_at,
        "offered_per_s": round(offered, 1), "achieved_per_s": round(t.calls / seconds, 1),
        "shed": run.shed, "calls": t.calls, "ok": t.ok,
        "refused": t.refused, "errors": t.errors,
        "records_pulled": records, "rss_mib_after_warmup": round(base_rss / 1024, 1),
        "rss_mib_end": round(end_rss / 1024, 1), "rss_growth_percent": round(growth * 100, 2),
        "rss_slope_kib_per_min": round(slope_per_min([(s.t, s.rss_kib) for s in after]), 1),
        "fds_after_warmup": base_fds, "fds_end": end_fds, "ledger_bytes_end": end.ledger_bytes,
        "ledger_segments_end": end.segments, "ledger_bytes_max": max(s.ledger_bytes for s in run.samples),
        "loop_lag_p50_ms": round(lags[len(lags) // 2] * 1000, 2), "loop_lag_p99_ms": round(p99 * 1000, 2),
        "call_latency_p99_ms": round(sorted(t.latencies)[int(len(t.latencies) * 0.99)] * 1000, 1) if t.latencies
        else 0,
    }
    print(json.dumps(figures, indent=1))
    broken = []
    if not alive:
        broken.append("the sidecar died")
    if seconds < MIN_TREND_S:  # the suite's short pass: seconds of warm allocator growth are no trend
        print(f"NOTE: RSS not judged on a run shorter than {MIN_TREND_S:.0f} s (grew {growth:.1%} after warm-up)")
    elif growth > 0.10:
        broken.append(f"RSS grew {growth:.1%} after warm-up (bound 10 %)")
    if end_fds > base_fds:
        broken.append(f"open fds grew from {base_fds} to {end_fds}")
    if t.errors:
        broken.append(f"{t.errors} calls failed, e.g. {t.error_samples[:3]}")
    if records != t.ok + t.refused:
        broken.append(f"{records} records pulled for {t.ok + t.refused} calls answered")
    if end.ledger_bytes > 2 * SEGMENT_BYTES or end.segments > 2:
        broken.append(f"the ledger did not compact: {end.ledger_bytes} bytes in {end.segments} segments")
    if t.calls < 0.9 * offered * seconds:
        print(f"NOTE: the machine gave less than asked: {t.calls / seconds:.0f} calls/s achieved of {offered:.0f}")
    for line in broken:
        print(f"BROKEN: {line}")
    print("soak: " + ("FAILED" if broken else "ok"))
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to offer load (default 10)")
    parser.add_argument("--probe-seconds", type=float, default=10.0, help="how long to measure the maximum rate")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tokenbudget-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the processes started here are stopped
    return asyncio.run(soak(args.minutes, args.probe_seconds, work))


if __name__ == "__main__":
    sys.exit(main())
