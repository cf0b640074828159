"""Following the lab's VMs through ztpd's store: one line per step, a table, a summary.

The store is opened read-only and polled (the daemon commits, WAL lets readers in); a VM is
found by its MACs. The steps of a VM are every state its node enters (``discovered``: its first
DHCP request) and its first boot-script request, each timed from the VM's power-on (a lease's
time is its latest renewal, so leases are not steps). ``summary`` and
``timings`` report the phases (``PHASES``) and, for a VM that is not installed, why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ztpd.errors import StoreError
from ztpd.identity import normalize_mac
from ztpd.lab.vm import VmSpec
from ztpd.lifecycle import State
from ztpd.model import Node
from ztpd.store import Events, Nodes, Store

INSTALLED = frozenset({State.DEPLOYED, State.CONFIGURING, State.READY})
# Where a node stays until an operator acts: the lab stops waiting for it.
SETTLED = INSTALLED | {State.FAILED, State.RETIRED, State.UNMATCHED, State.AWAITING_APPROVAL}
POLL = 1.0
# The summary's columns: seconds from power-on to the first time the node entered each.
PHASES = (State.DISCOVERED, State.INSPECTED, State.MATCHED, State.DEPLOYING, State.DEPLOYED)


class Progress:
    def __init__(
        self,
        db: Path,
        vms: Iterable[VmSpec],
        powered_on: dict[str, float],
        say: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.vms = list(vms)
        self.powered_on = powered_on
        self.say = say
        self.clock = clock
        self.nodes: dict[str, Node] = {}
        # vm name -> [(step, unix time)], in the order first seen
        self.steps: dict[str, list[tuple[str, float]]] = {v.name: [] for v in self.vms}
        self._event_id = 0

    def _macs(self, vm: VmSpec) -> set[str]:
        return {normalize_mac(m) for m in vm.macs}

    def _add(self, vm: str, step: str, ts: float) -> None:
        if step in (s for s, _ in self.steps[vm]):
            return
        self.steps[vm].append((step, ts))
        self.say(f"  {self._since(vm, ts):>7} {vm:<5} {step}")

    def _since(self, vm: str, ts: float) -> str:
        start = self.powered_on.get(vm)
        return "-" if start is None else f"+{max(0.0, ts - start):.1f}s"

    def poll(self) -> None:
        """Read what changed since the last poll (nothing when the store is not there yet)."""
        if not self.db.exists():
            return
        try:
            store = Store(self.db, read_only=True)
        except StoreError:
            return
        try:
            if ready(store):
                self._poll(store)
        finally:
            store.close()

    def _poll(self, store: Store) -> None:
        by_mac = {m: v for v in self.vms for m in self._macs(v)}
        node_vm: dict[int, str] = {}
        for node in Nodes(store).list():
            owner = next((by_mac[m] for m in node.macs if m in by_mac), None)
            if owner is not None:
                self.nodes[owner.name] = node
                node_vm[node.id] = owner.name
        while batch := Events(store).list(after=self._event_id, limit=500):
            for e in batch:
                vm_name = node_vm.get(e.node_id) if e.node_id is not None else None
                if vm_name is not None:
                    if e.kind == "boot" and e.detail.get("asked") == "/ipxe":
                        self._add(vm_name, "ipxe script", e.ts)
                    elif e.to_state:
                        self._add(vm_name, e.to_state, e.ts)
            self._event_id = batch[-1].id

    def settled(self) -> bool:
        return all(v.name in self.nodes and self.nodes[v.name].state in SETTLED for v in self.vms)

    def all_installed(self) -> bool:
        return all(v.name in self.nodes and self.nodes[v.name].state in INSTALLED for v in self.vms)

    def follow(self, timeout: float) -> bool:
        """Poll until every VM's node is settled (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if self.settled():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))

    def table(self) -> str:
        self.poll()
        rows = [["VM", "FIRMWARE", "SHAPE", "MAC", "NODE", "STATE", "PROFILE", "IP"]]
        for v in self.vms:
            n = self.nodes.get(v.name)
            rows.append(
                [
                    v.name,
                    v.firmware,
                    v.shape.name,
                    v.macs[0],
                    str(n.id) if n else "-",
                    n.state if n else "(not seen)",
                    (n.profile or "-") if n else "-",
                    (n.ip or "-") if n else "-",
                ]
            )
        return _format(rows)

    def seconds(self, vm: str) -> dict[str, float]:
        """Each step of ``vm`` as seconds from its power-on."""
        start = self.powered_on.get(vm)
        if start is None:
            return {}
        return {s: round(max(0.0, ts - start), 1) for s, ts in self.steps[vm]}

    def why_not_installed(self, vm: VmSpec) -> str | None:
        """None when ``vm``'s node is installed, else what holds it, in words."""
        n = self.nodes.get(vm.name)
        if n is None:
            return "never reached ztpd (no DHCP or boot request): see its console.log"
        if n.state in INSTALLED:
            return None
        if n.state == State.FAILED:
            return f"failed in {n.failed_from}: {n.reason or 'no reason recorded'}"
        if n.state == State.AWAITING_APPROVAL:
            return f"held by profile {n.profile} until an operator approves node {n.id}"
        if n.state == State.UNMATCHED:
            return f"unmatched ({n.reason or 'no reason recorded'}): the page shows why"
        return f"still {n.state} when following stopped"

    def timings(self) -> dict[str, Any]:
        """Per VM: shape, firmware, node, profile, state, reason, seconds to every step."""
        self.poll()
        out: dict[str, Any] = {}
        for v in self.vms:
            n = self.nodes.get(v.name)
            out[v.name] = {
                "firmware": v.firmware,
                "shape": v.shape.name,
                "node": n.id if n else None,
                "profile": n.profile if n else None,
                "state": n.state if n else None,
                "reason": self.why_not_installed(v),
                "seconds": self.seconds(v.name),
            }
        return out

    def summary(self) -> str:
        self.poll()
        head = ["VM", "FIRMWARE", "SHAPE", "PROFILE", "STATE", *(p.value for p in PHASES)]
        rows, reasons = [head], []
        for v in self.vms:
            n = self.nodes.get(v.name)
            secs = self.seconds(v.name)
            rows.append(
                [
                    v.name,
                    v.firmware,
                    v.shape.name,
                    (n.profile or "-") if n else "-",
                    n.state if n else "(not seen)",
                    *(f"{secs[p]:.1f}s" if p in secs else "-" for p in PHASES),
                ]
            )
            why = self.why_not_installed(v)
            if why is not None:
                reasons.append(f"  {v.name}: {why}\n")
        done = len(self.vms) - len(reasons)
        title = f"summary: {done} of {len(self.vms)} nodes installed (seconds from power-on)\n"
        return title + _format(rows) + "".join(reasons)


def ready(store: Store) -> bool:
    """The daemon has created its schema (the file exists a moment before its tables do)."""
    return bool(store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"))


def _format(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )
