"""The HTTP server's connection deadline: a client that never finishes its request headers is
closed after ``http.request_timeout``; a long response (an SSE stream) is not cut by it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from ztpd.config import HttpConfig
from ztpd.http.server import HttpService, make_app

from ..daemon import free_port

TIMEOUT = 1.0


async def _stream(request: web.Request) -> web.StreamResponse:
    """Answers for three request timeouts, one chunk at a time."""
    response = web.StreamResponse()
    await response.prepare(request)
    for i in range(6):
        await response.write(f"{i}\n".encode())
        await asyncio.sleep(TIMEOUT / 2)
    await response.write_eof()
    return response


@pytest.fixture
async def url() -> AsyncIterator[str]:
    config = HttpConfig(listen=["127.0.0.1"], port=free_port(), request_timeout=TIMEOUT)
    app = make_app(config)
    app.router.add_get("/stream", _stream)
    async with HttpService(config, app):
        yield config.base_url


async def test_a_client_trickling_headers_is_closed_and_others_are_served(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    start = time.monotonic()
    closed_after: float | None = None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # One header byte every tenth of a second: never a whole request, never idle.
        for _ in range(200):
            try:
                writer.write(b"X")
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed_after = time.monotonic() - start
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = time.monotonic() - start
                break
        async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as r:
            assert r.status == 200
    finally:
        writer.close()
    assert closed_after is not None, "the trickling client was never closed"
    assert TIMEOUT * 0.9 <= closed_after < TIMEOUT * 15


async def test_a_response_longer_than_the_timeout_is_not_cut(url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(url + "/stream") as r:
        body = await r.text()
    assert body.split() == [str(i) for i in range(6)]
