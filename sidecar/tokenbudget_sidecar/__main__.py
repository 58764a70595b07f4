"""`tokenbudget-sidecar`: run the data port (loopback) and the admin port side by side."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from aiohttp import web

from tokenbudget_sidecar import logs
from tokenbudget_sidecar.app import create_admin_app, create_app, create_state, data_ssl_context
from tokenbudget_sidecar.settings import Settings

log = logging.getLogger("tokenbudget_sidecar")


async def serve(settings: Settings) -> None:
    state = create_state(settings)
    data = web.AppRunner(create_app(settings, state), access_log=None)
    admin = web.AppRunner(create_admin_app(state), access_log=None)
    await data.setup()
    await admin.setup()
    # Everything made so far (modules, pydantic schemas, the price catalog: most of the heap) lives as long as
    # the process: freeze it out of the collector's view, so a full collection walks only what calls made
    # since (timed with gc.callbacks over ~13,000 calls at c=16: a full collection took 35 ms before, 10 ms
    # after; it shows in benchmarks/sidecar_latency.py's c=64 p99).
    gc.collect()
    gc.freeze()
    await web.TCPSite(data, settings.data_host, settings.data_port, backlog=1024,
                      ssl_context=data_ssl_context(settings)).start()
    await web.TCPSite(admin, settings.admin_host, settings.admin_port).start()
    log.info("listening", extra={"record": {"data": f"{settings.data_host}:{settings.data_port}",
                                            "admin": f"{settings.admin_host}:{settings.admin_port}",
                                            "policy": state.policy.version}})
    try:
        await asyncio.Event().wait()
    finally:
        await data.cleanup()
        await admin.cleanup()


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
