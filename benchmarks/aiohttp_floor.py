#!/usr/bin/env python3
"""The least a Python reverse proxy on aiohttp can cost: the floor under the sidecar's per-call CPU.

A pass-through with the sidecar's own client settings (one pooled ClientSession, no decompression) and
its own relay (a JSON answer read whole and sent with its headers; a stream relayed chunk by chunk as
read), and nothing else: no body parsing, no metering, no record. ``benchmarks/sidecar_latency.py``
starts it beside the sidecar so that, in the same run, the sidecar's CPU per call splits into what
aiohttp and the event loop cost (this floor) and what tokenbudget adds on top.

``--server app`` serves through ``web.Application`` (router, request objects: what the sidecar uses);
``--server lowlevel`` through aiohttp's low-level ``web.Server`` (a handler called with the request, no
router), to see what the lowest-level server API would save.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "content-length", "host",
                        "content-encoding"))


def make_handler(upstream: str, session: Callable[[], aiohttp.ClientSession]
                 ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with session().request(request.method, upstream + request.path_qs, data=body, headers=headers) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status, headers=out)
            resp = web.StreamResponse(status=up.status, headers=out)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    return handle


async def serve(host: str, port: int, upstream: str, server: str) -> None:
    connector = aiohttp.TCPConnector(limit=100, limit_per_host=0, ttl_dns_cache=300)
    client = aiohttp.ClientSession(connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                                   timeout=aiohttp.ClientTimeout(total=None, sock_read=300))
    handle = make_handler(upstream, lambda: client)
    runner: web.BaseRunner
    if server == "lowlevel":
        runner = web.ServerRunner(web.Server(handle), access_log=None)
    else:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--server", choices=("app", "lowlevel"), default="app")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.upstream.rstrip("/"), args.server))


if __name__ == "__main__":
    main()
