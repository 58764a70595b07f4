"""kopf's own settings: its annotations and finalizer under our group, quiet event posting."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from tokenbudget_api import names


@kopf.on.startup(id="tokenbudget-kopf-settings")
async def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    # tokenbudget.io/... instead of kopf.zalando.org/... on everything kopf marks.
    settings.persistence.finalizer = names.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    # Kubernetes Events only for warnings and errors: per-object info would flood the event store.
    settings.posting.level = logging.WARNING
    # Re-list watches every 10 minutes at most, so a silently dropped connection cannot freeze an index.
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
