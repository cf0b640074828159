"""The composition root: builds every service from the Config and runs them in one event loop.

Nothing else constructs services or reads the config tree; each service gets what it needs
through its constructor and is an async context manager, entered in order and exited in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager as AsyncCM
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ztpd.config import Config
from ztpd.errors import ConfigError
from ztpd.http.api import add_api_routes, make_deps
from ztpd.http.profiles_view import CatalogView
from ztpd.http.server import HttpService, make_app
from ztpd.lifecycle import IN_PROGRESS, DeadlineWatcher, Lifecycle, Transition
from ztpd.matcher import Matcher, MatchWorker
from ztpd.metrics import Metrics
from ztpd.profiles import ProfileCatalog
from ztpd.store import Store
from ztpd.web import add_web_routes

log = logging.getLogger("ztpd.app")


def check_state_dir(path: Path, source: str) -> None:
    """Fail early, naming the key, when the state dir cannot hold the database."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"state_dir {path} (from {source}) cannot be created: {e.strerror}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"state_dir {path} (from {source}) is not writable by this user")


def open_store(config: Config) -> Store:
    check_state_dir(config.state_dir, config.source)
    return Store(config.db_path)


def make_lifecycle(config: Config, store: Store) -> Lifecycle:
    return Lifecycle(store, config.lifecycle.timeouts.model_dump())


class Appliance:
    """Everything ``ztpd serve`` runs, built from one Config."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # One metrics set for the process; services that count things take it as an argument.
        self.metrics = Metrics()
        self.lifecycle = make_lifecycle(config, store)
        self.watcher = DeadlineWatcher(self.lifecycle, config.lifecycle.sweep_interval)
        # A broken profile set at start-up is reported (log, page, `ztpd check`) and ztpd
        # still serves: nodes wait in `inspected`/`unmatched` until the set is fixed.
        self.catalog = ProfileCatalog(config.profiles_dir)
        self.catalog.reload()
        self.matcher = Matcher(store, self.lifecycle, self.catalog)
        self.match_worker = MatchWorker(self.matcher, config.profiles_poll_interval)
        self.lifecycle.subscribe(self.match_worker.on_transition)
        self.http_app = make_app(config.http)
        self.api = make_deps(
            store,
            self.lifecycle,
            config.http.auth,
            self.metrics,
            profiles=CatalogView(self.catalog, self.matcher, store),
            images_dir=config.images_dir,
        )
        add_api_routes(self.http_app, self.api)  # /api/v1, /metrics, the live event hub
        add_web_routes(self.http_app, self.api)  # the status page
        self.http = HttpService(config.http, self.http_app)
        # Called on SIGHUP (and by the profile watcher): each reloads what it owns.
        self.reloaders: list[Callable[[], None]] = [self.match_worker.reload]

    def services(self) -> list[AsyncCM[Any]]:
        return [self.watcher, self.match_worker, self.http]

    def reload(self) -> None:
        log.info("reload requested")
        for reload in self.reloaders:
            try:
                reload()
            except Exception:
                log.exception("reload failed; the previous set keeps serving")

    async def run(self, stop: asyncio.Event, hup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        def on_transition(t: Transition) -> None:
            if t.to_state in IN_PROGRESS:
                loop.call_soon_threadsafe(self.watcher.poke)

        self.lifecycle.subscribe(on_transition)
        async with AsyncExitStack() as stack:
            for service in self.services():
                await stack.enter_async_context(service)
            log.info(
                "ready config=%s state_dir=%s url=%s dhcp=%s tftp=%s",
                self.config.source,
                self.config.state_dir,
                self.config.http.base_url,
                self.config.dhcp.mode,
                "on" if self.config.tftp.enabled else "off",
            )
            while not stop.is_set():
                waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(hup.wait())]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if hup.is_set() and not stop.is_set():
                    hup.clear()
                    await asyncio.to_thread(self.reload)
            log.info("stopping")
        log.info("stopped")
