"""``ztpd simulate``: run profiles against saved inventories before any machine powers on.

Each ``*.json`` in the inventory directory is an inventory (docs/inventory.md) or
``{"inventory": {...}, "node": {"dhcp_arch": ..., "labels": {...}}}`` with the node facts
(``NodeFacts`` fields). Files are matched in name order as if the machines arrived in that
order, so ``max_count`` fills up the way it would on site (start from ``counts`` to include
nodes already deployed). Also here: the text form of one match's explanation, for
``ztpd match NODE --explain``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from ztpd.errors import RenderError
from ztpd.inventory import Inventory
from ztpd.profiles.facts import NodeFacts, build_facts
from ztpd.profiles.loader import load_profiles
from ztpd.profiles.matching import MatchResult
from ztpd.yamlsrc import MAX_BYTES

_MARK = {"won": "WON", "outranked": "matched", "full": "FULL", "failed": "no"}


@dataclass(frozen=True)
class SimulatedNode:
    file: str
    result: MatchResult | None  # None when the file could not be read as an inventory
    hostname: str | None = None
    error: str | None = None  # why the file was unreadable, or why the hostname failed

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "profile": self.result.winner if self.result else None,
            "hostname": self.hostname,
            "error": self.error,
            "match": self.result.to_json() if self.result else None,
        }


@dataclass(frozen=True)
class SimulationReport:
    profiles_dir: str
    profiles: tuple[str, ...]
    nodes: tuple[SimulatedNode, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "profiles_dir": self.profiles_dir,
            "profiles": list(self.profiles),
            "nodes": [n.to_json() for n in self.nodes],
        }


def _read(path: Path) -> tuple[Inventory, NodeFacts]:
    with path.open("rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    data = json.loads(raw)
    node = NodeFacts()
    if isinstance(data, dict) and "inventory" in data:
        node = NodeFacts(**data.get("node", {}))
        data = data["inventory"]
    return Inventory.model_validate(data), node


def _problem(e: Exception) -> str:
    if isinstance(e, pydantic.ValidationError):
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        return f"not a valid inventory: {where}: {first['msg']}"
    if isinstance(e, OSError):
        return f"cannot read: {e.strerror}"
    return f"not a valid inventory: {e}"


def simulate(profiles_dir: Path, inventory_dir: Path,
             counts: Mapping[str, int] | None = None) -> SimulationReport:  # fmt: skip
    """Match every saved inventory; SourceError when the profiles themselves do not load."""
    profiles = load_profiles(profiles_dir)
    held = dict(counts or {})
    nodes = []
    for path in sorted(inventory_dir.glob("*.json")):
        try:
            inventory, node = _read(path)
        except (OSError, ValueError, TypeError, pydantic.ValidationError) as e:
            nodes.append(SimulatedNode(path.name, None, error=_problem(e)))
            continue
        facts = build_facts(inventory, node)
        result = profiles.match(facts, held)
        hostname, error = None, None
        if result.winner is not None:
            held[result.winner] = held.get(result.winner, 0) + 1
            try:
                hostname = profiles.get(result.winner).hostname(facts)
            except RenderError as e:
                error = e.message
        nodes.append(SimulatedNode(path.name, result, hostname, error))
    return SimulationReport(str(profiles_dir), tuple(profiles.names), tuple(nodes))


def format_explanation(result: MatchResult) -> str:
    """Every profile, every condition, actual value and pass/fail, and why the winner won."""
    head = (
        f"profile: {result.winner} (approve: {result.approve})"
        if result.winner
        else "profile: none"
    )
    lines = [head, f"why: {result.reason}"]
    for v in result.verdicts:
        limit = f", {v.held}/{v.max_count} held" if v.max_count is not None else ""
        lines.append(
            f"  {_MARK[v.status]:7} {v.profile} (priority {v.priority}, "
            f"{v.specificity} conditions{limit}) {v.source}: {v.reason}"
        )
        for o in v.outcomes:
            mark = "pass" if o.passed else "FAIL"
            if o.elements or o.op in ("count", "any", "all"):
                lines.append(f"      {mark} {o.field} {o.op} {json.dumps(o.expected)}: {o.note}")
                for e in o.elements:
                    why = "ok" if e.passed else "; ".join(e.failed)
                    lines.append(f"             {e.element}: {why}")
            else:
                lines.append(f"      {mark} {o.text}")
    return "\n".join(lines)


def format_simulation(report: SimulationReport, *, explain: bool = False) -> str:
    """One line per inventory (profile, host name, why); ``explain`` adds every condition."""
    width = max((len(n.file) for n in report.nodes), default=0)
    lines = [f"profiles: {report.profiles_dir} ({len(report.profiles)} loaded)"]
    for n in report.nodes:
        if n.result is None:
            lines.append(f"{n.file:{width}}  ERROR  {n.error}")
            continue
        host = f" hostname={n.hostname}" if n.hostname else ""
        err = f" ERROR {n.error}" if n.error else ""
        lines.append(f"{n.file:{width}}  -> {n.result.winner or 'none'}{host}{err}  "
                     f"({n.result.reason})")  # fmt: skip
        if explain:
            lines.extend("    " + line for line in format_explanation(n.result).splitlines())
    if not report.nodes:
        lines.append("no *.json inventories found")
    return "\n".join(lines)
