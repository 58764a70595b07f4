"""A WebSocket session's budget check, once, at connect (websocket.py).

Its own module because it is not a call's admission (admission.py): nothing is held and no concurrency slot
is kept, since a session's responses are counted as each one reports its usage. So the question at connect is
only whether a call would be blocked now: the model not allowed, a Block stage, a window or this pod's grant
with no room left. The overrun this allows, what the responses of sessions already open bill past a limit,
is in the README's table.
"""

from __future__ import annotations

from decimal import Decimal

from tokenbudget_api.tokenbudget import Action, FailMode, LimitKey
from tokenbudget_sidecar import refusal_reasons
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import BudgetState, Refused
from tokenbudget_sidecar.refusal_reasons import LEASE_ROUND_S, at_block_stage, block_lifts_in
from tokenbudget_sidecar.windows import key_for


def admit_session(admission: Admission, model: str, user: str | None) -> list[str]:
    """Raise Refused (the budget's words and Retry-After, as a call's refusal) or return the DryRun decisions.

    `model` is "" when the session names it only after the upgrade (Gemini's setup, Responses' events): the
    allow list and per-Model windows are then not consulted.
    """
    decisions: list[str] = []
    now = admission.clock.now()
    for b in admission.budgets:
        if model and not b.models_allowed(model):
            _note(b, decisions, 403, f"tokenbudget: model {model} is not allowed by budget {b.name} "
                  "(spec.models.allow)")
        windows = [b.window(limit, key_for(limit, model, user)) for limit in b.spec.limits or []
                   if model or limit.per is not LimitKey.MODEL]
        if Action.BLOCK in {s.action for s in b.active_steps(windows, now)}:
            _note(b, decisions, 429, at_block_stage(b.name, windows, now), block_lifts_in(windows, now))
        for w in windows:
            least = Decimal(1) if w.limit.cost_usd is None else Decimal("0.000001")  # the least a call spends
            lease = w.lease(now)
            if lease is not None and not w.lease_holds(lease, least, now):  # as a reservation: failMode decides
                if b.spec.fail_mode is FailMode.CLOSED:
                    _note(b, decisions, 429, refusal_reasons.no_grant(b.name, w, lease, now), LEASE_ROUND_S)
            elif w.room(now) < least:
                # A grant short while the budget has room is refused at once (Retry-After: a lease round): a
                # session does not wait for the next push as a call does (proxy.py's admit).
                retry, grant = refusal_reasons.retry_after(w, least, now)
                _note(b, decisions, 429, refusal_reasons.exhausted(b.name, w, least, now, grant), retry)
    return decisions


def _note(b: BudgetState, decisions: list[str], status: int, message: str, retry_after: float | None = None) -> None:
    """Refuse the session, or in DryRun note that we would have (once per budget)."""
    if not b.dry_run:
        raise Refused(status, message, retry_after, budget=b.name)
    if f"{b.name}:DryRun:Block" not in decisions:
        decisions.append(f"{b.name}:DryRun:Block")


__all__ = ["admit_session"]
