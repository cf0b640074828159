"""Run ztpd's DHCP service alone from a ztpd config file, for tests and the benchmark.

    python tests/dhcp/serve.py CONFIG.yaml [--broken-leases]
        # prints "ready" once listening; SIGTERM stops it

It is what app.py does for DHCP (Store → SqliteBackend → DhcpService), without the rest of the
appliance, so real-peer tests and bench/dhcp_bench.py can start it inside a namespace and
``kill -9`` it. ``--broken-leases`` serves from ``fakes.BrokenBackend`` instead, whose every
lease commit fails.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from ztpd import config as configmod
from ztpd.dhcp.backend import DhcpBackend
from ztpd.dhcp.boot import boot_targets
from ztpd.dhcp.service import DhcpService
from ztpd.dhcp.sqlite_backend import SqliteBackend
from ztpd.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: find tests/
from tests.dhcp.fakes import BrokenBackend


async def serve(path: Path, broken: bool) -> None:
    cfg = configmod.load(path, {}, Path.cwd())
    logging.basicConfig(
        level=cfg.log.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    store = Store(cfg.db_path)
    backend: DhcpBackend = (
        BrokenBackend() if broken else SqliteBackend(store, sync=cfg.dhcp.lease_sync)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        async with DhcpService(cfg.dhcp, backend, boot_targets(cfg)) as svc:
            print("ready", flush=True)
            await stop.wait()
            print(f"counters {dict(svc.counters)}", flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), "--broken-leases" in sys.argv[2:]))
