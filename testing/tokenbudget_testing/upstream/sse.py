"""Server-sent-event framing as each provider spells it.

Kept separate from the dialects because the quirks are about bytes, not JSON: OpenAI Chat and Gemini
send bare ``data:`` lines, OpenAI Responses and Anthropic add ``event:`` lines, Anthropic's live API
pads its JSON with spaces before the closing brace (valid JSON that breaks naive string matching),
and Gemini's live API ends events with CRLF.
"""

from __future__ import annotations

from typing import Any

from .call import dumps


def data_event(payload: Any, *, crlf: bool = False, pretty_separators: bool = False) -> bytes:
    """``data: <json>`` followed by a blank line (LF or CRLF line endings)."""
    newline = "\r\n" if crlf else "\n"
    return f"data: {dumps(payload, pretty_separators=pretty_separators)}{newline}{newline}".encode()


def named_event(name: str, payload: Any, *, pad: int = 0) -> bytes:
    """``event: <name>`` + ``data: <json>``; ``pad`` spaces go before the JSON's final ``}``."""
    text = dumps(payload)
    if pad > 0 and text.endswith("}"):
        text = text[:-1] + " " * pad + "}"
    return f"event: {name}\ndata: {text}\n\n".encode()


DONE = b"data: [DONE]\n\n"
