"""``python -m tokenbudget_testing.upstream --host 127.0.0.1 --port N``: run the test upstream as a process.

Prints one line ``tokenbudget-testupstream listening on http://HOST:PORT`` to stdout once it accepts
connections (with ``--port 0`` this is how a parent process learns the port), then serves until
SIGINT/SIGTERM. Other settings come from ``TOKENBUDGET_TESTUPSTREAM_*`` environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .app import serve
from .settings import UpstreamSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (host, port and the two wire-quirk switches)."""
    parser = argparse.ArgumentParser(prog="python -m tokenbudget_testing.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--anthropic-json-padding", action="store_true", help="pad Anthropic SSE JSON like the live API"
    )
    parser.add_argument("--gemini-lf", action="store_true", help="end Gemini SSE lines with LF, not CRLF")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Serve until a termination signal arrives."""
    overrides: dict[str, bool] = {}
    if args.anthropic_json_padding:
        overrides["anthropic_json_padding"] = True
    if args.gemini_lf:
        overrides["gemini_crlf"] = False
    settings = UpstreamSettings().model_copy(update=overrides)  # environment first, flags on top
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with serve(args.host, args.port, settings=settings) as url:
        print(f"tokenbudget-testupstream listening on {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    asyncio.run(run(parse_args(argv)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
