"""The composition root: builds every service from the Config and runs them in one event loop.

Nothing else constructs services or reads the config tree; each service gets what it needs
through its constructor and is an async context manager, entered in order and exited in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager as AsyncCM
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztpd.config import Config
from ztpd.dhcp.boot import boot_targets
from ztpd.dhcp.service import DhcpService
from ztpd.dhcp.sqlite_backend import SqliteBackend
from ztpd.errors import ConfigError, NotFound, SourceError
from ztpd.http.agent import AgentService, add_agent_routes
from ztpd.http.api import add_api_routes, guarded, make_deps
from ztpd.http.boot import Boot, BootTemplates, add_boot_routes
from ztpd.http.boot_store import StoreBootBackend
from ztpd.http.install import Install, add_install_routes
from ztpd.http.profiles_view import CatalogView
from ztpd.http.server import HttpService, make_app
from ztpd.images import missing as images_missing
from ztpd.images.installers import needed as installers_needed
from ztpd.images.installers import problems as installer_problems
from ztpd.install.backend import StoreInstallBackend, catalog_os
from ztpd.install.deploy import ImageDeploy
from ztpd.install.render import Mirrors, Renderer
from ztpd.lifecycle import IN_PROGRESS, DeadlineWatcher, Lifecycle, Transition
from ztpd.matcher import Matcher, MatchWorker
from ztpd.metrics import Metrics
from ztpd.profiles import ProfileCatalog, load_profiles
from ztpd.profiles import check as profiles_check
from ztpd.store import Store
from ztpd.tftp import TftpService
from ztpd.tftp.server import Transfer
from ztpd.tokens import Tokens
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


def dhcp_series(
    counters: Mapping[str, int],
) -> tuple[list[tuple[dict[str, str], float]], list[tuple[dict[str, str], float]]]:
    """DhcpService's counters as (packet series, store-write series): ``reply.offer`` →
    ``ztpd_dhcp_packets_total{type="offer", outcome="sent"}``, ``drop.rate_limit`` →
    ``{type="any", outcome="drop_rate_limit"}`` (a dropped packet has no trusted type);
    ``leases.committed`` and ``sightings.recorded`` count rows, not packets, so they go to
    ``ztpd_dhcp_store_writes_total{kind}``."""
    packets: list[tuple[dict[str, str], float]] = []
    writes: list[tuple[dict[str, str], float]] = []
    for key, value in counters.items():
        kind, _, detail = key.partition(".")
        if kind == "reply":
            packets.append(({"type": detail, "outcome": "sent"}, value))
        elif detail in ("committed", "recorded"):
            writes.append(({"kind": kind}, value))
        else:
            packets.append(({"type": "any", "outcome": key.replace(".", "_")}, value))
    return packets, writes


def _mirror_dhcp(metrics: Metrics, counters: Mapping[str, int]) -> None:
    packets, writes = dhcp_series(counters)
    metrics.dhcp_packets.mirror(packets)
    metrics.dhcp_store_writes.mirror(writes)


def make_lifecycle(config: Config, store: Store) -> Lifecycle:
    return Lifecycle(store, config.lifecycle.timeouts.model_dump())


@dataclass
class CheckReport:
    """What `ztpd check` found: ``ok`` lines, ``problems`` (exit 1) and ``warnings``."""

    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(config: Config) -> CheckReport:
    """Everything ``ztpd serve`` would load from disk, checked without serving anything."""
    report = CheckReport(ok=[f"config {config.source}"])
    found = [str(p) for p in profiles_check(config.profiles_dir)]
    report.problems += found
    if not found:
        report.ok.append(f"profiles {config.profiles_dir}")
    try:
        BootTemplates(config.templates_dir).load()
        Renderer(config.templates_dir, Mirrors(config.install.mirrors, config.install.proxy))
        report.ok.append(f"boot and install templates {config.templates_dir}")
    except SourceError as e:
        report.problems += [str(p) for p in e.problems]
    table = boot_targets(config).table
    wanted = [*table.files.values(), config.boot.discovery_kernel, config.boot.discovery_initrd]
    # A missing boot file is a warning: ztpd serves everything else (and `make images` or
    # `ztpd images fetch` provides the files); a node that needs it gets a 404 and an event.
    missing = images_missing(config.images_dir, wanted)
    report.warnings += missing
    if not missing:
        report.ok.append(f"boot files {config.images_dir}")
    if not found:  # the installers each profile's method and release boots (warnings too)
        os_of = {p.name: p.spec.os for p in load_profiles(config.profiles_dir).profiles}
        gaps = installer_problems(config.images_dir, os_of)
        report.warnings += gaps
        if not gaps:
            report.ok += installers_needed(os_of) or ["no profile boots an installer"]
    return report


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
        # One install backend for the answer-file routes and the agent's image deploy.
        install_backend = StoreInstallBackend(
            self.lifecycle,
            Tokens(store),
            catalog_os(self.catalog),
            config.install.token_ttl,
            config.install.phases,
        )
        self.agent = AgentService(
            store,
            self.lifecycle,
            silence=config.lifecycle.agent_silence,
            on_heartbeat=self.metrics.heartbeats.inc,
            deploy=ImageDeploy(
                install_backend,
                config.images_dir,
                config.http.base_url,
                config.install.token_ttl,
            ),
        )
        add_agent_routes(
            self.http_app, self.agent, lambda h: guarded("viewer", lambda req, _who: h(req))
        )
        self.boot_templates = BootTemplates(config.templates_dir)
        self.boot_backend = StoreBootBackend(
            self.lifecycle, Tokens(store), self.install_method, on_record=self.count_boot
        )
        boot = Boot(config.boot, config.http.base_url, self.boot_templates, self.boot_backend)
        add_boot_routes(self.http_app, boot, config.images_dir)  # /boot.ipxe, /ipxe, /files
        self.install_renderer = Renderer(
            config.templates_dir, Mirrors(config.install.mirrors, config.install.proxy)
        )
        add_install_routes(
            self.http_app, Install(config.http.base_url, self.install_renderer, install_backend)
        )  # /install/<node>/<token>/<file> and the installer callbacks
        self.http = HttpService(config.http, self.http_app)
        self.tftp = (
            TftpService(config.tftp, config.images_dir, observer=self.tftp_done)
            if config.tftp.enabled
            else None
        )
        self.dhcp = DhcpService(
            config.dhcp, SqliteBackend(store, sync=config.dhcp.lease_sync), boot_targets(config)
        )
        self.metrics.registry.on_collect(lambda: _mirror_dhcp(self.metrics, self.dhcp.counters))
        # Called on SIGHUP (and by the profile watcher): each reloads what it owns.
        self.reloaders: list[Callable[[], None]] = [
            self.match_worker.reload,
            self.boot_templates.load,
            self.install_renderer.load,
        ]

    def count_boot(self, detail: dict[str, Any]) -> None:
        """A served second-stage script is one boot, labelled with iPXE's platform/arch."""
        if detail.get("asked") == "/ipxe" and detail.get("status") == 200:
            arch = f"{detail.get('platform') or 'unknown'}-{detail.get('buildarch') or 'unknown'}"
            self.metrics.boots.inc(arch=arch)

    def tftp_done(self, transfer: Transfer) -> None:
        """TFTP thread: count the transfer, then record it on its node."""
        self.metrics.tftp_requests.inc(outcome=transfer.outcome)
        self.metrics.tftp_bytes.inc(transfer.size)
        self.boot_backend.record_tftp(transfer)

    def install_method(self, profile: str) -> str | None:
        """The ``os.method`` of a profile in the serving set (None: no such profile or no OS)."""
        try:
            spec = self.catalog.current.get(profile).spec
        except NotFound:
            return None
        return spec.os.method if spec.os is not None else None

    def services(self) -> list[AsyncCM[Any]]:
        # HTTP first: DHCP must not point clients at boot servers that are not answering yet.
        optional = [self.tftp] if self.tftp is not None else []
        return [self.watcher, self.match_worker, self.http, *optional, self.dhcp]

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
