"""GET /drain, the sidecar's preStop hook: hold the pod's termination until the operator has its usage.

Without it, records written after the operator's last pull die with the pod's emptyDir: the operator
pulls every `USAGE_INTERVAL_S` (2 s), so a pod deleted between two pulls took up to that much usage
with it. kubelet runs the hook before it signals the container, and the injected sidecar is a native
sidecar, stopped after the app containers: by then no new call arrives, so waiting for the
acknowledgement cursor to reach the last record is enough.

The hook is unauthenticated (kubelet's httpGet cannot carry a Secret), so it changes nothing: it only
waits, and at most `drain_timeout_s`, which must stay below the pod's terminationGracePeriodSeconds.
A sidecar no operator has pulled from (standalone, or the operator is down) answers at once: nobody
would come for the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from tokenbudget_api.admin import DrainAnswer
from tokenbudget_sidecar.state import STATE


class Drain:
    """Whether an operator pulls usage from this sidecar, and a wake-up on each of its acks."""

    def __init__(self) -> None:
        self.operator_seen = False
        self.acked = asyncio.Event()

    def on_ack(self) -> None:
        self.acked.set()


DRAIN = web.AppKey("drain", Drain)


async def drain(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started = time.monotonic()
    deadline = started + state.settings.drain_timeout_s
    log = state.usage_log
    hook = request.app[DRAIN]
    waiting = hook.operator_seen or log.acked > 0
    while waiting and log.last_seq > log.acked and (left := deadline - time.monotonic()) > 0:
        hook.acked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hook.acked.wait(), left)
    unacked = max(log.last_seq - log.acked, 0)
    answer = DrainAnswer(unacked=unacked, waited_seconds=round(time.monotonic() - started, 3), operator_seen=waiting)
    return web.json_response(answer.dump())


__all__ = ["DRAIN", "Drain", "drain"]
