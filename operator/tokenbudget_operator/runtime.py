"""The operator's in-process state, carried in kopf's memo so every handler reaches it without globals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenbudget_operator.config import InjectionConfig, OperatorSettings

MEMO_KEY = "tokenbudget"


@dataclass
class Runtime:
    settings: OperatorSettings
    injection: InjectionConfig | None = None  # set at startup, once the cluster version is known
    server_version: str = ""
    readiness: dict[str, bool] = field(default_factory=dict)  # component → ready; /readyz needs all True
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run at kopf cleanup

    @property
    def ready(self) -> bool:
        return bool(self.readiness) and all(self.readiness.values())


def runtime(memo: Mapping[str, Any]) -> Runtime:
    """The Runtime that __main__ put into kopf's memo."""
    found = memo.get(MEMO_KEY)
    if not isinstance(found, Runtime):
        raise RuntimeError(f"kopf memo has no {MEMO_KEY!r} Runtime: start the operator with tokenbudget-operator")
    return found
