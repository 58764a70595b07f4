#!/usr/bin/env python3
"""What the sidecar adds to an LLM call: latency, throughput, stream cadence and memory, on loopback.

Run on demand (it asserts nothing and exits 0 whatever the figures are)::

    .venv/bin/python benchmarks/sidecar_latency.py           # full run, a few minutes
    .venv/bin/python benchmarks/sidecar_latency.py --quick   # under a minute, fewer samples
    .venv/bin/python benchmarks/sidecar_latency.py --smoke   # one tiny level per kind: checks it runs, no figures

Three separate processes, as in a pod, so none shares an event loop with another: the test upstream
(``python -m tokenbudget_testing.upstream``), the sidecar (``python -m tokenbudget_sidecar``, configured by
TOKENBUDGET_* variables and a generated standalone policy) and this process, the load generator (an
aiohttp client, not the SDKs, whose own overhead would swamp the figures; it sends the exact body and
headers openai-python sends). When ``nginx`` is installed it is started too, with a generated config in a
temporary directory (foreground, one worker, workers as ``nobody`` when run as root, ``proxy_buffering
off``), as the floor any reverse proxy pays. Everything listens on 127.0.0.1 and everything is stopped at
the end.

Every figure is a comparison with the direct path (load generator → upstream) measured in the same run:
each level runs in rounds, one batch per path per round, the order rotating from round to round, so slow
drifts (other work on the machine) hit every path alike. "Added" is the sidecar's percentile minus the
direct percentile of the same level.

``--profile OUT.prof`` (or TOKENBUDGET_BENCH_PROFILE=OUT.prof) runs the sidecar under ``python -m
cProfile -o OUT.prof`` and prints where its time went; the profiler slows the sidecar down, so the
latency figures of such a run are not the sidecar's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import grp
import itertools
import json
import os
import platform
import pstats
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Literal

import aiohttp

HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
CHAT_OUTPUT_TOKENS = 16  # answer length of the non-streamed calls (the upstream answers at once)
STREAM_CHUNKS = 20  # streamed calls: this many one-token chunks ...
STREAM_CADENCE_MS = 5  # ... this far apart
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Targets: issue 3, item 11 (c=1 p99, RSS under load), tightened by issue 19 (c=1 p50, CPU, RSS at rest).
TARGET_C1_P50_MS = 0.6
TARGET_C1_P99_MS = 3.0
TARGET_C64_P99_MS = 10.0
TARGET_CPU_US = 250.0
TARGET_RSS_MIB = 140.0
TARGET_RSS_REST_MIB = 60.0
# The paths compared with the sidecar, when present: name -> what the report calls it.
OTHERS = {"baseline": "sidecar at baseline", "nginx": "nginx", "floor": "aiohttp floor",
          "floor-ll": "aiohttp floor, low-level server"}

SYSTEM_PROMPT = (
    "You are a concise assistant for an internal engineering help desk. Answer in plain English, cite the "
    "runbook section when one applies, and never invent command-line flags. If you are unsure, say so."
)
USER_PROMPT = (
    "Our nightly export job started failing after we moved it to the new cluster. The logs show the "
    "worker pods being OOM-killed roughly forty minutes into the run, always while compressing the "
    "largest table. Memory requests are 2Gi and limits 4Gi, the same as on the old cluster. What should "
    "I check first, and is raising the limit a reasonable stop-gap while we investigate?"
)

Kind = Literal["chat", "stream"]


# --- what openai-python sends ---------------------------------------------------------------------------------


def sdk_body(*, stream: bool) -> bytes:
    """The request body byte for byte as openai-python writes it (compact JSON, model first)."""
    body: dict[str, object] = {"model": MODEL}
    if stream:
        body["stream"] = True
    body["messages"] = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}]
    return json.dumps(body, separators=(",", ":")).encode()


def sdk_headers(*, stream: bool) -> dict[str, str]:
    """openai-python's headers (sync client), plus the test upstream's x-upstream-* controls."""
    try:
        version = metadata.version("openai")
    except metadata.PackageNotFoundError:
        version = "1.0.0"
    headers = {
        "Accept-Encoding": "gzip, deflate",
        "Authorization": "Bearer sk-benchmark-not-a-real-key",
        "Accept": "application/json",
        "Content-Type": "application/json",
        "User-Agent": f"OpenAI/Python {version}",
        "x-stainless-lang": "python",
        "x-stainless-package-version": version,
        "x-stainless-os": "Linux",
        "x-stainless-arch": "x64",
        "x-stainless-runtime": "CPython",
        "x-stainless-runtime-version": platform.python_version(),
        "x-stainless-async": "false",
        "x-stainless-retry-count": "0",
        "x-stainless-read-timeout": "600",
    }
    if stream:
        headers["x-upstream-output-tokens"] = str(STREAM_CHUNKS)
        headers["x-upstream-chunk-delay-ms"] = str(STREAM_CADENCE_MS)
    else:
        headers["x-upstream-output-tokens"] = str(CHAT_OUTPUT_TOKENS)
    return headers


# --- processes ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A child process with its log file; stopped with `stop_signal`, killed if it lingers."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name} (pid {self.pid}) did not stop within {timeout:g} s of {self.stop_signal.name}: "
                      "killed", file=sys.stderr)
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


def spawn(name: str, cmd: Sequence[str], env: dict[str, str], workdir: Path,
          stop_signal: signal.Signals = signal.SIGTERM) -> Service:
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("wb")
    # SIGINT back to its default in the child, so Python turns it into KeyboardInterrupt: a shell's background
    # job (nohup make test &, a CI runner) inherits SIGINT ignored, and a child stopped by SIGINT then never
    # stopped (each waited the full stop timeout and was killed: 140 s for a 20-s smoke run).
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                            env=env, cwd=workdir, preexec_fn=_default_sigint)
    return Service(name, proc, log_path, log_file, stop_signal)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_ready(service: Service, url: str, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; raise with the service's log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited with {service.proc.returncode}:\n{service.log_tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(url, timeout=2) as resp:  # loopback only
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} not ready at {url} after {timeout:.0f} s:\n{service.log_tail()}")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    default_cache = Path.home() / ".cache" / "tokenbudget" / "tiktoken"
    if "TIKTOKEN_CACHE_DIR" not in env and default_cache.is_dir():
        env["TIKTOKEN_CACHE_DIR"] = str(default_cache)
    return env


def start_upstream(workdir: Path) -> tuple[Service, str]:
    port = free_port()
    service = spawn("upstream", [sys.executable, "-m", "tokenbudget_testing.upstream", "--host", HOST,
                                 "--port", str(port)], child_env(), workdir, signal.SIGTERM)
    url = f"http://{HOST}:{port}"
    wait_ready(service, f"{url}/v1/models")
    return service, url


MEMORY_BUDGETS: dict[str, list[dict[str, object]]] = {
    "metering only": [],
    # Room for every call's byte bound: admission never needs tiktoken's count.
    "enforcing": [{"name": "team", "spec": {
        "selector": {}, "timeZone": "UTC", "limits": [{"name": "day", "period": "Day", "tokens": 10**9}],
        "ladder": [{"at": 50, "action": "Alert"}, {"at": 95, "action": "Block"}]}}],
    # A prompt cap between the bounds: every call is counted exactly, so the encoding loads.
    "enforcing, exact count forced": [{"name": "team", "spec": {
        "selector": {}, "timeZone": "UTC", "request": {"maxPromptTokens": 200},
        "limits": [{"name": "day", "period": "Day", "tokens": 10**9}]}}],
}


def start_sidecar(workdir: Path, upstream_url: str, profile: Path | None,
                  budgets: list[dict[str, object]] | None = None,
                  extra_env: dict[str, str] | None = None, name: str = "sidecar") -> tuple[Service, str, str]:
    policy = workdir / f"{name}-policy.json"
    policy.write_text(json.dumps({  # metering only unless `budgets`: one OpenAI upstream
        "upstreams": [{"name": "openai", "baseURL": upstream_url, "dialect": "OpenAI"}],
        "onDisconnect": "Drain", "budgets": budgets or [],
    }), encoding="utf-8")
    data_port, admin_port = free_port(), free_port()
    env = child_env()
    env.update({
        "TOKENBUDGET_DATA_HOST": HOST,
        "TOKENBUDGET_DATA_PORT": str(data_port),
        "TOKENBUDGET_ADMIN_HOST": HOST,
        "TOKENBUDGET_ADMIN_PORT": str(admin_port),
        "TOKENBUDGET_POLICY_FILE": str(policy),
    })
    env.pop("TOKENBUDGET_ADMIN_TOKEN_FILE", None)
    env.update(extra_env or {})
    ledger = workdir / f"{name}-ledger"  # as in a pod: the durable usage ledger on an emptyDir
    shutil.rmtree(ledger, ignore_errors=True)
    ledger.mkdir()
    env["TOKENBUDGET_LEDGER_DIR"] = str(ledger)
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "tokenbudget_sidecar"]
    # SIGINT: asyncio.run cancels the server, main() returns, and cProfile gets to write its file.
    service = spawn(name, cmd, env, workdir, signal.SIGINT)
    admin = f"http://{HOST}:{admin_port}"
    wait_ready(service, f"{admin}/readyz")  # ready once the upstream pool exists (and, Exact, the encoding)
    return service, f"http://{HOST}:{data_port}", admin


def start_floor(workdir: Path, upstream_url: str, server: str) -> tuple[Service, str]:
    port = free_port()
    script = Path(__file__).with_name("aiohttp_floor.py")
    service = spawn(f"floor-{server}", [sys.executable, str(script), "--host", HOST, "--port", str(port),
                                        "--upstream", upstream_url, "--server", server],
                    child_env(), workdir, signal.SIGINT)
    url = f"http://{HOST}:{port}"
    wait_ready(service, f"{url}/v1/models")
    return service, url


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_config(workdir: Path, port: int, upstream_port: int) -> str:
    user = ""
    if os.geteuid() == 0:  # the master needs root for nothing here; its worker runs as nobody
        with contextlib.suppress(KeyError):
            nobody = pwd.getpwnam("nobody")
            user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    temp = "\n".join(f"    {kind}_temp_path {workdir / ('nginx-' + kind)};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
{user}
daemon off;
worker_processes 1;
pid {workdir / 'nginx.pid'};
error_log {workdir / 'nginx-error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream provider {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen {HOST}:{port} backlog=1024;
        client_max_body_size 16m;
        location /openai/ {{
            proxy_pass http://provider/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def start_nginx(binary: str, workdir: Path, upstream_url: str) -> tuple[Service, str]:
    port = free_port()
    upstream_port = int(upstream_url.rsplit(":", 1)[1])
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, upstream_port), encoding="utf-8")
    cmd = [binary, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    service = spawn("nginx", cmd, dict(os.environ), workdir, signal.SIGTERM)
    url = f"http://{HOST}:{port}"
    try:
        wait_ready(service, f"{url}/openai/v1/models", timeout=15)
    except RuntimeError:
        error_log = workdir / "nginx-error.log"
        if error_log.exists():
            service.log_file.write(error_log.read_bytes()[-2000:])
        service.stop()
        raise
    return service, url


def nginx_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
        return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
    return "?"


# --- memory ---------------------------------------------------------------------------------------------------


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of /proc/<pid>/status in KiB; empty when the process is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of the processes (all their live threads), from /proc/<pid>/task/*/schedstat: nanoseconds,
    where /proc/<pid>/stat counts in clock ticks (10 ms, coarser than a batch's share of a call). Falls back
    to stat's utime + stime where schedstat is missing."""
    total = 0.0
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
                    stat = Path(f"/proc/{pid}/task/{task}/schedstat").read_text(encoding="ascii")
                    total += int(stat.split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1]
                utime, stime = fields.split()[11:13]  # fields 14 and 15 of stat(5)
                total += (int(utime) + int(stime)) / CLOCK_TICKS
    return total


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds while the load runs; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0

    def sample(self) -> None:
        self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid).get("VmRSS", 0))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)


