"""Where the data path meets features.py: `begin` when a call is read, `finish` when its record is made, and
the `POST /outcomes` route on the data port for acceptance reports.

Kept out of proxy.py so the proxy gains two one-line hooks, and so a bug here costs a call its features,
never the call itself: every hook logs and carries on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tokenbudget_api.insights import ACCEPTED_HEADER
from tokenbudget_api.usage import Acceptance, UsageRecord, UsageSource
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.dialects import Call
from tokenbudget_sidecar.features import LRU, FeatureMemory, Pending
from tokenbudget_sidecar.state import State

log = logging.getLogger(__name__)
OUTCOME_OPERATION = "outcome"


class FeatureHooks:
    def __init__(self, state: State, memory: FeatureMemory | None = None) -> None:
        self.state = state
        self.memory = memory or FeatureMemory()
        self.pending: LRU[str, Pending] = LRU(4096)  # calls in flight (bounded: a lost one is forgotten)

    def conversation_header(self) -> str | None:
        """The first budget (by name) that names an app header for conversations."""
        for budget in self.state.policy.budgets:
            if budget.spec.insights is not None and budget.spec.insights.conversation_header:
                return budget.spec.insights.conversation_header
        return None

    def budget_names(self) -> list[str]:
        return [b.key for b in self.state.policy.budgets]

    def enabled(self) -> bool:
        """Features are read only for pods a budget with `spec.insights` selects: they count every new
        message with tiktoken, which loads an encoding (~74 MiB per pod) that lazy counting otherwise spares."""
        return any(b.spec.insights is not None for b in self.state.policy.budgets)

    async def begin(self, record: UsageRecord, call: Call, body: dict[str, Any], headers: Mapping[str, str]) -> None:
        """Read the call's features (before any rewrite: what the app sent) and any acceptance it reports."""
        if not self.enabled():
            return
        name = tokens.encoding_name(call.model)
        if name not in tokens.TOKENIZER.encodings and name not in tokens.TOKENIZER.failures:
            await asyncio.to_thread(tokens.TOKENIZER.get, name)  # a first load takes ~1 s: not on the loop
        try:
            accepted = headers.get(ACCEPTED_HEADER)
            if accepted:
                record.accepted = self.memory.accept(accepted, self.budget_names())
            self.pending.put(record.request_id, self.memory.observe(
                call.operation, call.model, body, headers, self.conversation_header()))
        except Exception:
            log.exception("features of a call could not be read", extra={"record": {"request_id": record.request_id}})

    def finish(self, record: UsageRecord) -> None:
        pending = self.pending.data.pop(record.request_id, None)
        if pending is None:
            return
        try:
            upstream = self.state.policy.upstream(record.upstream)
            self.memory.settle(pending, record, self.state.prices, upstream.base_url if upstream else "")
        except Exception:
            log.exception("features of a call could not be settled",
                          extra={"record": {"request_id": record.request_id}})

    async def outcomes(self, request: web.Request) -> web.Response:
        """POST /outcomes {"responseId": "..."}: the app accepted that answer (optional; see the README)."""
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError as exc:
            return _problem(f"body is not valid JSON: {exc}")
        response_id = body.get("responseId", body.get("response_id")) if isinstance(body, dict) else None
        if not isinstance(response_id, str) or not response_id.strip() or len(response_id) > 256:
            return _problem('body must be a JSON object with "responseId": the provider\'s id of the accepted '
                            "answer (a non-empty string of at most 256 characters)")
        accepted = self.memory.accept(response_id, self.budget_names())
        if accepted is not None:
            self.report(accepted)
        return web.json_response({"responseId": response_id.strip(), "counted": accepted is not None,
                                  "known": accepted is not None and accepted.conversation is not None},
                                 status=202)

    def report(self, accepted: Acceptance) -> UsageRecord:
        """A record of its own for a report made outside a call: counts against no budget, costs nothing."""
        record = UsageRecord(request_id=uuid.uuid4().hex, time=self.state.clock.now(), upstream="", dialect="",
                             operation=OUTCOME_OPERATION, model="", source=UsageSource.NONE, accepted=accepted)
        self.state.usage_log.append(record)
        log.info("outcome", extra={"record": record.model_dump(mode="json", exclude={"time"})})
        return record


def _problem(message: str) -> web.Response:
    return web.json_response({"error": {"message": f"tokenbudget: {message}", "type": "invalid_request_error"}},
                             status=400)


__all__ = ["OUTCOME_OPERATION", "FeatureHooks"]
