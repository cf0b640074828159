"""Shared pieces of the discovery tests: a store with a node that is inspecting and holds an
agent token, and the agent endpoints served on loopback — and, for VMs, on a socket inside a
test namespace. (The real image is the session's ``discovery_image``, tests/conftest.py.)"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ztpd.config import HttpConfig
from ztpd.http.agent import PURPOSE, AgentService, add_agent_routes
from ztpd.http.server import make_app
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

TIMEOUTS = {"inspecting": 600.0, "deploying": 600.0, "configuring": 600.0}


@dataclass
class Site:
    store: Store
    lifecycle: Lifecycle
    service: AgentService
    node_id: int
    token: str
    url: str  # loopback base URL


def new_node(store: Store, lifecycle: Lifecycle, mac: str) -> tuple[int, str]:
    """A node first seen by DHCP on ``mac`` whose discovery script was served."""
    node = Nodes(store).observe(Identity.of([mac]), cause="dhcp")
    lifecycle.fire(node.id, Trigger.INSPECT, cause="boot")
    return node.id, Tokens(store).issue(node.id, PURPOSE, 3600)


async def serve(
    tmp_path: Path, *, silence: float, mac: str, extra: list[socket.socket] | None = None
) -> AsyncIterator[Site]:
    store = Store(tmp_path / "ztpd.db")
    lifecycle = Lifecycle(store, TIMEOUTS)
    service = AgentService(store, lifecycle, silence=silence, heartbeat=2.0)
    app = make_app(HttpConfig(max_body_bytes=1 << 20))
    add_agent_routes(app, service, lambda h: h)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        for sock in extra or []:
            await web.SockSite(runner, sock).start()
        port = runner.addresses[0][1]
        node_id, token = new_node(store, lifecycle, mac)
        yield Site(store, lifecycle, service, node_id, token, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        store.close()


def socket_in_netns(netns: str, address: str, port: int) -> socket.socket:
    """A listening TCP socket inside ``netns``: a short-lived thread enters the namespace (setns
    changes only the calling thread), binds, and leaves the socket to the test's event loop."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(64)
            sock.setblocking(False)
            made.append(sock)
        except BaseException as e:
            made.append(e)

    t = threading.Thread(target=inside)
    t.start()
    t.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]
