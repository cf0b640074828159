"""The node lifecycle: one explicit transition table, applied in one place.

    discovered → inspecting → inspected → matched | unmatched | awaiting-approval
               → deploying → deployed → configuring → ready
    any live state ──fail──▶ failed (remembers the state it failed in) ──retry──▶ that state
    deployed/configuring/ready/failed ──reprovision──▶ matched;   any ──retire──▶ retired
    any ──wipe──▶ retiring (the agent erases the disks) ──retire──▶ retired

Every transition updates the node and appends its event in the same transaction. In-progress
states carry a deadline stored with the node, so timeouts survive a restart of ztpd.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ztpd.errors import IllegalTransition
from ztpd.model import Node
from ztpd.store import Nodes, Store
from ztpd.tasks import TaskService

log = logging.getLogger("ztpd.lifecycle")


class State(enum.StrEnum):
    DISCOVERED = "discovered"
    INSPECTING = "inspecting"
    INSPECTED = "inspected"
    MATCHED = "matched"
    UNMATCHED = "unmatched"
    AWAITING_APPROVAL = "awaiting-approval"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    CONFIGURING = "configuring"
    READY = "ready"
    FAILED = "failed"
    RETIRING = "retiring"  # the discovery agent wipes the disks, then the node is retired
    RETIRED = "retired"


class Trigger(enum.StrEnum):
    INSPECT = "inspect"  # discovery boot script served
    INSPECTED = "inspected"  # inventory stored
    MATCH = "match"  # a profile fits (auto approval)
    NO_MATCH = "no-match"
    HOLD = "hold"  # a profile fits but wants a person's approval
    APPROVE = "approve"
    DEPLOY = "deploy"  # install script / image write started
    DEPLOYED = "deployed"  # first boot of the installed OS called back
    CONFIGURE = "configure"  # platform install started
    CONFIGURED = "configured"
    FAIL = "fail"
    TIMEOUT = "timeout"
    RETRY = "retry"
    REPROVISION = "reprovision"
    RETIRE = "retire"
    WIPE = "wipe"  # retire with a disk wipe (retire --wipe metadata|full)


S, T = State, Trigger
# States a node leaves by itself, each with a deadline.
IN_PROGRESS = frozenset({S.INSPECTING, S.DEPLOYING, S.CONFIGURING, S.RETIRING})
# Used when the caller's timeouts name no retiring limit: a full wipe of big disks takes hours.
DEFAULT_TIMEOUTS = {S.RETIRING.value: 12 * 3600.0}
_LIVE = frozenset(State) - {S.FAILED, S.RETIRED}
_PRE_DEPLOY = frozenset({S.DISCOVERED, S.INSPECTED, S.UNMATCHED, S.AWAITING_APPROVAL, S.MATCHED})
# `retry` goes back to the state the node failed in; this marks that target.
RETRY_TARGET = "<failed_from>"

TABLE: dict[tuple[State, Trigger], State | str] = {
    **{(s, T.INSPECT): S.INSPECTING for s in _PRE_DEPLOY},
    (S.INSPECTING, T.INSPECTED): S.INSPECTED,
    (S.INSPECTED, T.MATCH): S.MATCHED,
    (S.INSPECTED, T.NO_MATCH): S.UNMATCHED,
    (S.INSPECTED, T.HOLD): S.AWAITING_APPROVAL,
    (S.UNMATCHED, T.MATCH): S.MATCHED,
    (S.UNMATCHED, T.HOLD): S.AWAITING_APPROVAL,
    (S.AWAITING_APPROVAL, T.APPROVE): S.MATCHED,
    (S.AWAITING_APPROVAL, T.NO_MATCH): S.UNMATCHED,  # profiles changed while it waited
    (S.MATCHED, T.DEPLOY): S.DEPLOYING,
    (S.DEPLOYING, T.DEPLOYED): S.DEPLOYED,
    (S.DEPLOYED, T.CONFIGURE): S.CONFIGURING,
    (S.CONFIGURING, T.CONFIGURED): S.READY,
    **{(s, T.FAIL): S.FAILED for s in _LIVE},
    **{(s, T.TIMEOUT): S.FAILED for s in IN_PROGRESS},
    (S.FAILED, T.RETRY): RETRY_TARGET,
    **{(s, T.REPROVISION): S.MATCHED for s in (S.DEPLOYED, S.CONFIGURING, S.READY, S.FAILED)},
    **{(s, T.RETIRE): S.RETIRED for s in frozenset(State) - {S.RETIRED}},
    **{(s, T.WIPE): S.RETIRING for s in frozenset(State) - {S.RETIRED, S.RETIRING}},
}
WIPE_LEVELS = ("metadata", "full")
# The node's retire policy: {"level", "profile"}, its profile's os.wipe.on_retire as it was when
# the node was matched or entered deploying (kept by ztpd.install.backend).
WIPE_FACT = "retire_wipe"


def retire_trigger(wipe: str | None) -> Trigger:
    """``retire`` as asked by a person: with a wipe level, through ``retiring`` (the agent wipes
    the disks first); without one (or ``none``), straight to retired."""
    return T.WIPE if wipe in WIPE_LEVELS else T.RETIRE


def retire_policy(node: Node, asked: str | None) -> tuple[str, str, str]:
    """The wipe a retire of ``node`` gets: (level, which policy, why). An explicit level wins;
    else the node's profile's ``os.wipe.on_retire``; else nothing to wipe."""
    if asked is not None:
        return asked, "explicit", f"asked for wipe {asked}"
    if node.state == S.RETIRING:
        return "none", "default", "already retiring: retire without a wipe stops waiting for it"
    kept = node.facts.get(WIPE_FACT)
    if isinstance(kept, dict) and kept.get("level") in ("none", *WIPE_LEVELS):
        level, profile = str(kept["level"]), kept.get("profile")
        return level, "profile", f"profile {profile} has os.wipe.on_retire: {level}"
    return "none", "default", "no profile installs an OS on this node: nothing of ztpd's to wipe"


def allowed(state: str) -> list[str]:
    """The triggers the table allows from ``state`` (for error messages and the page)."""
    return sorted(t.value for (s, t) in TABLE if s == state)


def next_state(state: str, trigger: Trigger, failed_from: str | None = None) -> State:
    """Pure table lookup; IllegalTransition names what *is* allowed."""
    try:
        target = TABLE[(State(state), trigger)]
    except (KeyError, ValueError):
        raise IllegalTransition(
            f"{trigger.value!r} is not allowed for a node in state {state} "
            f"(allowed: {', '.join(allowed(state)) or 'nothing'})",
            detail={"state": state, "trigger": trigger.value},
        ) from None
    if target == RETRY_TARGET:
        if failed_from is None or failed_from not in State.__members__.values():
            raise IllegalTransition("cannot retry: the node does not record where it failed")
        return State(failed_from)
    return State(target)


@dataclass(frozen=True)
class Transition:
    node: Node
    event_id: int
    from_state: str
    to_state: str


Listener = Callable[[Transition], None]


class Lifecycle:
    """Applies the table to nodes in the store; the only writer of ``nodes.state``."""

    def __init__(self, store: Store, timeouts: Mapping[str, float]) -> None:
        self.store = store
        self.nodes = Nodes(store)
        self.timeouts = {**DEFAULT_TIMEOUTS, **timeouts}
        missing = {s.value for s in IN_PROGRESS} - set(self.timeouts)
        if missing:
            raise ValueError(f"no timeout for in-progress states {sorted(missing)}")
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Called after each committed transition (from whatever thread made it)."""
        self._listeners.append(listener)

    def fire(
        self,
        node_id: int,
        trigger: Trigger,
        *,
        cause: str,
        detail: dict[str, Any] | None = None,
        reason: str | None = None,
        profile: str | None = None,
        expect: str | None = None,
    ) -> Transition:
        """Move a node by ``trigger``; ``expect`` guards against a state that changed meanwhile."""
        now = self.store.clock()
        with self.store.transaction() as conn:
            row = self.store.query_one(
                "SELECT state, failed_from FROM nodes WHERE id = ? AND merged_into IS NULL",
                (node_id,),
            )
            if row is None:
                self.nodes.get(node_id)  # raises NotFound
                raise IllegalTransition(f"node {node_id} was merged into another node")
            current = row["state"]
            if expect is not None and current != expect:
                raise IllegalTransition(f"node {node_id} is {current}, not {expect}")
            target = next_state(current, trigger, row["failed_from"])
            deadline = now + self.timeouts[target.value] if target in IN_PROGRESS else None
            failed_from = current if target == S.FAILED else None
            if target == S.FAILED and reason is None:
                reason = f"{trigger.value} in {current}"
            sets = [
                "state = ?",
                "state_since = ?",
                "updated_at = ?",
                "deadline = ?",
                "failed_from = ?",
                "reason = ?",
                "deadline_reason = NULL",
            ]
            params: list[Any] = [target.value, now, now, deadline, failed_from, reason]
            if profile is not None:
                sets.append("profile = ?")
                params.append(profile)
            conn.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE id = ?", (*params, node_id))
            event_detail = dict(detail or {})
            if reason:
                event_detail["reason"] = reason
            if profile is not None:
                event_detail["profile"] = profile
            event_id = self.store.add_event(
                node_id=node_id,
                kind="transition",
                cause=cause or trigger.value,
                from_state=current,
                to_state=target.value,
                detail=event_detail,
            )
        log.info(
            "transition node=%s from=%s to=%s trigger=%s cause=%s",
            node_id,
            current,
            target.value,
            trigger.value,
            cause,
        )
        result = Transition(self.nodes.get(node_id), event_id, current, target.value)
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:  # a listener's bug must not undo or hide a committed transition
                log.exception("transition listener failed node=%s", node_id)
        return result

    def retire(
        self,
        node_id: int,
        wipe: str | None,
        *,
        cause: str,
        detail: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Transition:
        """Retire as a person asks it (CLI, API, page): the wipe ``retire_policy`` picks, with
        the level, the policy and why in the event."""
        with self.store.transaction():  # the policy of the node as it is when it moves
            level, policy, why = retire_policy(self.nodes.get(node_id), wipe)
            detail = {**(detail or {}), "wipe": level, "wipe_policy": policy, "wipe_why": why}
            trigger = retire_trigger(level)
            return self.fire(node_id, trigger, cause=cause, detail=detail, reason=reason)

    def touch(self, node_id: int, state: str, seconds: float, reason: str) -> bool:
        """Move the deadline of a node in ``state`` to ``seconds`` from now, failing it with
        ``reason`` if nothing touches it again by then (a heartbeat deadline). The state's own
        timeout still bounds the whole stay, with its own reason. False if the node is not in
        ``state``. No event: this is liveness, not a transition."""
        at, limit = self.store.clock() + seconds, float(self.timeouts[state])
        with self.store.transaction() as conn:
            cur = conn.execute(
                "UPDATE nodes SET deadline = MIN(?, state_since + ?), deadline_reason = "
                "CASE WHEN ? < state_since + ? THEN ? ELSE NULL END "
                "WHERE id = ? AND state = ? AND merged_into IS NULL",
                (at, limit, at, limit, reason, node_id, state),
            )
        return cur.rowcount > 0

    def expire_due(self) -> list[Transition]:
        """Fail every node whose in-progress deadline has passed."""
        now = self.store.clock()
        rows = self.store.query(
            "SELECT id, state, deadline_reason FROM nodes WHERE deadline IS NOT NULL "
            "AND deadline <= ? "
            "AND merged_into IS NULL ORDER BY deadline",
            (now,),
        )
        done = []
        for row in rows:
            with contextlib.suppress(IllegalTransition):  # it moved on meanwhile
                done.append(
                    self.fire(
                        row["id"],
                        T.TIMEOUT,
                        cause="timeout",
                        reason=row["deadline_reason"] or f"timed out in {row['state']}",
                        expect=row["state"],
                    )
                )
        return done

    def next_deadline(self) -> float | None:
        row = self.store.query_one(
            "SELECT MIN(deadline) AS d FROM nodes WHERE deadline IS NOT "
            "NULL AND merged_into IS NULL"
        )
        return None if row is None or row["d"] is None else float(row["d"])


class DeadlineWatcher(TaskService):
    """Fails nodes whose deadline passed; after a restart it picks the deadlines up from the
    store, so a node that timed out while ztpd was down fails at start-up."""

    def __init__(self, lifecycle: Lifecycle, interval: float) -> None:
        super().__init__()
        self.lifecycle = lifecycle
        self.interval = interval
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """A deadline may have moved earlier (a node entered an in-progress state)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.lifecycle.expire_due)
                nxt = await asyncio.to_thread(self.lifecycle.next_deadline)
            except Exception:
                log.exception("deadline sweep failed; retrying")
                nxt = None
            delay = self.interval
            if nxt is not None:
                delay = max(0.0, min(delay, nxt - self.lifecycle.store.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def start(self) -> None:
        self.spawn(self._run(), "deadline-watcher")
