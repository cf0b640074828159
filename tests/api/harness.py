"""A real ztpd HTTP app (API + page) over a fresh store, and helpers to seed it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ztpd.config import ApiToken, AuthConfig, HttpConfig, TimeoutsConfig
from ztpd.http.api import Deps, ProfileView, add_api_routes, make_deps
from ztpd.http.profiles_view import CatalogView
from ztpd.http.server import make_app
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.matcher import Matcher
from ztpd.metrics import Metrics
from ztpd.profiles import ProfileCatalog
from ztpd.store import Nodes, Store
from ztpd.web import add_web_routes

ADMIN = "admin-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"
XSS = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@dataclass
class Env:
    store: Store
    lifecycle: Lifecycle
    deps: Deps
    app: web.Application

    @property
    def nodes(self) -> Nodes:
        return Nodes(self.store)

    def node(self, mac: str, *, serial: str | None = None, hostname: str | None = None) -> int:
        node = self.nodes.observe(Identity.of([mac], serial=serial), cause="test")
        if hostname is not None:
            self.nodes.update_facts(node.id, {}, hostname=hostname)
        return node.id

    def walk(self, node_id: int, *triggers: Trigger, profile: str | None = None) -> None:
        for t in triggers:
            self.lifecycle.fire(
                node_id, t, cause="test", profile=profile if t == Trigger.MATCH else None
            )

    def inventory(self, node_id: int, data: dict[str, Any], source: str = "agent") -> int:
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM inventories WHERE node_id = ?",
                (node_id,),
            ).fetchone()
            conn.execute(
                "INSERT INTO inventories (node_id, version, ts, source, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (node_id, row[0], time.time(), source, json.dumps(data)),
            )
        return int(row[0])

    def lease(self, ip: str, mac: str, node_id: int | None, state: str = "bound") -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO leases (ip, mac, subnet, state, expires, node_id, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ip, mac, "10.9.0.0/24", state, time.time() + 3600, node_id, time.time()),
            )


def build(
    tmp_path: Path,
    *,
    anonymous_read: bool = False,
    anonymous_metrics: bool = True,
    profiles: ProfileView | None = None,
    images_dir: Path | None = None,
    profiles_dir: Path | None = None,
) -> Env:
    store = Store(tmp_path / "ztpd.db")
    lifecycle = Lifecycle(store, TimeoutsConfig().model_dump())
    if profiles_dir is not None:
        catalog = ProfileCatalog(profiles_dir)
        catalog.reload()
        profiles = CatalogView(catalog, Matcher(store, lifecycle, catalog), store)
    auth = AuthConfig(
        tokens=[
            ApiToken(name="ops", role="admin", token=ADMIN),
            ApiToken(name="look", role="viewer", token=VIEWER),
        ],
        anonymous_read=anonymous_read,
        anonymous_metrics=anonymous_metrics,
    )
    deps = make_deps(store, lifecycle, auth, Metrics(), profiles=profiles, images_dir=images_dir)
    app = make_app(HttpConfig())
    add_api_routes(app, deps)
    add_web_routes(app, deps)
    return Env(store, lifecycle, deps, app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


INVENTORY: dict[str, Any] = {
    "schema_version": 1,
    "cpu": {"model": "Xeon E-2224", "count": 4, "architecture": "x86_64"},
    "memory": {"total_bytes": 16 * 2**30},
    "disks": [
        {"name": "/dev/sda", "model": "SSD 480", "size_bytes": 480 * 10**9, "rotational": False}
    ],
    "interfaces": [
        {
            "name": "eno1",
            "mac": "52:54:00:00:00:01",
            "link": True,
            "speed_mbps": 1000,
            "lldp": {"system_name": "tor-1", "port_id": "Eth1/1"},
        }
    ],
    "system": {"manufacturer": "Acme", "product": "Edge 100", "serial": "SN1"},
    "sources": {"cpu": "agent"},
}
