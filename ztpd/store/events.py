"""Reading the append-only event log (writes go through ``Store.add_event``)."""

from __future__ import annotations

from ztpd.model import Event
from ztpd.store.db import Store


class Events:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(
        self,
        *,
        node_id: int | None = None,
        after: int = 0,
        limit: int = 200,
        newest_first: bool = False,
    ) -> list[Event]:
        """Events with id > ``after``, oldest first (or the newest ``limit`` when asked)."""
        where, params = "id > ?", [after]
        if node_id is not None:
            where += " AND node_id = ?"
            params.append(node_id)
        order = "DESC" if newest_first else "ASC"
        rows = self.store.query(
            f"SELECT * FROM events WHERE {where} ORDER BY id {order} LIMIT ?", (*params, limit)
        )
        return [Event.from_row(r) for r in rows]

    def last_id(self) -> int:
        row = self.store.query_one("SELECT COALESCE(MAX(id), 0) AS id FROM events")
        return int(row["id"]) if row else 0
