"""The store-backed ``BootBackend``: boot delivery's view of nodes, tokens and the lifecycle.

Built by ``app.py``; the boot routes only see the protocol.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ztpd.errors import IllegalTransition
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.model import Node
from ztpd.store import Nodes
from ztpd.tftp import Transfer
from ztpd.tokens import Tokens

# Only these say what the machine is; i386 is iPXE's BIOS build on any x86 machine.
ARCHES = frozenset({"x86_64", "arm64"})


class StoreBootBackend:
    def __init__(
        self,
        lifecycle: Lifecycle,
        tokens: Tokens,
        install_method: Callable[[str], str | None],
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``install_method`` maps a profile name to its ``os.method`` (None: no os section or
        no such profile); ``on_record`` sees every boot record once it is stored (metrics)."""
        self.lifecycle = lifecycle
        self.nodes: Nodes = lifecycle.nodes
        self.store = lifecycle.store
        self.tokens = tokens
        self._install_method = install_method
        self._on_record = on_record

    def identify(self, ident: Identity, facts: dict[str, Any]) -> Node:
        with self.store.transaction():
            node = self.nodes.observe(ident, cause="boot")
            arch = facts.get("buildarch")
            columns = {"arch": arch} if arch in ARCHES else {}
            self.nodes.update_facts(node.id, {"boot": facts}, **columns)
        return self.nodes.get(node.id)

    def node(self, node_id: int) -> Node | None:
        return self.nodes.maybe(node_id)

    def node_by_ip(self, ip: str) -> Node | None:
        return self.nodes.by_ip(ip)

    def token(self, node: Node, purpose: str, ttl: float) -> str:
        with self.store.transaction():
            self.tokens.revoke(node.id, purpose)
            return self.tokens.issue(node.id, purpose, ttl)

    def install_method(self, node: Node) -> str | None:
        return self._install_method(node.profile) if node.profile else None

    def _fire(self, node: Node, trigger: Trigger) -> None:
        # IllegalTransition: another boot request (or an operator) moved the node meanwhile.
        with contextlib.suppress(IllegalTransition):
            self.lifecycle.fire(node.id, trigger, cause="boot", expect=node.state)

    def start_inspection(self, node: Node) -> None:
        self._fire(node, Trigger.INSPECT)

    def start_install(self, node: Node) -> None:
        self._fire(node, Trigger.DEPLOY)

    def record(self, node_id: int, detail: dict[str, Any]) -> None:
        self.store.add_event(node_id=node_id, kind="boot", cause="boot", detail=detail)
        if self._on_record is not None:
            self._on_record(detail)

    def record_tftp(self, transfer: Transfer) -> None:
        """A TFTP transfer as a boot event on the node holding the client's address (from
        DHCP); transfers from addresses no node holds are only logged. Given to TftpService as
        its observer, so it runs in the TFTP thread."""
        node = self.nodes.by_ip(transfer.client)
        if node is None:
            return
        detail: dict[str, Any] = {
            "asked": f"tftp {transfer.name}",
            "status": transfer.outcome,
            "bytes": transfer.size,
        }
        if transfer.detail:
            detail["error"] = transfer.detail
        self.record(node.id, detail)
