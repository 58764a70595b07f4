"""What the sidecar sends each way besides the body: headers it forwards or replaces, and its own errors
in the provider's shape. Shared by the metered path (proxy.py) and the transparent one (transparent.py).
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tokenbudget_api.policy import PolicyUpstream
from tokenbudget_sidecar.dialects import Dialect

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "content-encoding",
})
AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


def error_response(dialect: Dialect, status: int, message: str, *, retry_after: float | None = None,
                   request_id: str | None = None, param: str | None = None, code: str | None = None) -> web.Response:
    headers = {"x-tokenbudget-request-id": request_id} if request_id else {}
    if retry_after is not None:
        headers["retry-after"] = str(max(int(retry_after + 0.999), 0))
    return web.json_response(dialect.error(status, message, retry_after=retry_after, param=param, code=code),
                             status=status, headers=headers)


def upstream_headers(incoming: CIMultiDictProxy[str], upstream: PolicyUpstream, dialect: Dialect) -> CIMultiDict[str]:
    out = CIMultiDict((k, v) for k, v in incoming.items()
                      if k.lower() not in HOP_BY_HOP and not k.lower().startswith("x-tokenbudget-"))
    out["accept-encoding"] = "identity"  # we parse what comes back; compression would hide the usage
    if upstream.api_key_file:
        for name in AUTH_HEADERS:
            out.popall(name, None)
        with open(upstream.api_key_file, encoding="utf-8") as fh:
            out.update(dialect.auth(fh.read().strip()))
    return out


def client_headers(incoming: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
    out = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP)
    out["x-tokenbudget-request-id"] = request_id
    return out
