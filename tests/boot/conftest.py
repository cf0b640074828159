"""A real ztpd HTTP server on 127.0.0.1 with boot routes over a real store, for curl to talk to."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ztpd.config import BootConfig, HttpConfig
from ztpd.http.boot import Boot, BootTemplates, add_boot_routes
from ztpd.http.boot_store import StoreBootBackend
from ztpd.http.server import HttpService, make_app
from ztpd.lifecycle import Lifecycle
from ztpd.store import Store
from ztpd.tokens import Tokens

TEMPLATES = Path(__file__).resolve().parents[2] / "boot-templates"
KERNEL = bytes(range(256)) * 40  # 10 KiB that is easy to check slices of


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Env:
    url: str
    store: Store
    lifecycle: Lifecycle
    boot: Boot
    images: Path
    templates: BootTemplates
    methods: dict[str, str]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "discovery").mkdir(parents=True)
    (root / "discovery" / "vmlinuz").write_bytes(KERNEL)
    (root / "discovery" / "initrd.img").write_bytes(b"initrd" * 100)
    (tmp_path / "secret").write_text("not for clients\n")
    (root / "escape").symlink_to(tmp_path / "secret")
    return root


@pytest.fixture
def template_dir() -> Path:
    return TEMPLATES


@pytest.fixture
async def env(tmp_path: Path, images: Path, template_dir: Path) -> AsyncIterator[Env]:
    store = Store(tmp_path / "ztpd.db", clock=FakeClock())
    lifecycle = Lifecycle(store, {"inspecting": 900, "deploying": 3600, "configuring": 3600})
    methods: dict[str, str] = {}
    backend = StoreBootBackend(lifecycle, Tokens(store), methods.get)
    port = free_tcp_port()
    http = HttpConfig(listen=["127.0.0.1"], port=port)
    templates = BootTemplates(template_dir)
    boot = Boot(BootConfig(), http.base_url, templates, backend)
    app = make_app(http)
    add_boot_routes(app, boot, images)
    async with HttpService(http, app):
        yield Env(http.base_url, store, lifecycle, boot, images, templates, methods)
    store.close()


class FakeClock:
    """Time that moves only when told, so event timestamps are predictable."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Curl = Callable[..., tuple[int, bytes, dict[str, str]]]
