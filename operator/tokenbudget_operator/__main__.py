"""`tokenbudget-operator`: load the handler modules and run kopf cluster-wide.

A thin loader: each module registers its kopf handlers on import, so a new concern (reconciling budgets,
leases) is one more entry in HANDLER_MODULES. Settings come from TOKENBUDGET_OPERATOR_* (config.py).
"""

from __future__ import annotations

import importlib
import logging
from typing import Final

import kopf

from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.runtime import MEMO_KEY, Runtime

HANDLER_MODULES: Final = (
    "tokenbudget_operator.kopfsettings",
    "tokenbudget_operator.ops",
    "tokenbudget_operator.injector.handlers",
    "tokenbudget_operator.reconciler.handlers",
)


def configure_logging(settings: OperatorSettings) -> None:
    """kopf's formatter (JSON by default: one object per line, extra fields included), at our level."""
    kopf.configure(
        verbose=settings.log_level.upper() == "DEBUG",
        log_format=kopf.LogFormat.JSON if settings.log_format.lower() == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger().setLevel(settings.log_level.upper())


def main() -> None:
    settings = OperatorSettings()
    configure_logging(settings)
    for module in HANDLER_MODULES:
        importlib.import_module(module)
    # standalone: no kopf peering objects; the webhook is stateless, and the handlers added later must bring
    # their own leader election if they need one.
    kopf.run(clusterwide=True, standalone=True, memo=kopf.Memo({MEMO_KEY: Runtime(settings)}))


if __name__ == "__main__":
    main()
