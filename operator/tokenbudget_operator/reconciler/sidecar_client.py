"""An aiohttp client for one sidecar's admin API (design.md section 3), with bounded retry and backoff.

Every call here is idempotent on the sidecar's side (PUT /policy by version, GET /usage by cursor, POST
/usage/ack by cursor), so a retry after a timeout can never apply, count or acknowledge anything twice:
that is what makes retrying safe, and why no call needs a request id.

Retries are short (a few attempts within about a second): the reconcile loop comes back to the pod on its
next round anyway, and a long retry inside one call would hold up every other pod's push behind it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from tokenbudget_api.policy import SidecarPolicy


class SidecarError(RuntimeError):
    """The sidecar could not be reached or answered an error; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, in seconds; `attempts` counts the first try."""

    attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 1.0

    def delay(self, attempt: int) -> float:
        """Sleep before retry number `attempt` (1-based): uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


@dataclass(frozen=True)
class UsagePage:
    """One GET /usage answer: records after the cursor asked for, the cursor to resume from, the log's end."""

    records: list[dict[str, Any]]
    cursor: int
    last_seq: int
    policy_version: str | None = None  # what the sidecar enforces now


class SidecarClient:
    """Talks to sidecars over one shared aiohttp session; the address and token are passed per call.

    Per-call addresses because a pod's IP can change (a test patches it; a real pod gets one once it runs),
    and per-call tokens because they come from a per-namespace Secret the caller caches.
    """

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float = 2.0, backoff: Backoff | None = None,
                 ) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.backoff = backoff or Backoff()

    async def _call(self, method: str, url: str, token: str | None, body: Any = None,
                    params: Mapping[str, str] | None = None) -> Any:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        last: SidecarError | None = None
        for attempt in range(self.backoff.attempts):
            if attempt:
                await asyncio.sleep(self.backoff.delay(attempt))
            try:
                async with self.session.request(method, url, json=body, params=params, headers=headers,
                                                timeout=self.timeout) as resp:
                    if resp.status == 200:
                        return await resp.json()
                    text = (await resp.text())[:300]
                    last = SidecarError(f"{method} {url}: HTTP {resp.status}: {text}", resp.status)
                    if resp.status < 500:  # 4xx: a retry gives the same answer
                        raise last
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = SidecarError(f"{method} {url}: {type(exc).__name__}: {exc}")
        assert last is not None
        raise last

    async def put_policy(self, base: str, token: str | None, policy: SidecarPolicy) -> str:
        """PUT /policy; returns the version the sidecar says it applied."""
        answer = await self._call("PUT", f"{base}/policy", token, policy.model_dump(mode="json", by_alias=True))
        return str(answer["applied"])

    async def get_policy(self, base: str, token: str | None) -> SidecarPolicy:
        """The policy the sidecar enforces now (GET /policy): after an operator restart, what it holds."""
        return SidecarPolicy.model_validate(await self._call("GET", f"{base}/policy", token))

    async def get_usage(self, base: str, token: str | None, after: int, limit: int = 1000) -> UsagePage:
        """GET /usage?after=&limit=: records with seq > after, in seq order."""
        answer = await self._call("GET", f"{base}/usage", token, params={"after": str(after), "limit": str(limit)})
        return UsagePage(records=list(answer.get("records") or []), cursor=int(answer.get("cursor", after)),
                         last_seq=int(answer.get("lastSeq", 0)), policy_version=answer.get("policyVersion"))

    async def ack_usage(self, base: str, token: str | None, cursor: int) -> None:
        """POST /usage/ack: the sidecar may forget records up to `cursor` (only after they are persisted)."""
        await self._call("POST", f"{base}/usage/ack", token, {"cursor": cursor})

    async def get_budgets(self, base: str, token: str | None, alerts_after: int = 0,
                          fullest_keys: bool = False) -> dict[str, Any]:
        """GET /budgets: windows, stage, leases, dry-run counts, and alerts after a cursor; `fullest_keys`:
        one entry per per-key limit (its fullest key), all a lease round needs."""
        params = {"alertsAfter": str(alerts_after)} | ({"keys": "fullest"} if fullest_keys else {})
        answer: dict[str, Any] = await self._call("GET", f"{base}/budgets", token, params=params)
        return answer

    async def get_thinking(self, base: str, token: str | None) -> dict[str, Any]:
        """GET /thinking: per ThinkTier and class, cumulative figures and the mergeable histogram."""
        answer: dict[str, Any] = await self._call("GET", f"{base}/thinking", token)
        return answer


__all__ = ["Backoff", "SidecarClient", "SidecarError", "UsagePage"]
