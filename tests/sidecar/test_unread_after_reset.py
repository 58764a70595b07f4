"""A reset that lands with the stream's last events must not lose them (relay.unread).

aiohttp's StreamReader raises on every read once its exception is set and drops what it holds; the sidecar
reads those bytes past it, because the provider sent and bills them. These tests pin the aiohttp behaviour
the workaround relies on, so an aiohttp upgrade that changes it fails here instead of silently.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import aiohttp
import pytest

from tokenbudget_sidecar.relay import unread


def reader() -> aiohttp.StreamReader:
    return aiohttp.StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())


async def test_aiohttp_drops_what_it_holds_once_a_reset_is_set_and_unread_recovers_it() -> None:
    r = reader()
    r.feed_data(b'data: {"a":1}\n\n')
    r.feed_data(b'data: {"b":2}\n\ndata: {"c"')
    assert await r.readexactly(5) == b"data:"
    reset = aiohttp.ClientPayloadError("Response payload is not completed")
    r.set_exception(reset)
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.readany()  # aiohttp's own read: the held bytes are gone for it
    assert unread(r) == b' {"a":1}\n\ndata: {"b":2}\n\ndata: {"c"'
    assert unread(r) == b"", "handed out once"
    assert r.exception() is reset, "the failure stays for everyone else"


async def test_nothing_is_read_from_a_stream_that_did_not_fail() -> None:
    r = reader()
    r.feed_data(b"data: x\n\n")
    assert unread(r) == b""
    assert await r.readany() == b"data: x\n\n"
