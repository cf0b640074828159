"""Read models for the API and the page, built straight from the store's tables.

Everything here is a plain function of the store returning JSON-ready dicts; the handlers call
them in a worker thread. Filters are bound parameters and sort keys come from a whitelist.
What the table page needs per node (progress, last event) is loaded for a whole page of nodes
in three queries, not per row.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ztpd.errors import NotFound
from ztpd.lifecycle import IN_PROGRESS, allowed
from ztpd.model import Event, Node
from ztpd.store import Store

MAX_LIMIT = 500
NODE_SORTS = {
    "id": "n.id",
    # Node.name: the hostname, else the first MAC seen, else the id.
    "name": "COALESCE(n.hostname, (SELECT m.mac FROM node_macs m WHERE m.node_id = n.id "
    "ORDER BY m.first_seen, m.mac LIMIT 1), n.id)",
    "state": "n.state",
    "profile": "n.profile",
    "ip": "n.ip",
    "state_since": "n.state_since",
    "updated_at": "n.updated_at",
}
ACTIONS = ("approve", "retry", "reprovision", "retire")
# Event kinds that are boot traffic rather than lifecycle or identity changes.
BOOT_KINDS = ("dhcp", "tftp", "boot", "http")


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


@dataclass(frozen=True)
class NodeFilter:
    states: tuple[str, ...] = ()
    profile: str | None = None
    text: str | None = None
    sort: str = "id"
    descending: bool = False
    limit: int = 100
    offset: int = 0


def _progress(state: str, run: dict[str, Any] | None) -> dict[str, Any] | None:
    """How far an in-progress node is, from its running run's detail when it reports any."""
    if state not in IN_PROGRESS:
        return None
    detail = json.loads(run["detail"] or "{}") if run else {}
    for done_key, total_key, unit in (
        ("bytes_written", "bytes_total", "bytes"),
        ("tasks_done", "tasks_total", "tasks"),
        ("steps_done", "steps_total", "steps"),
    ):
        done, total = detail.get(done_key), detail.get(total_key)
        if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
            return {
                "unit": unit,
                "done": done,
                "total": total,
                "fraction": max(0.0, min(1.0, done / total)),
                "stage": detail.get("stage"),
            }
    stage = detail.get("stage")
    return {"unit": None, "done": None, "total": None, "fraction": None, "stage": stage}


def event_text(e: Event) -> str:
    """One short line for a person: 'inspecting → inspected (agent)'."""
    if e.to_state:
        return f"{e.from_state or 'new'} → {e.to_state} ({e.cause})"
    return f"{e.kind}: {e.cause}"


def event_dict(e: Event) -> dict[str, Any]:
    return {**e.to_dict(), "text": event_text(e)}


