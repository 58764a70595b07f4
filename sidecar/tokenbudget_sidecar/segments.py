"""A prompt cut into the parts waste insights compare across calls: a head (system prompt, tools) and each
leading message, with the tool results inside each message, per provider format.

Why here and not in the dialects: the dialects read what admission needs (model, caps, text to count);
this reads the prompt's structure, which only features.py needs, and a dialect change for another issue
(images, audio) cannot break it. Only JSON values are handed on: the text is hashed and counted, never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

TOOL_OUTPUT_ITEMS = frozenset({"function_call_output", "custom_tool_call_output", "computer_call_output",
                               "local_shell_call_output", "mcp_call_output"})  # Responses input items


@dataclass(frozen=True)
class Segment:
    """One part of a prompt: `value` is hashed and counted, `tool` holds the tool results inside it."""

    value: Any
    tool: tuple[Any, ...] = ()
    message: bool = True  # a message costs framing tokens; the head does not


def _head(body: JSON, *keys: str) -> list[Segment]:
    value = {k: body[k] for k in keys if body.get(k) is not None}
    return [Segment(value, message=False)] if value else []


def _chat(body: JSON) -> list[Segment]:
    out = _head(body, "tools", "functions", "response_format")
    for msg in body.get("messages") or []:
        tool = isinstance(msg, dict) and msg.get("role") in ("tool", "function")
        out.append(Segment(msg, (msg,) if tool else ()))
    return out


def _responses(body: JSON) -> list[Segment]:
    out = _head(body, "instructions", "tools", "text")
    items = body.get("input")
    if isinstance(items, str):
        return [*out, Segment(items)]
    for item in items or []:
        tool = isinstance(item, dict) and item.get("type") in TOOL_OUTPUT_ITEMS
        out.append(Segment(item, (item,) if tool else ()))
    return out


def _messages(body: JSON) -> list[Segment]:
    out = _head(body, "system", "tools")
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        tool = tuple(b for b in content if isinstance(b, dict) and b.get("type") == "tool_result") \
            if isinstance(content, list) else ()
        out.append(Segment(msg, tool))
    return out


def _generate(body: JSON) -> list[Segment]:
    out = _head(body, "systemInstruction", "system_instruction", "tools")
    for content in body.get("contents") or []:
        parts = content.get("parts") if isinstance(content, dict) else None
        tool = tuple(p for p in parts if isinstance(p, dict) and ("functionResponse" in p or
                                                                  "function_response" in p)) \
            if isinstance(parts, list) else ()
        out.append(Segment(content, tool))
    return out


def _whole(body: JSON, key: str) -> list[Segment]:
    return [Segment(body.get(key))] if body.get(key) is not None else []


def segments(operation: str, body: JSON) -> list[Segment]:
    """The prompt of one call as segments, head first; empty for an operation with no prompt we read."""
    if operation == "chat":
        return _chat(body)
    if operation == "responses":
        return _responses(body)
    if operation == "messages":
        return _messages(body)
    if operation == "generate":
        return _generate(body)
    if operation == "completions":
        return _whole(body, "prompt")
    if operation in ("embeddings", "embed"):
        return _whole(body, "input") or _whole(body, "content") or _whole(body, "requests")
    return []


__all__ = ["Segment", "segments"]
