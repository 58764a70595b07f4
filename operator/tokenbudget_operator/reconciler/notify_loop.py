"""Notify loop: each budget's stage changes and end-of-period summaries to the webhooks its spec names.

Only the leader runs it (`every` checks `Fleet.active`; a retry stops when leadership is lost). What each
target was sent is its dedupe record, `status.notifications[]` (stage delivered, stage-message sequence,
last period summarized per calendar window), written by the status loop with the rest of status:

- Why status: it survives operator restarts and is read back by every replica through the budget index,
  so a new process or a new leader starts from what the last one delivered (a record in the operator's
  memory would resend everything on each restart). It is per budget, so a deleted budget takes its record
  with it; the usage ConfigMap is the commit point of usage and is rewritten every 5 s by a loop that must
  not wait on someone's webhook.
- Order: POST first, record after. A crash between the two resends the message after the restart, with
  the same idempotency key (notify_messages.py derives it from the record), so delivery is at least once
  and a receiver that keeps keys sees it once. Recording first would lose messages instead.

A target first seen (new, or no record yet) hears the current stage if it is not Normal, and summaries of
periods that end from then on. A stage message says where the stage went since the last one delivered, so
several changes while a receiver is down arrive as one. Calendar windows only are summarized; after an
outage longer than a period, only the last period that ended.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from tokenbudget_api import names
from tokenbudget_api.notifications import NotificationTarget
from tokenbudget_operator.reconciler import notify_messages
from tokenbudget_operator.reconciler.conditions import Reason
from tokenbudget_operator.reconciler.fleet import Fleet, every
from tokenbudget_operator.reconciler.indexes import BudgetEntry
from tokenbudget_operator.reconciler.notify_send import Backoff, SecretProblem, deliver, read_secret, webhook_url
from tokenbudget_operator.reconciler.notify_state import TargetState, pending
from tokenbudget_operator.reconciler.status_writer import post_event
from tokenbudget_operator.reconciler.views import BudgetView

logger = logging.getLogger(__name__)
SECRET_TTL_S = 5.0  # a Secret created or fixed is picked up this fast


async def _secret(fleet: Fleet, namespace: str) -> dict[str, str] | None:
    """The namespace's notification Secret, cached for SECRET_TTL_S; an API error is raised as SecretProblem."""
    cache = fleet.notifier.secrets
    cached = cache.get(namespace)
    if cached is None or cached[1] <= time.monotonic():
        try:
            value: dict[str, str] | Exception | None = await asyncio.to_thread(read_secret, fleet.api, namespace)
        except Exception as exc:
            value = exc
        cached = cache[namespace] = (value, time.monotonic() + SECRET_TTL_S)
    if isinstance(cached[0], Exception):
        raise SecretProblem(f"cannot read Secret {namespace}/{names.NOTIFICATION_SECRET}: {cached[0]}")
    return cached[0]


async def notify_target(fleet: Fleet, entry: BudgetEntry, target: NotificationTarget, now: dt.datetime) -> None:
    """Send `target` what it is owed, in order; stop at the first failure (the next try comes later)."""
    view, s = entry.view, fleet.settings
    state = fleet.notifier.states(entry, now)[target.name]
    try:  # checked every round, so a missing Secret shows before anything is owed
        url = webhook_url(await _secret(fleet, view.namespace), view.namespace, target.url_secret_key)
    except SecretProblem as exc:
        _failed(state, (Reason.NOTIFICATION_SECRET_MISSING, str(exc)), now, retry_in=0.0)
        logger.warning("notifications of %s to %s: %s", view.key, target.name, exc)
        return
    if state.problem is not None and state.problem[0] == Reason.NOTIFICATION_SECRET_MISSING:
        state.problem, state.failing_since = None, None
    if state.next_try > time.monotonic():
        return
    owed = pending(view, target, state, fleet.notifier.observed.get(view.key), fleet.aggregator.period_totals, now,
                   dt.timedelta(seconds=s.notify_summary_delay_s))
    backoff = Backoff(s.notify_attempts, s.notify_backoff_s, s.notify_backoff_max_s)
    for item in owed:
        if item.payload is not None:
            done = await deliver(fleet.webhooks, url, notify_messages.body(item.payload, target.format),
                                 item.payload.idempotency_key, backoff=backoff, timeout_s=s.notify_timeout_s,
                                 go_on=lambda: fleet.active)
            if not done.ok:
                message = f"{item.payload.event.value} not delivered after {done.attempts} attempt(s): {done.error}"
                _failed(fleet.notifier.targets[view.key][target.name], (Reason.NOTIFICATION_FAILED, message), now,
                        retry_in=s.notify_retry_after_s)
                logger.warning("notification of %s to %s: %s", view.key, target.name, message)
                await _event(fleet, view, target.name, message)
                return
            logger.info("notified %s of %s (%s, %d attempt(s))", target.name, view.key, item.payload.event.value,
                        done.attempts)
        record = replace(item.after, problem=None, next_try=0.0, failing_since=None)
        if item.payload is not None:
            record.last_delivered = now
        fleet.notifier.targets[view.key][target.name] = record


def _failed(state: TargetState, problem: tuple[str, str], now: dt.datetime, *, retry_in: float) -> None:
    state.problem = problem
    state.failing_since = state.failing_since or now
    state.next_try = time.monotonic() + retry_in


async def _event(fleet: Fleet, view: BudgetView, target: str, message: str) -> None:
    involved = {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND, "namespace": view.namespace,
                "name": view.name, "uid": view.uid}
    try:
        await asyncio.to_thread(post_event, fleet.api, involved, type_="Warning", reason=Reason.NOTIFICATION_FAILED,
                                message=f"notification target {target}: {message}", now=dt.datetime.now(dt.UTC))
    except Exception as exc:
        logger.warning("could not post the NotificationFailed Event for %s: %s", view.key, exc)


async def notify_round(fleet: Fleet) -> None:
    now = dt.datetime.now(dt.UTC)
    entries: Sequence[BudgetEntry] = fleet.budget_entries()
    jobs = [notify_target(fleet, e, t, now) for e in entries for t in e.view.spec.notifications or []]
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, BaseException):
            logger.error("notification round: %r", result)
    fleet.notifier.retain({e.view.key for e in entries})


async def run(fleet: Fleet) -> None:
    await every(fleet, fleet.settings.notify_interval_s, notify_round, "notify")


__all__ = ["notify_round", "notify_target", "run"]