def summaries(store: Store, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Node rows → what the table shows per node, in the order given."""
    if not rows:
        return []
    ids = [int(r["id"]) for r in rows]
    macs: dict[int, list[str]] = {i: [] for i in ids}
    for m in store.query(
        f"SELECT node_id, mac FROM node_macs WHERE node_id IN ({_marks(ids)}) "
        "ORDER BY first_seen, mac",
        tuple(ids),
    ):
        macs[int(m["node_id"])].append(m["mac"])
    last = {
        int(r["node_id"]): Event.from_row(r)
        for r in store.query(
            f"SELECT * FROM events WHERE id IN (SELECT MAX(id) FROM events "
            f"WHERE node_id IN ({_marks(ids)}) GROUP BY node_id)",
            tuple(ids),
        )
    }
    runs = {
        int(r["node_id"]): r
        for r in store.query(
            f"SELECT * FROM runs WHERE id IN (SELECT MAX(id) FROM runs "
            f"WHERE node_id IN ({_marks(ids)}) AND status = 'running' GROUP BY node_id)",
            tuple(ids),
        )
    }
    out = []
    for r in rows:
        node = Node.from_row(r, tuple(macs[int(r["id"])]))
        d = node.to_dict()
        ev = last.get(node.id)
        d["last_event"] = event_dict(ev) if ev else None
        d["progress"] = _progress(node.state, runs.get(node.id))
        d["actions"] = [a for a in ACTIONS if a in allowed(node.state)]
        out.append(d)
    return out


def list_nodes(store: Store, f: NodeFilter) -> tuple[list[dict[str, Any]], int]:
    where: list[str] = ["n.merged_into IS NULL"]
    params: list[Any] = []
    if f.states:
        where.append(f"n.state IN ({_marks(f.states)})")
        params += list(f.states)
    if f.profile is not None:
        where.append("n.profile = ?")
        params.append(f.profile)
    if f.text:
        like = _like(f.text.strip().lower())
        where.append(
            "(lower(COALESCE(n.hostname,'')) LIKE ? ESCAPE '\\' "
            "OR lower(COALESCE(n.serial,'')) LIKE ? ESCAPE '\\' "
            "OR lower(COALESCE(n.uuid,'')) LIKE ? ESCAPE '\\' "
            "OR COALESCE(n.ip,'') LIKE ? ESCAPE '\\' "
            "OR EXISTS (SELECT 1 FROM node_macs m WHERE m.node_id = n.id "
            "AND m.mac LIKE ? ESCAPE '\\'))"
        )
        params += [like] * 5
    sql_where = " AND ".join(where)
    total_row = store.query_one(
        f"SELECT COUNT(*) AS c FROM nodes n WHERE {sql_where}", tuple(params)
    )
    order = f"{NODE_SORTS[f.sort]} {'DESC' if f.descending else 'ASC'}, n.id"
    rows = store.query(
        f"SELECT n.* FROM nodes n WHERE {sql_where} ORDER BY {order} LIMIT ? OFFSET ?",
        (*params, f.limit, f.offset),
    )
    return summaries(store, rows), int(total_row["c"]) if total_row else 0


def node_summary(store: Store, node_id: int) -> dict[str, Any]:
    rows = store.query("SELECT * FROM nodes WHERE id = ?", (node_id,))
    if not rows:
        raise NotFound(f"no node {node_id}")
    return summaries(store, rows)[0]


def summaries_by_id(store: Store, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = store.query(f"SELECT * FROM nodes WHERE id IN ({_marks(wanted)})", tuple(wanted))
    return {int(s["id"]): s for s in summaries(store, rows)}


def node_detail(store: Store, node_id: int) -> dict[str, Any]:
    d = node_summary(store, node_id)
    d["runs"] = [
        {**r, "detail": json.loads(r["detail"] or "{}")}
        for r in store.query(
            "SELECT * FROM runs WHERE node_id = ? ORDER BY id DESC LIMIT 50", (node_id,)
        )
    ]
    d["leases"] = store.query(
        "SELECT * FROM leases WHERE node_id = ? ORDER BY updated_at DESC LIMIT 20", (node_id,)
    )
    inv = store.query_one(
        "SELECT version, ts, source FROM inventories WHERE node_id = ? "
        "ORDER BY version DESC LIMIT 1",
        (node_id,),
    )
    d["inventory"] = inv
    return d


# --- inventories ---------------------------------------------------------------------------


def _inventory(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": row["version"],
        "ts": row["ts"],
        "source": row["source"],
        "data": json.loads(row["data"]),
    }


def inventory(store: Store, node_id: int, version: int | None = None) -> dict[str, Any]:
    if version is None:
        row = store.query_one(
            "SELECT * FROM inventories WHERE node_id = ? ORDER BY version DESC LIMIT 1",
            (node_id,),
        )
    else:
        row = store.query_one(
            "SELECT * FROM inventories WHERE node_id = ? AND version = ?", (node_id, version)
        )
    if row is None:
        which = "any inventory" if version is None else f"inventory version {version}"
        raise NotFound(f"node {node_id} has no {which}")
    return _inventory(row)


def inventory_history(store: Store, node_id: int, limit: int, offset: int) -> dict[str, Any]:
    rows = store.query(
        "SELECT version, ts, source FROM inventories WHERE node_id = ? "
        "ORDER BY version DESC LIMIT ? OFFSET ?",
        (node_id, limit, offset),
    )
    total = store.query_one("SELECT COUNT(*) AS c FROM inventories WHERE node_id = ?", (node_id,))
    return {
        "items": rows,
        "total": int(total["c"]) if total else 0,
        "limit": limit,
        "offset": offset,
    }


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf-level differences between two JSON documents, as dotted paths (lists by index)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append({"path": sub, "op": "added", "old": None, "new": new[key]})
            elif key not in new:
                out.append({"path": sub, "op": "removed", "old": old[key], "new": None})
            else:
                out += diff(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(old):
                out.append({"path": sub, "op": "added", "old": None, "new": new[i]})
            elif i >= len(new):
                out.append({"path": sub, "op": "removed", "old": old[i], "new": None})
            else:
                out += diff(old[i], new[i], sub)
        return out
    if old != new:
        return [{"path": path, "op": "changed", "old": old, "new": new}]
    return []


def inventory_diff(store: Store, node_id: int, old: int | None, new: int | None) -> dict[str, Any]:
    """``old`` → ``new`` (defaults: the latest version and the one before it)."""
    newer = inventory(store, node_id, new)
    if old is None:
        row = store.query_one(
            "SELECT * FROM inventories WHERE node_id = ? AND version < ? "
            "ORDER BY version DESC LIMIT 1",
            (node_id, newer["version"]),
        )
        older = _inventory(row) if row else None
    else:
        older = inventory(store, node_id, old)
    return {
        "from": older["version"] if older else None,
        "to": newer["version"],
        "changes": diff(older["data"] if older else {}, newer["data"]),
    }


# --- events, leases, activity --------------------------------------------------------------


def events(
    store: Store,
    *,
    node_id: int | None = None,
    kinds: Sequence[str] = (),
    after: int | None = None,
    before: int | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> list[Event]:
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if node_id is not None:
        where.append("node_id = ?")
        params.append(node_id)
    if kinds:
        where.append(f"kind IN ({_marks(kinds)})")
        params += list(kinds)
    if after is not None:
        where.append("id > ?")
        params.append(after)
    if before is not None:
        where.append("id < ?")
        params.append(before)
    order = "DESC" if newest_first else "ASC"
    rows = store.query(
        f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
        (*params, limit),
    )
    return [Event.from_row(r) for r in rows]


def last_event_id(store: Store) -> int:
    row = store.query_one("SELECT COALESCE(MAX(id), 0) AS id FROM events")
    return int(row["id"]) if row else 0


def leases(
    store: Store, *, state: str | None, mac: str | None, limit: int, offset: int
) -> dict[str, Any]:
    where: list[str] = ["1 = 1"]
    params: list[Any] = []
    if state:
        where.append("state = ?")
        params.append(state)
    if mac:
        where.append("mac = ?")
        params.append(mac)
    w = " AND ".join(where)
    rows = store.query(
        f"SELECT * FROM leases WHERE {w} ORDER BY updated_at DESC, ip LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    total = store.query_one(f"SELECT COUNT(*) AS c FROM leases WHERE {w}", tuple(params))
    return {
        "items": rows,
        "total": int(total["c"]) if total else 0,
        "limit": limit,
        "offset": offset,
    }


def leases_in_use(store: Store) -> dict[str, int]:
    rows = store.query(
        "SELECT subnet, COUNT(*) AS c FROM leases WHERE state = 'bound' AND expires > ? "
        "GROUP BY subnet",
        (store.clock(),),
    )
    return {r["subnet"]: int(r["c"]) for r in rows}


def state_counts(store: Store) -> dict[str, int]:
    rows = store.query(
        "SELECT state, COUNT(*) AS c FROM nodes WHERE merged_into IS NULL GROUP BY state"
    )
    return {r["state"]: int(r["c"]) for r in rows}


def profile_counts(store: Store) -> dict[str, int]:
    rows = store.query(
        "SELECT profile, COUNT(*) AS c FROM nodes WHERE merged_into IS NULL "
        "AND profile IS NOT NULL AND state != 'retired' GROUP BY profile"
    )
    return {r["profile"]: int(r["c"]) for r in rows}


def activity(store: Store, since: float) -> dict[str, int]:
    """Boot traffic events per kind since ``since`` (the dashboard's activity line)."""
    rows = store.query(
        f"SELECT kind, COUNT(*) AS c FROM events WHERE ts >= ? AND kind IN ({_marks(BOOT_KINDS)})"
        " GROUP BY kind",
        (since, *BOOT_KINDS),
    )
    counts = dict.fromkeys(BOOT_KINDS, 0)
    counts.update({r["kind"]: int(r["c"]) for r in rows})
    return counts
