"""OpenAI Responses API: ``POST /v1/responses`` (docs/wire-formats.md §4).

Split from :mod:`openai_dialect` because its event stream is the longest of all: named events with a
``sequence_number``, ``response.created`` → output items (a ``reasoning`` item when the model
reasoned, then the ``message``) → ``response.completed`` / ``response.incomplete``. Usage only ever
appears in that terminal event (``input_tokens`` includes cached tokens, ``output_tokens`` includes
reasoning); there is no ``[DONE]`` sentinel. An in-stream failure is a flat ``error`` event. A
reasoning model whose thinking ate ``max_output_tokens`` ends ``incomplete`` with only the reasoning
item, as the real API does.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from . import responses_background, sse
from .behaviour import Plan, effort_budget, make_plan
from .call import Call, Frame, UpstreamError
from .dialect import optional_int, require_object
from .openai_dialect import hidden_reasoning, is_reasoning_model
from .tokens import answer_words, compact_json, count_messages, group


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Responses input as chat messages for counting (see tokens.py)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    source = body.get("input")
    if isinstance(source, str):
        messages.append({"role": "user", "content": source})
    elif isinstance(source, list):
        for item in source:
            if isinstance(item, dict) and "role" in item:
                messages.append({"role": item["role"], "content": item.get("content")})
            else:
                messages.append({"item": compact_json(item)})
    return messages


def responses_usage(plan: Plan) -> dict[str, Any]:
    """A Responses ``usage`` object."""
    return {
        "input_tokens": plan.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": plan.cached_tokens,
            "cache_write_tokens": plan.cache_creation_tokens,
        },
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": plan.prompt_tokens + plan.output_tokens,
    }


async def responses(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/responses``."""
    body = require_object(raw)
    model = call.record.model
    if not model:
        raise UpstreamError(
            400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
        )
    if "input" not in body and "previous_response_id" not in body and "conversation" not in body:
        raise UpstreamError(
            400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    assert isinstance(reasoning, dict)
    effort = reasoning.get("effort")
    if call.settings.strict_params and effort is not None and not is_reasoning_model(model):
        raise UpstreamError(
            400,
            "Unsupported parameter: 'reasoning.effort' is not supported with this model.",
            param="reasoning.effort",
            code="unsupported_parameter",
        )
    stream = body.get("stream") is True
    cap = optional_int(body, "max_output_tokens")
    ctl = call.ctl
    text_format = body.get("text", {}).get("format") if isinstance(body.get("text"), dict) else None
    plan = make_plan(
        ctl,
        counted_prompt=await call.count(
            lambda: count_messages(_responses_messages(body), [body.get("tools"), text_format])
        ),
        output_cap=cap,
        thinking_budget=effort_budget(effort, call.settings),
        thinking_enabled=effort != "none",
    )
    status = "incomplete" if plan.truncated else "completed"
    call.note_plan(plan, status)
    words = answer_words(plan.visible_tokens)
    text = "".join(words)
    created = int(time.time())
    usage = None if ctl.omit_usage else responses_usage(plan)
    reasoning_id = "rs_" + call.request_id.removeprefix("resp_")
    message_id = "msg_" + call.request_id.removeprefix("resp_")
    reasoning_item = {"id": reasoning_id, "type": "reasoning", "summary": []}
    has_message = plan.visible_tokens > 0 or plan.reasoning_tokens == 0
    message_status = "incomplete" if plan.truncated else "completed"

    def message_item(content_text: str | None, item_status: str) -> dict[str, Any]:
        content = (
            []
            if content_text is None
            else [{"type": "output_text", "text": content_text, "annotations": [], "logprobs": []}]
        )
        return {"id": message_id, "type": "message", "status": item_status, "role": "assistant", "content": content}

    output: list[dict[str, Any]] = []
    if plan.reasoning_tokens > 0:
        output.append(reasoning_item)
    if has_message:
        output.append(message_item(text, message_status))

    def response_object(state: str, items: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        return {
            "id": call.request_id,
            "object": "response",
            "created_at": created,
            "status": state,
            "background": False,
            "completed_at": int(time.time()) if final and state == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if final and state == "incomplete" else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": cap,
            "max_tool_calls": None,
            "model": model,
            "output": items,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": effort, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": usage if final else None,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    background = body.get("background") is True
    polls = int(call.request.headers.get(responses_background.POLLS_HEADER, "2"))
    final = response_object(status, output, True)
    final["background"] = background
    if body.get("store", True) is not False:  # kept for retrieve (background responses always are)
        responses_background.keep(call.request.app, call.ledger, final, call.record, background, polls)
    if background and not stream:  # answered at once; generated "afterwards", its usage shown by a retrieve
        queued = {**response_object("queued", [], False), "background": True}
        return await call.send_json(queued, usage_sent=False, indent=2)
    if not stream:
        paced = plan.chunk_count(ctl.chunk_tokens)
        return await call.send_json(
            response_object(status, output, final=True),
            output_tokens=plan.output_tokens,
            paced_chunks=paced,
            usage_sent=usage is not None,
            indent=2,
        )

    sequence = 0

    def event(payload: dict[str, Any]) -> bytes:
        nonlocal sequence
        payload["sequence_number"] = sequence
        sequence += 1
        return sse.named_event(payload["type"], payload)

    frames = [
        Frame(event({"type": "response.created", "response": response_object("in_progress", [], False)})),
        Frame(event({"type": "response.in_progress", "response": response_object("in_progress", [], False)})),
    ]
    index = 0
    if plan.reasoning_tokens > 0:
        frames.append(
            Frame(event({"type": "response.output_item.added", "output_index": index, "item": reasoning_item}))
        )
        frames += hidden_reasoning(plan, ctl.chunk_tokens)
        frames.append(
            Frame(event({"type": "response.output_item.done", "output_index": index, "item": reasoning_item}))
        )
        index += 1
    if has_message:
        where = {"item_id": message_id, "output_index": index, "content_index": 0}
        frames.append(
            Frame(
                event(
                    {
                        "type": "response.output_item.added",
                        "output_index": index,
                        "item": message_item(None, "in_progress"),
                    }
                )
            )
        )
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        frames.append(Frame(event({"type": "response.content_part.added", **where, "part": empty_part})))
        for delta, tokens in group(words, ctl.chunk_tokens):
            frames.append(
                Frame(
                    event({"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}),
                    tokens,
                    paced=True,
                    content=True,
                )
            )
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        frames.append(Frame(event({"type": "response.output_text.done", **where, "text": text, "logprobs": []})))
        frames.append(Frame(event({"type": "response.content_part.done", **where, "part": part})))
        frames.append(
            Frame(
                event(
                    {
                        "type": "response.output_item.done",
                        "output_index": index,
                        "item": message_item(text, message_status),
                    }
                )
            )
        )
    terminal = "response.incomplete" if plan.truncated else "response.completed"
    frames.append(
        Frame(
            event({"type": terminal, "response": response_object(status, output, True)}),
            final_usage=usage is not None,
        )
    )

    def error_frame(written: int) -> Frame:
        return Frame(
            sse.named_event(
                "error",
                {
                    "type": "error",
                    "code": "server_error",
                    "message": "The server had an error while processing your request. Sorry about that!",
                    "param": None,
                    "sequence_number": written,
                },
            )
        )

    return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8", error_frame=error_frame)
