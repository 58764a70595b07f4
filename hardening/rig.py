"""What `make soak` and `make chaos` share: the test upstream and a sidecar as real processes on loopback,
traffic through the sidecar, and the operator's side of the usage pull (pull, then acknowledge).

Traffic goes to 127.0.0.1 only, in loops bounded in count and time, and every process started here is
stopped by its own handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TOKEN = "hardening-admin-token"


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def upstream_process(log: Path) -> Iterator[Process]:
    """`python -m tokenbudget_testing.upstream --port 0`; its first stdout line names its URL."""
    with log.open("ab") as err:
        proc = subprocess.Popen([PYTHON, "-m", "tokenbudget_testing.upstream", "--port", "0"], stdout=subprocess.PIPE,
                                stderr=err, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on" in line, f"the test upstream did not start: {line!r}"
    up = Process(proc, line.rsplit(" ", 1)[1].strip())
    try:
        yield up
    finally:
        up.stop()


def sidecar_env(work: Path, **extra: str) -> dict[str, str]:
    (work / "token").write_text(TOKEN)
    return {**os.environ, "TOKENBUDGET_ADMIN_TOKEN_FILE": str(work / "token"), "TOKENBUDGET_LOG_LEVEL": "WARNING",
            **extra}


def policy(upstream: str, requests_per_minute: int | None = None, tokens_per_minute: int | None = None,
           version: str = "") -> dict[str, Any]:
    """Two upstreams on the test upstream, and a budget whose per-minute limits refuse calls past them."""
    limits = []
    if requests_per_minute:
        limits.append({"name": "rpm", "duration": "1m", "requests": requests_per_minute})  # rolling: refuses steadily
    if tokens_per_minute:
        limits.append({"name": "tpm", "duration": "1m", "tokens": tokens_per_minute})
    budgets = [{"namespace": "hardening", "name": "soak", "spec": {
        "selector": {"matchLabels": {"app": "hardening"}}, "timeZone": "UTC", "limits": limits,
        "request": {"maxOutputTokens": 64}}}] if limits else []
    return {"version": version, "upstreams": [
        {"name": "openai", "baseURL": upstream, "dialect": "OpenAI"},
        {"name": "anthropic", "baseURL": upstream, "dialect": "Anthropic"}], "budgets": budgets}


@dataclass
class Tally:
    """What the app side saw."""

    ok: int = 0
    refused: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)

    @property
    def calls(self) -> int:
        return self.ok + self.refused + self.errors


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 32}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "Hello."}]}


async def call(session: aiohttp.ClientSession, sidecar: str, n: int, tally: Tally,
               headers: dict[str, str] | None = None, limit_s: float = 30.0) -> None:
    """One call; every fourth plain, the rest streamed; every third through the Anthropic route."""
    stream = n % 4 != 0
    anthropic = n % 3 == 0
    url = f"{sidecar}/anthropic/v1/messages" if anthropic else f"{sidecar}/openai/v1/chat/completions"
    body = {**(MESSAGES if anthropic else CHAT), "stream": stream}
    began = time.perf_counter()
    try:
        async with session.post(url, json=body, headers={"x-upstream-output-tokens": "16", **(headers or {})},
                                timeout=aiohttp.ClientTimeout(total=limit_s)) as resp:
            data = await resp.read()
            if resp.status == 200:
                end = (b"message_stop" if anthropic else b"[DONE]") if stream else b'"usage"'
                done = end in data
                if done:
                    tally.ok += 1
                else:
                    tally.error(f"200 without its end: {data[-200:]!r}")
            elif resp.status == 429:
                tally.refused += 1
            else:
                tally.error(f"{resp.status}: {data[:200]!r}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.error(f"{type(exc).__name__}: {exc}")
    tally.latencies.append(time.perf_counter() - began)


class Puller:
    """The operator's usage pull: GET /usage after the cursor, then POST /usage/ack; counts what it read."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.cursor = 0
        self.records = 0
        self.headers = {"authorization": f"Bearer {TOKEN}"}

    async def pull(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"{self.admin}/usage", params={"after": str(self.cursor), "limit": "10000"},
                               headers=self.headers) as resp:
            resp.raise_for_status()
            page = await resp.json()
        self.records += len(page["records"])
        if page["records"]:
            self.cursor = page["cursor"]
            async with session.post(f"{self.admin}/usage/ack", json={"cursor": self.cursor},
                                    headers=self.headers) as resp:
                resp.raise_for_status()
        return len(page["records"])

    async def loop(self, session: aiohttp.ClientSession, every_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self.pull(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0
