"""TFTP: the first loaders, read-only from the images directory, in a thread of its own.

``TftpService`` is the async context manager ``app.py`` runs; ``server.TftpServer`` is the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from types import TracebackType

from ztpd.config import TftpConfig
from ztpd.errors import ConfigError
from ztpd.tftp.server import DynamicFiles, TftpServer, Transfer, TransferObserver

__all__ = ["DynamicFiles", "TftpService", "Transfer", "TransferObserver"]

log = logging.getLogger("ztpd.tftp")


class TftpService:
    """Serves ``root`` on every ``config.listen`` address until the context exits.

    ``dynamic`` produces generated files (e.g. a per-client ``autoexec.ipxe``) for names that
    do not exist under ``root``; ``observer`` hears about every transfer. Both are called from
    the TFTP thread.
    """

    def __init__(
        self,
        config: TftpConfig,
        root: Path,
        *,
        dynamic: DynamicFiles | None = None,
        observer: TransferObserver | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.dynamic = dynamic
        self.observer = observer
        self.server: TftpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def bound(self) -> list[tuple[str, int]]:
        return [] if self.server is None else list(self.server.bound)

    async def __aenter__(self) -> TftpService:
        if not self.root.is_dir():
            raise ConfigError(f"images_dir {self.root} (served over TFTP) is not a directory")
        server = TftpServer(
            self.root,
            list(self.config.listen),
            self.config.port,
            timeout=self.config.timeout,
            retries=self.config.retries,
            max_transfers=self.config.max_transfers,
            dynamic=self.dynamic,
            observer=self.observer,
        )
        try:
            server.bind()
        except OSError as e:
            raise ConfigError(
                f"tftp.listen {self.config.listen} port {self.config.port}: "
                f"cannot bind: {e.strerror}"
            ) from None
        self.server = server
        self._thread = threading.Thread(target=self._run, name="tftp", daemon=True)
        self._thread.start()
        log.info(
            "tftp listening addresses=%s port=%s root=%s",
            ",".join(self.config.listen),
            self.config.port,
            self.root,
        )
        return self

    def _run(self) -> None:
        assert self.server is not None
        try:
            self.server.serve()
        except Exception:  # the loop handles bad input itself; this is a bug, say so loudly
            log.exception("tftp server stopped unexpectedly")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.server is None or self._thread is None:
            return
        self.server.stop()
        await asyncio.to_thread(self._thread.join)
        log.info("tftp stopped")
        self.server = None
        self._thread = None
