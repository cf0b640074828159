"""Run ztpd's boot path alone — DHCP (full mode), TFTP and HTTP boot — from a config file.

    python tests/boot/serve.py CONFIG.yaml     # prints "ready" once listening; SIGTERM stops it

The end-to-end VM tests start it inside a network namespace. It builds the same objects app.py
is to build for these services (see the report of issue 4), and nothing else of the appliance.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from ztpd import config as configmod
from ztpd import log
from ztpd.dhcp.boot import boot_targets
from ztpd.dhcp.service import DhcpService
from ztpd.dhcp.sqlite_backend import SqliteBackend
from ztpd.http.boot import Boot, BootTemplates, add_boot_routes
from ztpd.http.boot_store import StoreBootBackend
from ztpd.http.server import HttpService, make_app
from ztpd.lifecycle import Lifecycle
from ztpd.store import Store
from ztpd.tftp import TftpService
from ztpd.tokens import Tokens


async def serve(path: Path) -> None:
    cfg = configmod.load(path, {}, Path.cwd())
    log.setup(cfg.log.level)
    store = Store(cfg.db_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    lifecycle = Lifecycle(store, cfg.lifecycle.timeouts.model_dump())
    backend = StoreBootBackend(lifecycle, Tokens(store), lambda profile: None)
    boot = Boot(cfg.boot, cfg.http.base_url, BootTemplates(cfg.templates_dir), backend)
    app = make_app(cfg.http)
    add_boot_routes(app, boot, cfg.images_dir)
    try:
        async with (
            HttpService(cfg.http, app),
            TftpService(cfg.tftp, cfg.images_dir, observer=backend.record_tftp),
            DhcpService(cfg.dhcp, SqliteBackend(store), boot_targets(cfg)),
        ):
            print("ready", flush=True)
            await stop.wait()
    finally:
        store.close()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
