"""What the sidecar sends each way besides the body: headers it forwards or replaces, and its own errors
in the provider's shape. Shared by the metered path (proxy.py) and the transparent one (transparent.py).
"""

from __future__ import annotations

import logging

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_sidecar.dialects import Dialect

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "content-encoding",
})
AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")  # api-key: Azure OpenAI

log = logging.getLogger(__name__)


def error_response(dialect: Dialect, status: int, message: str, *, retry_after: float | None = None,
                   request_id: str | None = None, param: str | None = None, code: str | None = None) -> web.Response:
    headers = {"x-tokenbudget-request-id": request_id} if request_id else {}
    if retry_after is not None:
        headers["retry-after"] = str(max(int(retry_after + 0.999), 0))
    return web.json_response(dialect.error(status, message, retry_after=retry_after, param=param, code=code),
                             status=status, headers=headers)


class KeyUnavailable(Exception):
    """The upstream's key file cannot be used: answered 502 in the provider's shape, naming the upstream and
    the Secret (never a byte of the key), instead of forwarding the app's placeholder."""


def upstream_key(upstream: PolicyUpstream) -> str | None:
    """The key the sidecar sends for `upstream` (read per call, so a rotated Secret applies at once)."""
    path = upstream.api_key_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except FileNotFoundError:
        why = "is missing"
    except (OSError, UnicodeDecodeError) as exc:  # the type only: a decode error's text quotes a byte of the key
        why = f"cannot be read ({type(exc).__name__})"
    else:
        if key:
            return key
        why = "is empty"
    secret = f"Secret {upstream.api_key_secret!r}, " if upstream.api_key_secret else ""
    raise KeyUnavailable(
        f"tokenbudget: the API key of upstream {upstream.name!r} ({secret}file {path}) {why}. The sidecar sends "
        "the provider's key itself (apiKeySecretRef); the Secret is mounted into the sidecar when the pod is "
        "created: create or fix the Secret, then restart the pod")


def upstream_headers(incoming: CIMultiDictProxy[str], upstream: PolicyUpstream, dialect: Dialect) -> CIMultiDict[str]:
    """The app's headers less hop-by-hop ones; with a key file, the provider's auth header from it replaces
    whatever the app sent (raises KeyUnavailable when the file cannot be used)."""
    out = CIMultiDict((k, v) for k, v in incoming.items()
                      if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-tokenbudget-"))
    out["accept-encoding"] = "identity"  # we parse what comes back; compression would hide the usage
    key = upstream_key(upstream)
    if key is not None:
        for name in AUTH_HEADERS:
            out.popall(name, None)
        out.update(dialect.auth(key))
    return out


def key_unavailable(dialect: Dialect, exc: KeyUnavailable, request_id: str) -> web.Response:
    log.warning("upstream key unavailable", extra={"record": {"request_id": request_id, "error": str(exc)}})
    return error_response(dialect, 502, str(exc), request_id=request_id)


def client_headers(incoming: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    out = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP)
    out["x-tokenbudget-request-id"] = request_id
    return out
