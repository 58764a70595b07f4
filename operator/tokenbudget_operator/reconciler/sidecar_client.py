"""An aiohttp client for one sidecar's admin API, with bounded retry and backoff; every answer is validated
into its model in tokenbudget_api.admin (the API: api/openapi/admin.yaml).

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
from typing import Any, TypeVar

import aiohttp
import pydantic

from tokenbudget_api.admin import BudgetsAnswer, PolicyApplied, ThinkingAnswer, UsageAck, UsageAcked, UsagePage
from tokenbudget_api.policy import SidecarPolicy

M = TypeVar("M", bound=pydantic.BaseModel)


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

    async def _call(self, answer: type[M], method: str, url: str, token: str | None, body: Any = None,
                    params: Mapping[str, str] | None = None) -> M:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        last: SidecarError | None = None
        for attempt in range(self.backoff.attempts):
            if attempt:
                await asyncio.sleep(self.backoff.delay(attempt))
            try:
                async with self.session.request(method, url, json=body, params=params, headers=headers,
                                                timeout=self.timeout) as resp:
                    if resp.status == 200:
                        return _valid(answer, await resp.json(), f"{method} {url}")
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
        answer = await self._call(PolicyApplied, "PUT", f"{base}/policy", token,
                                  policy.model_dump(mode="json", by_alias=True))
        return answer.applied

    async def get_policy(self, base: str, token: str | None) -> SidecarPolicy:
        """The policy the sidecar enforces now (GET /policy): after an operator restart, what it holds."""
        return await self._call(SidecarPolicy, "GET", f"{base}/policy", token)

    async def get_usage(self, base: str, token: str | None, after: int, limit: int = 1000) -> UsagePage:
        """GET /usage?after=&limit=: records with seq > after, in seq order."""
        return await self._call(UsagePage, "GET", f"{base}/usage", token,
                                params={"after": str(after), "limit": str(limit)})

    async def ack_usage(self, base: str, token: str | None, cursor: int) -> None:
        """POST /usage/ack: the sidecar may forget records up to `cursor` (only after they are persisted)."""
        await self._call(UsageAcked, "POST", f"{base}/usage/ack", token, UsageAck(cursor=cursor).dump())

    async def get_budgets(self, base: str, token: str | None, alerts_after: int = 0,
                          fullest_keys: bool = False) -> BudgetsAnswer:
        """GET /budgets: windows, stage, leases, dry-run counts, and alerts after a cursor; `fullest_keys`:
        one entry per per-key limit (its fullest key), all a lease round needs."""
        params = {"alertsAfter": str(alerts_after)} | ({"keys": "fullest"} if fullest_keys else {})
        return await self._call(BudgetsAnswer, "GET", f"{base}/budgets", token, params=params)

    async def get_thinking(self, base: str, token: str | None) -> ThinkingAnswer:
        """GET /thinking: per ThinkTier and class, cumulative figures and the mergeable histogram."""
        return await self._call(ThinkingAnswer, "GET", f"{base}/thinking", token)


def _valid(model: type[M], data: Any, what: str) -> M:
    """The answer as its wire model; one that does not fit is the sidecar's error, not a KeyError here."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SidecarError(f"{what}: answer is not a valid {model.__name__}: {exc.error_count()} errors, "
                           f"first: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}", 200) from exc


__all__ = ["Backoff", "SidecarClient", "SidecarError"]
