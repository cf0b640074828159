from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.harness import INVENTORY, XSS, Env, build
from ztpd.lifecycle import Trigger as T

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """Five nodes across the lifecycle, two inventory versions, leases and boot events."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "ipxe.efi").write_bytes(b"x" * 100)
    (images / "manifest.json").write_text(
        '{"package": "ipxe", "version": "1.0", "files": {"ipxe.efi": "ab" }}'
    )
    e = build(tmp_path, images_dir=images)
    a = e.node("52:54:00:00:00:01", serial="SN1", hostname="edge-a")
    e.walk(a, T.INSPECT, T.INSPECTED)
    e.inventory(a, INVENTORY)
    e.inventory(a, {**INVENTORY, "memory": {"total_bytes": 32 * 2**30}})
    e.walk(a, T.HOLD)
    b = e.node("52:54:00:00:00:02", serial="SN2", hostname="edge-b")
    e.walk(b, T.INSPECT, T.INSPECTED, T.MATCH, T.DEPLOY, profile="edge")
    c = e.node("52:54:00:00:00:03", serial="SN3")
    e.walk(c, T.INSPECT, T.FAIL)
    d = e.node("52:54:00:00:00:04", hostname=XSS)
    e.lease("10.9.0.10", "52:54:00:00:00:04", d)
    e.lease("10.9.0.11", "52:54:00:00:00:05", None, state="offered")
    e.store.add_event(node_id=d, kind="dhcp", cause="offer", detail={"ip": "10.9.0.10"})
    e.store.add_event(node_id=d, kind="boot", cause="ipxe-script", detail={"arch": "x86_64"})
    return e


@pytest.fixture
async def client(aiohttp_client: MakeClient, env: Env) -> Client:
    return await aiohttp_client(env.app)
