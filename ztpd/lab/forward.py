"""A TCP forwarder from the host's 127.0.0.1 to ztpd inside the lab, with no interface on the host.

``lab up`` binds the listening socket on 127.0.0.1 in the host namespace and starts this
forwarder through ``ip netns exec <lab>-srv``, handing it that socket. A socket keeps the
namespace it was created in, so the forwarder accepts on the host's loopback while every
upstream connection it opens is made inside the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

log = logging.getLogger("ztpd.lab.forward")
CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # Half-close, so the other direction can still finish (an HTTP response after the request).
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen: socket.socket, host: str, port: int) -> None:
    async def handle(down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as e:
            log.warning("forward connect failed to=%s:%d error=%s", host, port, e)
            down_w.close()
            return
        try:
            await asyncio.gather(_pipe(down_r, up_w), _pipe(up_r, down_w))
        finally:
            for w in (up_w, down_w):
                w.close()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle, sock=listen)
    log.info("forward ready from=%s to=%s:%d", listen.getsockname(), host, port)
    async with server:
        await stop.wait()
    log.info("forward stopped")


def run(listen_fd: int, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT: each connection on ``listen_fd`` is piped to host:port."""
    listen = socket.socket(fileno=listen_fd)
    asyncio.run(_serve(listen, host, port))
