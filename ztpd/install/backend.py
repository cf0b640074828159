"""The store-backed ``InstallBackend``: what the install endpoints need from nodes, tokens,
profiles and the lifecycle. Built by ``app.py``; ``ztpd.http.install`` only sees the protocol.

It also keeps the phases of ``deploying`` (``install.phases``), each with its own deadline and
the reason the node fails with when it passes::

    enter deploying ──▶ image-write (os.method image) or installer (the others)
                          each progress report: deadline = now + the phase's limit
    "written" / "finished" ──▶ first-boot: deadline = now + first_boot, not moved by reports
    first-boot callback ──▶ deployed

The phase is kept on the node (``facts.deploy_phase``: name, limit, reason, and ``since``, the
stay it belongs to); no event, as for the other liveness deadlines (``Lifecycle.touch``).
``lifecycle.timeouts.deploying`` caps every deadline: when it is the nearer one, the node fails
with "timed out in deploying".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ztpd.config import InstallPhases
from ztpd.errors import NotFound
from ztpd.inventory.schema import Inventory
from ztpd.lifecycle import WIPE_FACT, Lifecycle, State, Transition, Trigger
from ztpd.model import Node
from ztpd.profiles import ProfileCatalog
from ztpd.profiles.model import Os
from ztpd.store import Inventories
from ztpd.tokens import Tokens

log = logging.getLogger("ztpd.install.backend")

PURPOSE = "install"
PHASE_FACT = "deploy_phase"
IMAGE_WRITE, INSTALLER, FIRST_BOOT = "image-write", "installer", "first-boot"
# Progress stages that end the work on the node: its next sign of life is the first boot.
DONE = {"written": "the image was written", "finished": "the installer finished"}


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    reason: str  # what the node fails with when the phase's deadline passes


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
        phases: InstallPhases | None = None,
    ) -> None:
        """``profile_os`` maps a profile name to its ``os`` section (None: no such profile or
        the profile installs nothing); each use of a valid install token renews it for
        ``token_ttl`` seconds (``install.token_ttl``; 0: it keeps the expiry it was issued with).
        ``phases`` are the deploying phases' limits (``install.phases``); nodes entering
        deploying start their first phase (a lifecycle listener)."""
        self.lifecycle = lifecycle
        self.nodes = lifecycle.nodes
        self.store = lifecycle.store
        self.tokens = tokens
        self._profile_os = profile_os
        self.token_ttl = token_ttl
        self.phases = phases or InstallPhases()
        lifecycle.subscribe(self._entered)

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
        """Record ``progress``; it moves the deadline of the node's phase, and a ``stage`` of
        ``written`` or ``finished`` starts the first boot."""
        with self.store.transaction():
            node = self.nodes.get(node_id)
            self.nodes.update_facts(node_id, {"install_progress": progress})
            if event:
                self.event(node_id, "progress", progress)
            stage = progress.get("stage")
            if isinstance(stage, str) and stage in DONE:
                limit = self.phases.first_boot
                why = f"no first-boot callback within {limit:g} s after {DONE[stage]}"
                self._start(node, Phase(FIRST_BOOT, limit, why))
            elif not self._in_first_boot(node) and (work := self._work_phase(node)):
                # A sign of life: the work phase's deadline moves to its limit from now.
                self.lifecycle.touch(node_id, State.DEPLOYING, work.seconds, work.reason)

    def _work_phase(self, node: Node) -> Phase | None:
        """The phase a node starts deploying in, by its profile's method (None: no OS)."""
        os_ = self.os_for(node)
        if os_ is None:
            return None
        if os_.method == "image":
            limit = self.phases.image_write
            return Phase(
                IMAGE_WRITE, limit, f"image write: no report from the agent for {limit:g} s"
            )
        limit = self.phases.installer
        return Phase(INSTALLER, limit, f"installer: no progress report for {limit:g} s")

    def _in_first_boot(self, node: Node) -> bool:
        kept = node.facts.get(PHASE_FACT)
        return (
            isinstance(kept, dict)
            and kept.get("since") == node.state_since
            and kept.get("name") == FIRST_BOOT
        )

    def _start(self, node: Node, phase: Phase) -> None:
        with self.store.transaction():
            if not self.lifecycle.touch(node.id, State.DEPLOYING, phase.seconds, phase.reason):
                return  # not deploying (any more)
            record = {"name": phase.name, "seconds": phase.seconds, "reason": phase.reason}
            self.nodes.update_facts(node.id, {PHASE_FACT: {**record, "since": node.state_since}})
        log.info("deploy phase node=%s phase=%s seconds=%g", node.id, phase.name, phase.seconds)

    def _entered(self, t: Transition) -> None:
        """Lifecycle listener: a node matched or entering deploying keeps its profile's retire
        policy (``lifecycle.retire_policy``); entering deploying starts its first phase."""
        if t.to_state not in (State.MATCHED, State.DEPLOYING):
            return
        os_ = self.os_for(t.node)
        level = os_.wipe.on_retire if os_ is not None else None  # None: installs nothing
        self.nodes.update_facts(t.node.id, {WIPE_FACT: {"level": level, "profile": t.node.profile}})
        first = self._work_phase(t.node) if t.to_state == State.DEPLOYING else None
        if first is not None:
            self._start(t.node, first)

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
