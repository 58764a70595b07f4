"""Where a call is forwarded: under its upstream's base URL, and nowhere else.

The sidecar adds the provider key to what it forwards, so a path that could leave the base URL would lend
that key to any path of the provider's host (or, through a dot segment at the root, to another service
behind the same gateway). aiohttp hands the route its tail percent-decoded (`..%2f` is `../`), and yarl
resolves dot segments when it parses a URL: so a tail with a `.` or `..` segment is refused, and the tail
is percent-encoded again before it is joined, so a decoded `?` or `#` stays part of the path.
The absolute form of a request line and the Host header never choose the destination: only the policy
does (tests/sidecar/test_upstream_confinement.py, docs/threat-model.md).
"""

from __future__ import annotations

from urllib.parse import quote

from yarl import URL

PATH_SAFE = "/:@!$&'()*+,;=-._~"  # RFC 3986 pchar and "/", left as they are


class OutsideUpstream(ValueError):
    """The request's path would not stay under the upstream's base URL."""


def check_path(path: str) -> None:
    """Refuse a (decoded) path with a `.` or `..` segment: resolved, it could leave the base path."""
    if any(segment in (".", "..") for segment in path.split("/")):
        raise OutsideUpstream("tokenbudget: a path with '.' or '..' segments is not forwarded")


def forward_url(base_url: str, path: str, query_string: str) -> URL:
    """The URL to call: the base URL, the app's path (re-encoded) under it, the app's query string."""
    check_path(path)
    base = URL(base_url)
    url = URL(base_url.rstrip("/") + quote(path, safe=PATH_SAFE) + (f"?{query_string}" if query_string else ""))
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port) or not url.path.startswith(
            base.path.rstrip("/")):
        raise OutsideUpstream(f"tokenbudget: {path!r} does not stay under the upstream's base URL")
    return url
