"""Run the real sidecar and the test upstream on loopback, each on its own event loop in a thread.

Threads, not the test's own loop, so the official SDKs' synchronous clients can call them without
deadlocking, and so the servers never share a loop with the code that drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar.app import create_admin_app, create_app, create_state, data_ssl_context
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.state import State
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream
from tokenbudget_testing.upstream.ledger import Ledger


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return str(resp.read().decode())


def http_post(url: str, body: Any, method: str = "POST") -> str:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.read().decode())


@contextlib.contextmanager
def app_in_thread(make_apps: Callable[[], list[web.Application]], host: str = "127.0.0.1",
                  tls: ssl.SSLContext | None = None) -> Iterator[list[str]]:
    """Serve each app on a free port of `host`; yields their base URLs; always stops them. With `tls`, the first
    app (the data port) is served over it (https)."""
    loop = asyncio.new_event_loop()
    urls: list[str] = []
    errors: list[BaseException] = []
    started, stop = threading.Event(), threading.Event()
    runners: list[web.AppRunner] = []

    async def main() -> None:
        try:
            for i, app in enumerate(make_apps()):
                runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
                await runner.setup()
                runners.append(runner)
                context = tls if i == 0 else None
                await web.TCPSite(runner, host, 0, ssl_context=context).start()
                urls.append(f"{'https' if context else 'http'}://{host}:{runner.addresses[0][1]}")
        except BaseException as exc:
            errors.append(exc)
        started.set()
        await asyncio.to_thread(stop.wait)
        for runner in reversed(runners):
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True, name="sidecar")
    thread.start()
    started.wait(30)
    try:
        if errors:
            raise errors[0]
        yield urls
    finally:
        stop.set()
        thread.join(15)
        loop.close()


def policy_for(upstream_url: str, key_files: dict[str, Path] | None = None, **extra: Any) -> SidecarPolicy:
    """Every dialect at the test upstream; `key_files` (upstream name → file) makes the sidecar hold those keys."""
    upstreams: list[dict[str, Any]] = [
        {"name": "openai", "baseURL": upstream_url, "dialect": "OpenAI"},
        {"name": "anthropic", "baseURL": upstream_url, "dialect": "Anthropic"},
        {"name": "gemini", "baseURL": upstream_url, "dialect": "Gemini"},
    ]
    for upstream in upstreams:
        if key_files and upstream["name"] in key_files:
            upstream.update(apiKeySecret=f"{upstream['name']}-key", apiKeyFile=str(key_files[upstream["name"]]))
    return SidecarPolicy.model_validate({"upstreams": upstreams, **extra})


@dataclass
class Stack:
    sidecar: str  # data port base URL
    admin: str
    upstream: str
    state: State
    ledger: Ledger
    upstream_app: web.Application | None = None  # the test upstream's app (its ws_sessions.WS_SESSIONS, ...)

    @property
    def openai_url(self) -> str:
        return f"{self.sidecar}/openai/v1"

    @property
    def anthropic_url(self) -> str:
        return f"{self.sidecar}/anthropic"

    @property
    def gemini_url(self) -> str:
        return f"{self.sidecar}/gemini"

    def records(self, count: int, timeout: float = 10.0) -> list[UsageRecord]:
        """Wait until the sidecar has settled `count` records (settling follows the response)."""
        deadline = time.monotonic() + timeout
        while len(self.state.usage_log.all()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} usage records, have {len(self.state.usage_log.all())}")
            time.sleep(0.01)
        return self.state.usage_log.all()

    def reset(self) -> None:
        self.state.usage_log.ack(self.state.usage_log.last_seq)
        self.ledger.clear()


@contextlib.contextmanager
def stack(settings: Settings | None = None, ledger_dir: Path | None = None, key_files: dict[str, Path] | None = None,
          **policy: Any) -> Iterator[Stack]:
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as upstream_url:
        settings = settings or Settings(data_port=0, admin_port=0, ledger_dir=ledger_dir)
        state = create_state(settings, policy_for(upstream_url, key_files, **policy))
        with app_in_thread(lambda: [create_app(settings, state), create_admin_app(state)],
                           tls=data_ssl_context(settings)) as (data, admin):
            yield Stack(data, admin, upstream_url, state, upstream_app[LEDGER], upstream_app)
