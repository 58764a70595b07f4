"""What the generic request flow needs to know about a provider dialect.

The flow itself (parse body, read control headers, open the ledger record, inject HTTP-level
failures, catch a client that went away) is the same for every endpoint and lives in ``app.py``;
each dialect module contributes a :class:`DialectSpec` with its id scheme, error shape and how to
find the model and the stream flag, plus the handler that generates the answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .call import Call, UpstreamError
from .ledger import Dialect

#: (status, JSON body, extra headers) of an error answer.
ErrorAnswer = tuple[int, Any, dict[str, str]]
Handler = Callable[[Call, Any], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class DialectSpec:
    """Per-dialect hooks used by the generic flow."""

    dialect: Dialect
    new_id: Callable[[], str]
    render_error: Callable[[Call, UpstreamError], ErrorAnswer]
    success_headers: Callable[[str], dict[str, str]]
    model_of: Callable[[web.Request, Any], str]
    stream_of: Callable[[web.Request, Any], bool]
    in_stream_error_status: int
    """HTTP status a *non-streamed* call gets for x-upstream-fail: in-stream-error."""
    error_indent: int | None = None


def new_id(prefix: str, length: int = 24) -> str:
    """A fresh id in the provider's style, e.g. ``chatcmpl-3f…``."""
    return prefix + uuid.uuid4().hex[:length]


def format_seconds(seconds: float) -> str:
    """Seconds as a Retry-After value: ``2`` rather than ``2.0``, fractions kept."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def body_model(_request: web.Request, body: Any) -> str:
    """``model`` from a JSON body ('' when absent or not a string)."""
    if isinstance(body, dict):
        model = body.get("model")
        if isinstance(model, str):
            return model
    return ""


def body_stream(_request: web.Request, body: Any) -> bool:
    """``stream: true`` in a JSON body (``stream=true`` in a multipart form)."""
    return isinstance(body, dict) and body.get("stream") in (True, "true")


def require_object(body: Any) -> dict[str, Any]:
    """The body as a JSON object, or a 400 the caller renders in its own shape."""
    if not isinstance(body, dict):
        raise UpstreamError(400, "The request body must be a JSON object.")
    return body


def optional_int(body: dict[str, Any], name: str) -> int | None:
    """An integer field that may be absent or null; 400 when it is something else."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UpstreamError(400, f"Invalid type for '{name}': expected an integer.", param=name)
    return value
