"""Nodes in the store: lookup by any identifier, and resolution of sightings to one node.

Resolution order (see ztpd/identity.py for why): the node with this UUID; else the node owning
most of these MACs, unless it carries a different UUID (then this is another machine that got the
NIC); else the one node with this serial whose UUID and MACs do not contradict the sighting;
else a new node in ``discovered``. MACs seen with a node are linked to it; a MAC that moved is
re-linked and the move is an event; a node left with no MACs while still ``discovered`` is
merged into the one that took them, so a machine first seen on two NICs ends as one node.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from ztpd.errors import BadRequest, NotFound
from ztpd.identity import Identity, normalize_mac, normalize_uuid
from ztpd.model import Node
from ztpd.store.db import Store

NEW_STATE = "discovered"


class Nodes:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- reads -------------------------------------------------------------------------------

    def _macs(self, node_id: int) -> tuple[str, ...]:
        rows = self.store.query(
            "SELECT mac FROM node_macs WHERE node_id = ? ORDER BY first_seen, mac", (node_id,)
        )
        return tuple(r["mac"] for r in rows)

    def _load(self, row: dict[str, Any] | None) -> Node | None:
        return None if row is None else Node.from_row(row, self._macs(row["id"]))

    def maybe(self, node_id: int) -> Node | None:
        """The node with this id, or None."""
        return self._load(self.store.query_one("SELECT * FROM nodes WHERE id = ?", (node_id,)))

    def get(self, node_id: int) -> Node:
        node = self.maybe(node_id)
        if node is None:
            raise NotFound(f"no node {node_id}")
        return node

    def by_mac(self, mac: str) -> Node | None:
        return self._load(
            self.store.query_one(
                "SELECT n.* FROM nodes n JOIN node_macs m ON m.node_id = n.id WHERE m.mac = ?",
                (normalize_mac(mac),),
            )
        )

    def by_uuid(self, uuid: str) -> Node | None:
        u = normalize_uuid(uuid)
        if u is None:
            return None
        return self._load(self.store.query_one("SELECT * FROM nodes WHERE uuid = ?", (u,)))

    def by_ip(self, ip: str) -> Node | None:
        return self._load(
            self.store.query_one("SELECT * FROM nodes WHERE ip = ? AND merged_into IS NULL", (ip,))
        )

    def find(self, ref: str) -> Node:
        """A node by what a person types: id, MAC, UUID, serial or hostname."""
        ref = ref.strip()
        node = None
        if ref.isdigit():  # an id first; digits can also be a serial
            node = self._load(
                self.store.query_one(
                    "SELECT * FROM nodes WHERE id = ? AND merged_into IS NULL", (int(ref),)
                )
            )
        if node is None:
            with contextlib.suppress(ValueError):
                node = self.by_mac(ref)
        node = node or self.by_uuid(ref)
        if node is None:
            rows = self.store.query(
                "SELECT * FROM nodes WHERE (serial = ? OR hostname = ?) AND merged_into IS NULL",
                (ref, ref),
            )
            if len(rows) > 1:
                ids = ", ".join(str(r["id"]) for r in rows)
                raise BadRequest(f"{ref!r} names several nodes ({ids}); use the node id")
            node = self._load(rows[0] if rows else None)
        if node is None:
            raise NotFound(f"no node matches {ref!r}")
        return node

    def list(self, states: Iterable[str] = ()) -> list[Node]:
        wanted = list(states)
        sql = "SELECT * FROM nodes WHERE merged_into IS NULL"
        if wanted:
            sql += f" AND state IN ({','.join('?' * len(wanted))})"
        rows = self.store.query(sql + " ORDER BY id", tuple(wanted))
        return [Node.from_row(r, self._macs(r["id"])) for r in rows]

    # --- identity ----------------------------------------------------------------------------

    def _candidate(self, ident: Identity) -> int | None:
        q = self.store.query_one
        if ident.uuid:
            row = q("SELECT id FROM nodes WHERE uuid = ?", (ident.uuid,))
            if row:
                return int(row["id"])
        if ident.macs:
            marks = ",".join("?" * len(ident.macs))
            row = q(
                f"SELECT n.id, n.uuid, COUNT(*) AS hits FROM node_macs m "
                f"JOIN nodes n ON n.id = m.node_id WHERE m.mac IN ({marks}) "
                f"GROUP BY n.id ORDER BY hits DESC, n.id LIMIT 1",
                ident.macs,
            )
            if row and not (ident.uuid and row["uuid"] and row["uuid"] != ident.uuid):
                return int(row["id"])
        if ident.serial:
            rows = self.store.query(
                "SELECT id, uuid FROM nodes WHERE serial = ? AND merged_into IS NULL",
                (ident.serial,),
            )
            fits = [r for r in rows if not (ident.uuid and r["uuid"] and r["uuid"] != ident.uuid)]
            if len(fits) == 1 and not self._macs_elsewhere(ident.macs, int(fits[0]["id"])):
                return int(fits[0]["id"])
        return None

    def _macs_elsewhere(self, macs: tuple[str, ...], node_id: int) -> bool:
        if not macs:
            return False
        marks = ",".join("?" * len(macs))
        row = self.store.query_one(
            f"SELECT 1 FROM node_macs WHERE mac IN ({marks}) AND node_id != ?", (*macs, node_id)
        )
        return row is not None

    def observe(
        self,
        ident: Identity,
        *,
        cause: str,
        node_id: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Node:
        """Resolve a sighting to one node (creating it in ``discovered`` if new) and link what
        it says. ``node_id`` pins the node when the caller already knows it (a per-node token)."""
        if ident.is_empty() and node_id is None:
            raise BadRequest("a sighting needs at least one MAC, UUID or serial")
        now = self.store.clock()
        with self.store.transaction() as conn:
            nid = node_id if node_id is not None else self._candidate(ident)
            if nid is None:
                cur = conn.execute(
                    "INSERT INTO nodes (state, uuid, serial, created_at, updated_at, state_since)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (NEW_STATE, ident.uuid, ident.serial, now, now, now),
                )
                nid = int(cur.lastrowid or 0)
                self.store.add_event(
                    node_id=nid,
                    kind="transition",
                    cause=cause,
                    to_state=NEW_STATE,
                    detail={
                        **(detail or {}),
                        "macs": list(ident.macs),
                        "uuid": ident.uuid,
                        "serial": ident.serial,
                    },
                )
            self._link(nid, ident, now, cause)
        return self.get(nid)

    def _link(self, nid: int, ident: Identity, now: float, cause: str) -> None:
        conn = self.store.conn
        row = self.store.query_one("SELECT uuid, serial FROM nodes WHERE id = ?", (nid,))
        if row is None:
            raise NotFound(f"no node {nid}")
        if ident.uuid and row["uuid"] != ident.uuid:
            # A UUID can belong to one node only: a stale holder (e.g. a node that was created
            # before its UUID was known) gives it up.
            holder = self.store.query_one("SELECT id FROM nodes WHERE uuid = ?", (ident.uuid,))
            if holder and holder["id"] != nid:
                conn.execute("UPDATE nodes SET uuid = NULL WHERE id = ?", (holder["id"],))
            if row["uuid"] is None or holder:
                conn.execute("UPDATE nodes SET uuid = ? WHERE id = ?", (ident.uuid, nid))
        if ident.serial and row["serial"] is None:
            conn.execute("UPDATE nodes SET serial = ? WHERE id = ?", (ident.serial, nid))
        for mac in ident.macs:
            owner = self.store.query_one("SELECT node_id FROM node_macs WHERE mac = ?", (mac,))
            if owner is None:
                conn.execute(
                    "INSERT INTO node_macs (mac, node_id, first_seen, last_seen) "
                    "VALUES (?, ?, ?, ?)",
                    (mac, nid, now, now),
                )
            elif owner["node_id"] == nid:
                conn.execute("UPDATE node_macs SET last_seen = ? WHERE mac = ?", (now, mac))
            else:
                old = int(owner["node_id"])
                conn.execute(
                    "UPDATE node_macs SET node_id = ?, last_seen = ? WHERE mac = ?", (nid, now, mac)
                )
                self.store.add_event(
                    node_id=nid,
                    kind="identity",
                    cause=cause,
                    detail={"mac": mac, "moved_from": old},
                )
                self._merge_if_orphan(old, nid, cause)
        conn.execute("UPDATE nodes SET updated_at = ? WHERE id = ?", (now, nid))

    def _merge_if_orphan(self, old: int, into: int, cause: str) -> None:
        row = self.store.query_one(
            "SELECT state FROM nodes WHERE id = ? AND merged_into IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM node_macs WHERE node_id = ?)",
            (old, old),
        )
        if row and row["state"] == NEW_STATE:
            self.store.conn.execute(
                "UPDATE nodes SET merged_into = ?, uuid = NULL WHERE id = ?", (into, old)
            )
            self.store.add_event(
                node_id=old, kind="identity", cause=cause, detail={"merged_into": into}
            )

    # --- plain updates -----------------------------------------------------------------------

    def update_facts(self, node_id: int, facts: dict[str, Any], **columns: Any) -> None:
        """Merge ``facts`` into the node's facts and set plain columns (ip, arch, hostname)."""
        allowed = {"ip", "arch", "hostname"}
        bad = set(columns) - allowed
        if bad:
            raise ValueError(f"not updatable here: {sorted(bad)}")
        with self.store.transaction() as conn:
            row = self.store.query_one("SELECT facts FROM nodes WHERE id = ?", (node_id,))
            if row is None:
                raise NotFound(f"no node {node_id}")
            merged = {**json.loads(row["facts"] or "{}"), **facts}
            sets = ", ".join(f"{k} = ?" for k in columns)
            conn.execute(
                f"UPDATE nodes SET facts = ?, updated_at = ?{', ' + sets if sets else ''} "
                "WHERE id = ?",
                (
                    json.dumps(merged, sort_keys=True),
                    self.store.clock(),
                    *columns.values(),
                    node_id,
                ),
            )
