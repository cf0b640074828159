"""The store-backed ``InstallBackend``: what the install endpoints need from nodes, tokens,
profiles and the lifecycle. Built by ``app.py``; ``ztpd.http.install`` only sees the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ztpd.errors import NotFound
from ztpd.inventory.schema import Inventory
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.model import Node
from ztpd.profiles import ProfileCatalog
from ztpd.profiles.model import Os
from ztpd.store import Inventories
from ztpd.tokens import Tokens

PURPOSE = "install"


def catalog_os(catalog: ProfileCatalog) -> Callable[[str], Os | None]:
    """``profile_os`` over the serving profiles: a reload is seen by the next request."""

    def os_of(name: str) -> Os | None:
        try:
            return catalog.current.get(name).spec.os
        except NotFound:
            return None

    return os_of


class StoreInstallBackend:
    def __init__(
        self,
        lifecycle: Lifecycle,
        tokens: Tokens,
        profile_os: Callable[[str], Os | None],
        token_ttl: float = 0,
    ) -> None:
        """``profile_os`` maps a profile name to its ``os`` section (None: no such profile or
        the profile installs nothing); each use of a valid install token renews it for
        ``token_ttl`` seconds (``install.token_ttl``; 0: it keeps the expiry it was issued with)."""
        self.lifecycle = lifecycle
        self.nodes = lifecycle.nodes
        self.store = lifecycle.store
        self.tokens = tokens
        self._profile_os = profile_os
        self.token_ttl = token_ttl

    def verify(self, token: str, node_id: int) -> None:
        self.tokens.verify(token, PURPOSE, node_id=node_id, renew=self.token_ttl)

    def node(self, node_id: int) -> Node | None:
        return self.nodes.maybe(node_id)

    def os_for(self, node: Node) -> Os | None:
        return self._profile_os(node.profile) if node.profile else None

    def inventory(self, node: Node) -> Inventory | None:
        return Inventories(self.store).latest(node.id)

    def event(self, node_id: int | None, cause: str, detail: dict[str, Any]) -> None:
        self.store.add_event(node_id=node_id, kind="install", cause=cause, detail=detail)

    def progress(self, node_id: int, progress: dict[str, Any], event: bool) -> None:
        with self.store.transaction():
            self.nodes.update_facts(node_id, {"install_progress": progress})
            if event:
                self.event(node_id, "progress", progress)

    def fail(self, node_id: int, cause: str, reason: str, detail: dict[str, Any]) -> None:
        self.lifecycle.fire(
            node_id, Trigger.FAIL, cause=cause, reason=reason, detail=detail, expect="deploying"
        )

    def deployed(self, node_id: int, facts: dict[str, Any]) -> None:
        """The installed system called back: record its facts, move on, retire the token."""
        with self.store.transaction():
            self.nodes.update_facts(node_id, facts)
            self.lifecycle.fire(
                node_id,
                Trigger.DEPLOYED,
                cause="firstboot",
                detail={"ssh_host_keys": len(facts.get("ssh_host_keys", []))},
                expect="deploying",
            )
            self.tokens.revoke(node_id, PURPOSE)
