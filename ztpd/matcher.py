"""Hands inspected nodes to the profile set, and re-evaluates waiting nodes when profiles change.

The profile language and matching are pure (ztpd/profiles); this module is the glue that reads a
node's latest inventory and facts, and records the decision. Counting the nodes that already
hold each profile, matching, and recording the winner happen in one ``BEGIN IMMEDIATE``
transaction, so two nodes racing for the last ``max_count`` slot cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ztpd.errors import IllegalTransition, RenderError
from ztpd.lifecycle import Lifecycle, State, Transition, Trigger
from ztpd.model import Node
from ztpd.profiles import MatchResult, NodeFacts, ProfileCatalog, build_facts
from ztpd.store import Inventories, Store
from ztpd.tasks import TaskService

log = logging.getLogger("ztpd.matcher")

# A node in one of these states holds its profile's slot (for max_count).
HOLDS_PROFILE = (
    State.MATCHED,
    State.AWAITING_APPROVAL,
    State.DEPLOYING,
    State.DEPLOYED,
    State.CONFIGURING,
    State.READY,
    State.FAILED,
)
# States whose nodes wait for a (better) profile and are re-evaluated when profiles change.
WAITING = (State.UNMATCHED, State.AWAITING_APPROVAL)


def node_facts(node: Node) -> NodeFacts:
    dhcp: dict[str, Any] = node.facts.get("dhcp", {}) if isinstance(node.facts, dict) else {}
    relay: dict[str, Any] = dhcp.get("relay", {}) or {}
    labels = node.facts.get("labels", {})
    return NodeFacts(
        mac=node.macs[0] if node.macs else None,
        ip=node.ip,
        dhcp_arch=node.arch,
        dhcp_vendor_class=dhcp.get("vendor_class"),
        relay_address=relay.get("giaddr"),
        relay_circuit_id=relay.get("circuit_id"),
        relay_remote_id=relay.get("remote_id"),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


class Matcher:
    def __init__(self, store: Store, lifecycle: Lifecycle, catalog: ProfileCatalog) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.catalog = catalog

    def facts(self, node: Node) -> dict[str, Any]:
        return build_facts(Inventories(self.store).latest(node.id), node_facts(node))

    def explain(self, node: Node) -> MatchResult:
        """What matching would decide for ``node`` now (nothing is recorded)."""
        return self.catalog.current.match(self.facts(node), self._counts(node.id))

    def _counts(self, node_id: int) -> dict[str, int]:
        marks = ",".join("?" * len(HOLDS_PROFILE))
        rows = self.store.query(
            f"SELECT profile, COUNT(*) AS n FROM nodes WHERE profile IS NOT NULL AND id != ? "
            f"AND merged_into IS NULL AND state IN ({marks}) GROUP BY profile",
            (node_id, *HOLDS_PROFILE),
        )
        return {r["profile"]: int(r["n"]) for r in rows}

    def match(self, node_id: int, cause: str = "match") -> Transition | None:
        """Decide and record the profile of one node in inspected/unmatched/awaiting-approval;
        None when the node is elsewhere or the decision would not change anything."""
        with self.store.transaction():
            node = self.lifecycle.nodes.get(node_id)
            if node.state not in (State.INSPECTED, *WAITING):
                return None
            facts = self.facts(node)
            result = self.catalog.current.match(facts, self._counts(node_id))
            detail = {"match": result.to_json()}
            if result.winner is None:
                if node.state == State.UNMATCHED:
                    return None
                return self.lifecycle.fire(
                    node_id, Trigger.NO_MATCH, cause=cause, detail=detail, reason=result.reason
                )
            trigger = Trigger.HOLD if result.approve == "manual" else Trigger.MATCH
            if node.state == State.AWAITING_APPROVAL and trigger == Trigger.HOLD:
                return None  # still waiting for a person, whatever profile it now prefers
            profile = self.catalog.current.get(result.winner)
            try:
                hostname = profile.hostname(facts)
            except RenderError as e:
                return self.lifecycle.fire(
                    node_id,
                    Trigger.FAIL,
                    cause=cause,
                    detail=detail,
                    reason=f"hostname of profile {result.winner}: {e}",
                )
            if hostname:
                self.lifecycle.nodes.update_facts(node_id, {}, hostname=hostname)
            reason = "awaiting approval" if trigger == Trigger.HOLD else None
            return self.lifecycle.fire(
                node_id, trigger, cause=cause, detail=detail, profile=result.winner, reason=reason
            )

    def pending(self) -> list[int]:
        """Nodes matching should look at: inspected (e.g. left so by a crash) and waiting."""
        marks = ",".join("?" * (1 + len(WAITING)))
        rows = self.store.query(
            f"SELECT id FROM nodes WHERE state IN ({marks}) AND merged_into IS NULL ORDER BY id",
            (State.INSPECTED, *WAITING),
        )
        return [int(r["id"]) for r in rows]

    def match_all(self, cause: str) -> list[Transition]:
        done = []
        for node_id in self.pending():
            try:
                t = self.match(node_id, cause=cause)
            except IllegalTransition:
                continue  # moved on meanwhile
            except Exception:
                log.exception("matching failed node=%s", node_id)
                continue
            if t is not None:
                done.append(t)
        return done


class MatchWorker(TaskService):
    """Runs matching off the event loop: for each node that becomes inspected, for everything
    pending at start-up (restart-resume), and for waiting nodes whenever the profile set
    changes (a file watcher polls; SIGHUP reloads at once)."""

    def __init__(self, matcher: Matcher, poll_interval: float) -> None:
        super().__init__()
        self.matcher = matcher
        self.poll_interval = poll_interval
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_transition(self, t: Transition) -> None:
        """Lifecycle listener: may run in any thread."""
        if t.to_state == State.INSPECTED and self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, t.node.id)

    def reload(self) -> None:
        """Reload profiles now (SIGHUP); on a changed set, re-evaluate waiting nodes."""
        if self.matcher.catalog.reload() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def _work(self) -> None:
        while True:
            node_id = await self._queue.get()
            try:
                if node_id is None:
                    await asyncio.to_thread(self.matcher.match_all, "profiles changed")
                else:
                    await asyncio.to_thread(self.matcher.match, node_id)
            except IllegalTransition:
                pass
            except Exception:
                log.exception("matching failed node=%s", node_id)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                changed = await asyncio.to_thread(self.matcher.catalog.reload_if_changed)
            except Exception:
                log.exception("profile reload failed")
                continue
            if changed:
                self._queue.put_nowait(None)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue.put_nowait(None)  # resume whatever was pending before a restart
        self.spawn(self._work(), "matcher")
        self.spawn(self._watch(), "profile-watcher")