# --- load generation ------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """One path's figures at one level (times in seconds)."""

    latency: list[float] = field(default_factory=list)  # chat: whole call; stream: last byte
    ttfb: list[float] = field(default_factory=list)  # stream: first body byte
    gaps: list[float] = field(default_factory=list)  # stream: between successive token chunks
    sent: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # CPU seconds the proxy process(es) spent during this path's batches
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return self.sent - sum(self.errors.values())

    @property
    def cpu_per_call(self) -> float:
        return self.cpu / self.ok if self.ok else float("nan")

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0


@dataclass
class Path_:
    """One way to reach the upstream's chat completions: direct, through the sidecar, through nginx."""

    name: str
    url: str
    session: aiohttp.ClientSession
    pids: list[int] = field(default_factory=list)  # the proxy's processes, for CPU time per call


async def chat_call(path: Path_, body: bytes, headers: dict[str, str], out: Samples) -> None:
    started = time.perf_counter()
    try:
        async with path.session.post(path.url, data=body, headers=headers) as resp:
            payload = await resp.read()
            status = resp.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    elapsed = time.perf_counter() - started
    if status != 200 or b'"chat.completion"' not in payload:
        out.errors[f"HTTP {status}"] += 1
        return
    out.latency.append(elapsed)


async def stream_call(path: Path_, body: bytes, headers: dict[str, str], out: Samples) -> None:
    """Times the first body byte, each token chunk's arrival and the last byte.

    Token chunks are the SSE events before the one with a finish_reason (the role chunk and one per token);
    a read that completes several events stamps them all with its arrival time.
    """
    started = time.perf_counter()
    ttfb: float | None = None
    ticks: list[float] = []
    done = False
    pending = b""
    try:
        async with path.session.post(path.url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                out.errors[f"HTTP {resp.status}"] += 1
                return
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                if ttfb is None:
                    ttfb = now - started
                pending += chunk
                while (end := pending.find(b"\n\n")) >= 0:
                    event, pending = pending[:end], pending[end + 2:]
                    if b"[DONE]" in event:
                        done = True
                    elif b'"finish_reason":"' not in event:
                        ticks.append(now)
    except (TimeoutError, aiohttp.ClientError) as exc:
        out.errors[type(exc).__name__] += 1
        return
    finished = time.perf_counter() - started
    if ttfb is None or not done or len(ticks) != STREAM_CHUNKS + 1:
        out.errors[f"stream shape ({len(ticks)} token events, done={done})"] += 1
        return
    out.ttfb.append(ttfb)
    out.gaps.extend(b - a for a, b in itertools.pairwise(ticks))
    out.latency.append(finished)


Call = Callable[[Path_, bytes, dict[str, str], Samples], Awaitable[None]]


async def batch(call: Call, path: Path_, body: bytes, headers: dict[str, str], concurrency: int, count: int,
                out: Samples) -> None:
    """`count` calls, `concurrency` at a time (each worker starts its next call when one ends)."""
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call(path, body, headers, out)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    out.wall += time.perf_counter() - started
    out.sent += count


@dataclass
class Level:
    kind: Kind
    concurrency: int
    per_path: int  # calls per path
    rounds: int
    results: dict[str, Samples] = field(default_factory=dict)


class Bench:
    def __init__(self, paths: list[Path_], upstream_url: str, admin_url: str, housekeeping: aiohttp.ClientSession,
                 verbose: bool) -> None:
        self.paths = paths
        self.upstream_url = upstream_url
        self.admin_url = admin_url
        self.housekeeping = housekeeping
        self.verbose = verbose

    async def tidy(self) -> None:
        """Between batches, off the clock: the operator's usage pull acknowledges the sidecar's records
        (else they pile up in its memory), and the test upstream forgets its ledger."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self.housekeeping.post(f"{self.admin_url}/usage/ack", json={"cursor": 2**62}) as resp:
                await resp.read()
            async with self.housekeeping.delete(f"{self.upstream_url}/_upstream/served") as resp:
                await resp.read()

    async def run(self, level: Level) -> None:
        stream = level.kind == "stream"
        call: Call = stream_call if stream else chat_call
        body, headers = sdk_body(stream=stream), sdk_headers(stream=stream)
        level.results = {p.name: Samples() for p in self.paths}
        for path in self.paths:  # warm-up: open the connections of this level, not measured
            await batch(call, path, body, headers, level.concurrency, 2 * level.concurrency, Samples())
        sizes = [level.per_path // level.rounds + (1 if r < level.per_path % level.rounds else 0)
                 for r in range(level.rounds)]
        for rnd, size in enumerate(sizes):
            shift = rnd % len(self.paths)
            for path in self.paths[shift:] + self.paths[:shift]:
                await self.tidy()
                gc.collect()
                gc.disable()  # no collector pauses in the load generator while it times
                samples = level.results[path.name]
                cpu_before = cpu_seconds(path.pids)
                try:
                    await batch(call, path, body, headers, level.concurrency, size, samples)
                finally:
                    gc.enable()
                samples.cpu += cpu_seconds(path.pids) - cpu_before
        if self.verbose:
            figures = ", ".join(f"{name} p50 {ms(pct(s.latency, 50))}" for name, s in level.results.items())
            print(f"  {level.kind} c={level.concurrency}: {figures}", file=sys.stderr, flush=True)


# --- statistics and report ------------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks; NaN for no data."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float, signed: bool = False) -> str:
    if seconds != seconds:  # NaN
        return "—"
    return f"{seconds * 1000:+.2f}" if signed else f"{seconds * 1000:.2f}"


def pair(values: Sequence[float]) -> str:
    return f"{ms(pct(values, 50))} / {ms(pct(values, 99))}"


def added(values: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    return pct(values, 50) - pct(base, 50), pct(values, 99) - pct(base, 99)


SMOKE_VERDICT = "(smoke: no verdicts)"


def verdict(ok: bool, smoke: bool) -> str:
    """met / MISSED against a target; a smoke run's figures (a handful of calls) say nothing about one."""
    if smoke:
        return SMOKE_VERDICT
    return "**met**" if ok else "**MISSED**"


def target_note(level: Level, metric: str, add50: float, add99: float, smoke: bool) -> str:
    if level.kind != "chat" or metric != "latency":
        return ""
    if level.concurrency == 1:
        return (f"p50 ≤ {TARGET_C1_P50_MS:g} ms: {verdict(add50 * 1000 <= TARGET_C1_P50_MS, smoke)}; "
                f"p99 ≤ {TARGET_C1_P99_MS:g} ms: {verdict(add99 * 1000 <= TARGET_C1_P99_MS, smoke)}")
    if level.concurrency == 64:
        return f"p99 ≤ {TARGET_C64_P99_MS:g} ms: {verdict(add99 * 1000 <= TARGET_C64_P99_MS, smoke)}"
    return ""


ROWS: dict[Kind, list[tuple[str, str]]] = {
    "chat": [("latency", "chat, non-streamed: whole call")],
    "stream": [("ttfb", "stream: time to first byte"), ("gaps", "stream: inter-chunk gap"),
               ("latency", "stream: last byte")],
}


def table(levels: list[Level], others: list[str], smoke: bool) -> list[str]:
    names = ["direct", "sidecar", *others]
    head = ["scenario", "c", "calls/path", "direct p50 / p99", "sidecar p50 / p99", "**added** p50 / p99"]
    head += [f"{OTHERS[o]} added p50 / p99" for o in others]
    head += ["req/s " + " / ".join(names), "CPU µs/call " + " / ".join(["upstream", *names[1:]]), "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        res = level.results
        for metric, label in ROWS[level.kind]:
            d, s = getattr(res["direct"], metric), getattr(res["sidecar"], metric)
            a50, a99 = added(s, d)
            row = [label, str(level.concurrency), str(level.per_path), pair(d), pair(s),
                   f"**{ms(a50, True)} / {ms(a99, True)}**"]
            for other in others:
                n50, n99 = added(getattr(res[other], metric), d)
                row.append(f"{ms(n50, True)} / {ms(n99, True)}")
            last = metric == "latency"
            row.append(" / ".join(f"{res[n].rate:.0f}" for n in names) if last else "")
            row.append(" / ".join(f"{res[n].cpu_per_call * 1e6:.0f}" for n in names) if last else "")
            row.append(target_note(level, metric, a50, a99, smoke))
            lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_table(levels: list[Level], others: list[str], smoke: bool) -> list[str]:
    """The sidecar's CPU per call split into what aiohttp and the loop cost (the floor proxy, same run) and
    what tokenbudget adds on top, beside nginx."""
    if "floor" not in others:
        return []
    head = ["scenario", "c", "sidecar", *[OTHERS[o] for o in others], "**tokenbudget's own** (sidecar - floor)",
            "sidecar ÷ nginx" if "nginx" in others else "", f"target ≤ {TARGET_CPU_US:g} µs"]
    head = [h for h in head if h]
    lines = ["CPU µs per call (the proxy's processes, all threads, over its own batches)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in levels:
        res = level.results
        label = "chat, non-streamed" if level.kind == "chat" else "stream"
        side = res["sidecar"].cpu_per_call * 1e6
        row = [label, str(level.concurrency), f"{side:.0f}", *[f"{res[o].cpu_per_call * 1e6:.0f}" for o in others],
               f"**{side - res['floor'].cpu_per_call * 1e6:.0f}**"]
        if "nginx" in others:
            row.append(f"{side / (res['nginx'].cpu_per_call * 1e6):.1f}x")
        row.append(verdict(side <= TARGET_CPU_US, smoke) if level.kind == "chat" else "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB" if kib else "—"


def self_reported_added(metrics_text: str) -> str:
    """Mean of the sidecar's own tokenbudget_added_latency_seconds histogram (its view of its overhead)."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("tokenbudget_added_latency_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("tokenbudget_added_latency_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return f"{total / count * 1000:.3f} ms over {count:.0f} calls" if count else "—"


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    name: str
    chat: list[tuple[int, int]]  # (concurrency, calls per path)
    stream: list[tuple[int, int]]
    warmup: int
    memory_calls: int  # calls per sidecar of the memory table


FULL = Plan("full", chat=[(1, 2000), (4, 2400), (16, 4800), (64, 9600)], stream=[(1, 200), (16, 960)], warmup=300,
            memory_calls=200)
QUICK = Plan("quick", chat=[(1, 300), (4, 400), (16, 800), (64, 1600)], stream=[(1, 30), (16, 192)], warmup=100,
             memory_calls=50)
# Every step of a run, each as small as it goes: the figures mean nothing, but a run that breaks shows up
# in seconds (tests/test_benchmarks_run.py), where even --quick takes a minute.
SMOKE = Plan("smoke", chat=[(2, 8)], stream=[(2, 4)], warmup=4, memory_calls=4)


def rounds_for(concurrency: int, count: int) -> int:
    """Enough rounds to cancel drift, few enough that each batch keeps every worker busy a while."""
    return max(2, min(10, count // (concurrency * 6)))


async def drive(args: argparse.Namespace, plan: Plan, urls: dict[str, str], pids: dict[str, list[int]],
                upstream_url: str, admin_url: str, sidecar_pid: int) -> tuple[list[Level], RssSampler, str]:
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
    async with contextlib.AsyncExitStack() as stack:
        paths = []
        for name, url in urls.items():
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=timeout)
            await stack.enter_async_context(session)
            paths.append(Path_(name, url, session, pids.get(name, [])))
        housekeeping = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        bench = Bench(paths, upstream_url, admin_url, housekeeping, args.verbose)
        sampler = RssSampler(sidecar_pid)
        sampling = asyncio.create_task(sampler.run())
        try:
            # Warm every code path (first calls pay for imports, caches, the JIT-less interpreter's misses).
            await bench.run(Level("chat", 1, plan.warmup, 1))
            await bench.run(Level("stream", 4, 8, 1))
            levels = [Level("chat", c, n, rounds_for(c, n)) for c, n in plan.chat]
            levels += [Level("stream", c, n, rounds_for(c, n)) for c, n in plan.stream]
            for level in levels:
                await bench.run(level)
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        sampler.sample()
        metrics = ""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with housekeeping.get(f"{admin_url}/metrics") as resp:
                metrics = await resp.text()
    return levels, sampler, self_reported_added(metrics)


def print_profile(profile: Path) -> None:
    if not profile.exists():
        print(f"\n(no profile written to {profile})")
        return
    print(f"\n## Sidecar profile ({profile})\n\n```")
    stats = pstats.Stats(str(profile), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(
        r"tokenbudget_sidecar|genai_prices/__init__|tiktoken/core|concurrent/futures|logging/__init__|"
        r"aiohttp/(web_protocol|client\.py|web_response)", 40)
    print("```")


@dataclass
class Facts:
    """What the report says besides the table."""

    run: str  # the plan's name
    profiled: bool
    load_before: str
    nginx_note: str
    floor_note: str
    idle: dict[str, int]
    after: dict[str, int]
    peak_kib: int
    sample_interval: float
    nginx_kib: int
    self_added: str
    elapsed: float


def report(levels: list[Level], others: list[str], facts: Facts) -> None:
    cpus = os.cpu_count() or 1
    proxies = ", ".join(["the sidecar", *(OTHERS[o] for o in others)])
    print(f"# tokenbudget sidecar latency: {facts.run} run, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    print(f"- Machine: {cpus} CPUs ({cpu_model()}), Linux {platform.release()}; load average "
          f"{facts.load_before} at start, {loadavg()} at end (other work on the box shows up as noise).")
    print(f"- Nothing is pinned: the load generator, the test upstream and {proxies} are separate processes "
          f"sharing {cpus} CPUs. With {cpus} CPUs they compete from c=4 on, and at c=64 all of them fight for the "
          "cores: latency there includes waiting for a CPU, and req/s is what the whole box does, not the proxy "
          "alone. In this closed loop a saturated proxy adds about c x its CPU time per call, so at c=64 every "
          "microsecond of per-call CPU is 64 microseconds of added latency.")
    busiest = max(float(facts.load_before.split()[0]), float(loadavg().split()[0]))
    if busiest > cpus / 2:
        print(f"- **The machine was busy (load average up to {busiest:.2f} on {cpus} CPUs): other work competed "
              "with every process here, so tails (p99) especially are noisier than on an idle box.**")
    print(f"- Python {platform.python_version()}, aiohttp {aiohttp.__version__}; {facts.nginx_note}.")
    print(f"- {facts.floor_note}")
    print(f"- Calls: POST /v1/chat/completions with openai-python's exact body ({len(sdk_body(stream=False))} "
          f"bytes, {MODEL}, system + user message) and headers; non-streamed calls get {CHAT_OUTPUT_TOKENS} "
          f"tokens at once; streams send {STREAM_CHUNKS} one-token chunks {STREAM_CADENCE_MS} ms apart (the "
          "sidecar asks upstream for the usage chunk and hides it from the client). The sidecar meters only "
          "(one OpenAI upstream, no budgets) and writes its durable usage ledger to a temporary directory, "
          "as to the pod's emptyDir.")
    print("- Method: per level a warm-up, then rounds of one batch per path in rotating order; percentiles "
          "over all calls of the level; added = a proxy's percentile minus direct percentile. CPU/call "
          "is the process's CPU time (schedstat, all threads) during its own path's batches. Between batches the "
          "usage records are acknowledged on the admin port, as the operator's pull does. Times in ms.")
    if facts.profiled:
        print("- **The sidecar ran under cProfile: its latency and CPU figures are inflated by the profiler.**")
    print()
    smoke = facts.run == SMOKE.name  # met / MISSED mean nothing at its size
    print("\n".join(table(levels, others, smoke)))
    print()
    if lines := cpu_table(levels, others, smoke):
        print("\n".join(lines))
        print()
    errors = {f"{lv.kind} c={lv.concurrency} {name}": dict(s.errors)
              for lv in levels for name, s in lv.results.items() if s.errors}
    if errors:
        print(f"Failed calls (left out of the figures): {errors}\n")
    peak = max(facts.peak_kib, facts.after.get("VmRSS", 0))
    rest = facts.idle.get("VmRSS", 0)
    print("- Sidecar RSS idle (after start-up, which loads no encoding unless TOKENBUDGET_PROMPT_COUNT=Exact; "
          f"before any call): {mib(rest)}; target (issue 19) ≤ {TARGET_RSS_REST_MIB:g} MiB: "
          f"{verdict(rest / 1024 <= TARGET_RSS_REST_MIB, smoke)}")
    print(f"- Sidecar RSS peak under load (VmRSS sampled every {facts.sample_interval * 1000:.0f} ms): "
          f"{mib(peak)}; target (issue 3) ≤ {TARGET_RSS_MIB:g} MiB: {verdict(peak / 1024 <= TARGET_RSS_MIB, smoke)}")
    print("- Sidecar VmHWM at the end (peak over its whole life, start-up included): "
          f"{mib(facts.after.get('VmHWM', 0))}; VmRSS after the load: {mib(facts.after.get('VmRSS', 0))}")
    if facts.nginx_kib:
        print(f"- nginx VmHWM (master + worker): {mib(facts.nginx_kib)}")
    print(f"- The sidecar's own view (tokenbudget_added_latency_seconds, mean): {facts.self_added}")
    print(f"- Wall time: {facts.elapsed:.0f} s")


def maybe_nginx(args: argparse.Namespace, workdir: Path, upstream_url: str) -> tuple[Service | None, str, str]:
    """(service, chat URL, note); no service when nginx is absent, unwanted or fails to start."""
    if args.no_nginx:
        return None, "", "nginx: skipped (--no-nginx)"
    binary = find_nginx()
    if binary is None:
        return None, "", "nginx: not installed, its column is left out (scripts/apt-install.sh bench nginx adds it)"
    try:
        service, url = start_nginx(binary, workdir, upstream_url)
    except RuntimeError as exc:
        return None, "", f"nginx: failed to start, its column is left out ({str(exc).splitlines()[0]})"
    note = (f"nginx {nginx_version(binary)}: 1 worker, keepalive pool to the upstream, proxy_buffering off, "
            "proxy_request_buffering off")
    return service, f"{url}/openai/v1/chat/completions", note


async def some_calls(url: str, count: int) -> int:
    """`count` plain SDK-shaped calls, 8 at a time; returns how many answered 200."""
    ok = 0
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal ok
            async with sem, session.post(url, data=sdk_body(stream=False), headers=sdk_headers(stream=False)) as resp:
                await resp.read()
                ok += resp.status == 200

        await asyncio.gather(*(one() for _ in range(count)))
    return ok


def memory_report(workdir: Path, upstream_url: str, calls: int) -> None:
    """RSS at rest and after `calls` calls, per kind of policy, lazy counting (default) beside Exact."""
    print("\nSidecar memory (VmRSS; at rest = ready, 1 s after start; after = once the calls have settled)")
    print(f"| policy | count mode | at rest | after {calls} calls | VmHWM | encodings loaded |")
    print("|---|---|---|---|---|---|")
    for name, budgets in MEMORY_BUDGETS.items():
        for mode in ("Lazy", "Exact"):
            service, data, admin = start_sidecar(workdir, upstream_url, None, budgets,
                                                 {"TOKENBUDGET_PROMPT_COUNT": mode})
            try:
                time.sleep(1.0)
                rest = proc_status_kib(service.pid).get("VmRSS", 0)
                ok = asyncio.run(some_calls(f"{data}/openai/v1/chat/completions", calls))
                time.sleep(0.5)
                after = proc_status_kib(service.pid)
                with urllib.request.urlopen(f"{admin}/metrics", timeout=10) as resp:  # loopback only
                    metrics = resp.read().decode()
                loaded = sorted(line.split('"')[1] for line in metrics.splitlines()
                                if line.startswith("tokenbudget_tokenizer_available{") and line.endswith(" 1.0"))
                note = "" if ok == calls else f" ({calls - ok} failed)"
                print(f"| {name} | {mode} | {mib(rest)} | {mib(after.get('VmRSS', 0))}{note} | "
                      f"{mib(after.get('VmHWM', 0))} | {', '.join(loaded) or 'none'} |")
            finally:
                service.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls; finishes in under a minute")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny level per kind and a few calls per memory row: checks the run, no figures")
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even when installed")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="a checkout of another revision (git worktree add DIR REV): its sidecar runs beside "
                             "this one, same run, as the 'baseline' path (its packages first on PYTHONPATH)")
    parser.add_argument("--no-floor", action="store_true",
                        help="leave out the bare aiohttp proxies (benchmarks/aiohttp_floor.py)")
    parser.add_argument("--profile", type=Path, default=os.environ.get("TOKENBUDGET_BENCH_PROFILE") or None,
                        help="run the sidecar under cProfile, write the stats here and print the top entries")
    parser.add_argument("--verbose", action="store_true", help="progress on stderr")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with the logs")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory table: RSS per kind of policy, lazy counting beside Exact")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    profile: Path | None = args.profile.resolve() if args.profile else None

    began = time.monotonic()
    load_before = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="tokenbudget-bench-"))
    workdir.chmod(0o755)  # nginx's worker (nobody) must reach its temp paths in here
    services: list[Service] = []
    try:
        upstream, upstream_url = start_upstream(workdir)
        services.append(upstream)
        memory_report(workdir, upstream_url, plan.memory_calls)
        if args.memory_only:
            return
        sidecar, sidecar_url, admin_url = start_sidecar(workdir, upstream_url, profile)
        services.append(sidecar)
        time.sleep(1.0)  # let start-up garbage settle before the idle reading
        idle = proc_status_kib(sidecar.pid)
        urls = {"direct": f"{upstream_url}/v1/chat/completions",
                "sidecar": f"{sidecar_url}/openai/v1/chat/completions"}
        pids = {"direct": [upstream.pid], "sidecar": [sidecar.pid]}
        nginx, nginx_url, nginx_note = maybe_nginx(args, workdir, upstream_url)
        if nginx is not None:
            services.append(nginx)
            urls["nginx"] = nginx_url
            pids["nginx"] = [nginx.pid, *children_of(nginx.pid)]
        if args.baseline_src is not None:
            src = args.baseline_src.resolve()
            path = os.pathsep.join(str(src / pkg) for pkg in ("sidecar", "api"))
            service, url, _ = start_sidecar(workdir, upstream_url, None, extra_env={"PYTHONPATH": path},
                                            name="baseline")
            services.append(service)
            urls["baseline"], pids["baseline"] = f"{url}/openai/v1/chat/completions", [service.pid]
        floor_note = "aiohttp floor: left out (--no-floor)"
        if not args.no_floor:
            for name, server in (("floor", "app"), ("floor-ll", "lowlevel")):
                service, url = start_floor(workdir, upstream_url, server)
                services.append(service)
                urls[name], pids[name] = f"{url}/v1/chat/completions", [service.pid]
            floor_note = ("aiohttp floor: benchmarks/aiohttp_floor.py, a bare pass-through with the sidecar's client "
                          "settings and relay and nothing else (no parsing, metering or record), once on "
                          "web.Application as the sidecar serves and once on the low-level web.Server")

        levels, sampler, self_added = asyncio.run(
            drive(args, plan, urls, pids, upstream_url, admin_url, sidecar.pid))
        facts = Facts(
            run=plan.name, profiled=profile is not None, load_before=load_before, nginx_note=nginx_note,
            floor_note=floor_note,
            idle=idle, after=proc_status_kib(sidecar.pid), peak_kib=sampler.peak_kib,
            sample_interval=sampler.interval,
            nginx_kib=sum(proc_status_kib(pid).get("VmHWM", 0) for pid in pids.get("nginx", [])),
            self_added=self_added, elapsed=time.monotonic() - began,
        )
        report(levels, [o for o in OTHERS if o in urls], facts)
    finally:
        for service in reversed(services):
            service.stop()
        if profile is not None:
            print_profile(profile)
        if args.keep_logs:
            print(f"\n(logs kept in {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
