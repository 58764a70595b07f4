"""`kubectl tokenbudget export POD`: a pod's usage records from its sidecar admin API, as a trace.

The sidecar keeps only records the operator has not yet acknowledged (the ledger forgets the rest), so
an export is the pod's recent calls, not its history. The admin port listens on the pod IP (8788) with
the namespace's bearer token, which is how the operator reaches it; from outside the cluster network,
`kubectl port-forward POD 8788` and `--admin-url http://127.0.0.1:8788`. Reading never acknowledges:
an export takes nothing away from the operator.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

from tokenbudget_api import names
from tokenbudget_api.admin import UsagePage
from tokenbudget_api.usage import UsageRecord

PAGE = 1000


class ExportError(Exception):
    """The admin port could not be read (refused, 401, not a usage page)."""


def records(admin_url: str, token: str | None, after: int = 0, timeout: float = 10.0) -> Iterator[UsageRecord]:
    """Every record with seq > `after`, page by page (GET /usage?after=&limit=), in seq order."""
    cursor = after
    while True:
        url = f"{admin_url.rstrip('/')}/usage?after={cursor}&limit={PAGE}"
        request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # the pod's admin port
                page = UsagePage.model_validate(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raise ExportError(f"{url}: HTTP {exc.code} {exc.read().decode(errors='replace')[:200]}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ExportError(f"{url}: {exc}") from exc
        yield from page.records
        if not page.records or page.cursor <= cursor:
            return
        cursor = page.cursor


def admin_url_for(pod_ip: str, port: int = names.SIDECAR_ADMIN_PORT) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip  # an IPv6 pod
    return f"http://{host}:{port}"
