"""Responses kept by the provider: background mode, retrieve and cancel (docs/wire-formats.md §4.4).

- ``POST /v1/responses`` with ``background: true`` (not streamed) answers at once with the response object in
  ``status: queued``, ``background: true``, ``usage: null``; the provider generates it afterwards.
- ``GET /v1/responses/{id}`` answers the stored response object as it is now: here a background response is
  ``in_progress`` for the first ``x-upstream-background-polls`` - 1 retrieves (header on the create; default 2)
  and ``completed`` (with its ``usage``) from then on; a response created without ``background`` is complete at
  once. ``?stream=true`` answers the remaining events as SSE (``response.in_progress``, the text as
  ``response.output_text.delta``, then ``response.completed`` with the usage), and completes it.
- ``POST /v1/responses/{id}/cancel`` (background only): ``status: cancelled``; its usage is the prompt and the
  output generated so far (none here). Cancelling a response that already finished: 400.
- Unknown id: 404 ``No response found with id '…'.``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import sse
from .ledger import Ledger, ServedRecord

POLLS_HEADER = "x-upstream-background-polls"
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})


@dataclass
class Kept:
    final: dict[str, Any]  # the response object as it ends (status, output, usage)
    ledger: Ledger
    record: ServedRecord
    background: bool
    polls_left: int
    status: str


STORE = web.AppKey("tokenbudget_testing.upstream.responses", dict[str, Kept])


def keep(app: web.Application, ledger: Ledger, final: dict[str, Any], record: ServedRecord, background: bool,
         polls: int) -> None:
    app[STORE][final["id"]] = Kept(final, ledger, record, background, polls,
                                   "queued" if background else final["status"])


def _not_found(response_id: str) -> web.Response:
    return web.json_response({"error": {"message": f"No response found with id '{response_id}'.",
                                        "type": "invalid_request_error", "param": None, "code": None}}, status=404)


def _now(kept: Kept, finish: bool) -> dict[str, Any]:
    """The response object as a retrieve sees it; the first terminal view delivers the usage (ledger)."""
    if kept.status not in TERMINAL:
        kept.polls_left -= 1
        kept.status = kept.final["status"] if finish or kept.polls_left <= 0 else "in_progress"
    if kept.status in TERMINAL:
        return {**kept.final, "status": kept.status}
    return {**kept.final, "status": kept.status, "output": [], "usage": None, "completed_at": None}


def _delivered(kept: Kept) -> None:
    kept.ledger.update(kept.record, usage_sent=True, completed=True)


async def retrieve(request: web.Request) -> web.StreamResponse:
    kept = request.app[STORE].get(request.match_info["response_id"])
    if kept is None:
        return _not_found(request.match_info["response_id"])
    stream = request.query.get("stream") == "true"
    view = _now(kept, finish=stream)
    if view["status"] in TERMINAL:
        _delivered(kept)
    if not stream:
        return web.json_response(view)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    text = "".join(part.get("text", "") for item in view["output"] for part in item.get("content") or [])
    events: list[dict[str, Any]] = [
        {"type": "response.in_progress", "response": {**view, "status": "in_progress", "usage": None}},
        {"type": "response.output_text.delta", "item_id": "msg_" + view["id"], "output_index": 0,
         "content_index": 0, "delta": text, "logprobs": []},
        {"type": f"response.{view['status']}", "response": view}]
    for sequence, event in enumerate(events):
        event["sequence_number"] = sequence
        await resp.write(sse.named_event(event["type"], event))
    await resp.write_eof()
    return resp


async def cancel(request: web.Request) -> web.Response:
    kept = request.app[STORE].get(request.match_info["response_id"])
    if kept is None:
        return _not_found(request.match_info["response_id"])
    if not kept.background or kept.status in TERMINAL:
        return web.json_response({"error": {"message": "Cannot cancel a response that is not in progress.",
                                            "type": "invalid_request_error", "param": None, "code": None}},
                                 status=400)
    usage = kept.final.get("usage")
    if isinstance(usage, dict):  # nothing generated yet: the prompt only
        usage = {**usage, "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": usage["input_tokens"]}
    kept.final = {**kept.final, "status": "cancelled", "output": [], "usage": usage, "completed_at": None}
    kept.status = "cancelled"
    kept.ledger.update(kept.record, output_tokens=0, reasoning_tokens=0, finish_reason="cancelled")
    _delivered(kept)
    return web.json_response(kept.final)
