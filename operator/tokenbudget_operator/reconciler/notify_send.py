"""POSTing one notification with bounded retries, and reading the webhook URLs from their Secret.

A webhook receiver is someone else's service: it may be down for a moment, rate-limit us or reject the
body. `deliver` retries what can pass on a second try (connection errors, timeouts, 408, 429, 5xx) at most
`attempts` times with exponential backoff (a `Retry-After` in seconds is honoured, capped like the backoff),
and stops at once on any other 4xx, which a retry would only repeat. The URL is a credential (a Slack
webhook URL lets anyone post to the channel): it never reaches a log line, an Event or a condition.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tokenbudget_api import names

logger = logging.getLogger(__name__)
RETRYABLE = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Delivery:
    """How one message went: delivered or not, after how many POSTs, and the last failure (no URL in it)."""

    ok: bool
    attempts: int
    error: str | None = None


@dataclass(frozen=True)
class Backoff:
    attempts: int
    first_s: float
    max_s: float

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait after failed POST number `attempt` (1-based)."""
        delay = min(self.first_s * 2.0 ** (attempt - 1), self.max_s)
        if retry_after is not None and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after.strip()), self.max_s))
        return delay


async def deliver(session: aiohttp.ClientSession, url: str, body: dict[str, Any], idempotency_key: str, *,
                  backoff: Backoff, timeout_s: float, go_on: Callable[[], bool] = lambda: True) -> Delivery:
    """POST `body` as JSON until a 2xx, a permanent failure, `backoff.attempts` tries, or `go_on()` is False
    (this replica lost leadership: the new leader will send it, with the same key)."""
    headers = {names.IDEMPOTENCY_HEADER: idempotency_key, "User-Agent": "tokenbudget-operator"}
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    error = "not attempted"
    for attempt in range(1, backoff.attempts + 1):
        retry_after: str | None = None
        try:
            async with session.post(url, json=body, headers=headers, timeout=timeout,
                                    allow_redirects=False) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return Delivery(True, attempt)
                error = f"HTTP {response.status}"
                if response.status < 500 and response.status not in RETRYABLE:
                    return Delivery(False, attempt, f"{error} (not retried)")
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__ if isinstance(exc, TimeoutError) else _redacted(exc, url)
        if attempt == backoff.attempts or not go_on():
            return Delivery(False, attempt, error)
        await asyncio.sleep(backoff.delay(attempt, retry_after))
    return Delivery(False, backoff.attempts, error)


def _redacted(exc: Exception, url: str) -> str:
    """An aiohttp error without the URL (its path and query are the secret part)."""
    text = str(exc).replace(url, "<webhook>")
    parts = urlsplit(url)
    if parts.path and parts.path != "/":
        text = text.replace(parts.path, "/<redacted>")
    return f"{type(exc).__name__}: {text}"[:300]


class SecretProblem(Exception):
    """The Secret or its key is missing, unreadable or not an http(s) URL: the message says which."""


def read_secret(api: Any, namespace: str) -> dict[str, str] | None:
    """The decoded data of the namespace's tokenbudget-notifications Secret; None when it does not exist."""
    core: Any = client.CoreV1Api(api)
    try:
        found = core.read_namespaced_secret(names.NOTIFICATION_SECRET, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {str(k): base64.b64decode(v).decode().strip() for k, v in (found.data or {}).items()}


def webhook_url(data: dict[str, str] | None, namespace: str, key: str) -> str:
    """The URL under `key`, checked; raises SecretProblem naming what to fix."""
    where = f"Secret {namespace}/{names.NOTIFICATION_SECRET}"
    if data is None:
        raise SecretProblem(f"{where} does not exist")
    url = data.get(key)
    if not url:
        raise SecretProblem(f"{where} has no key {key}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SecretProblem(f"{where} key {key} is not an http(s) URL")
    return url


__all__ = ["Backoff", "Delivery", "SecretProblem", "deliver", "read_secret", "webhook_url"]
