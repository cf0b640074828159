"""Reading stored inventories as the typed v1 schema (the agent endpoints write them)."""

from __future__ import annotations

from ztpd.inventory import Inventory
from ztpd.store.db import Store


class Inventories:
    def __init__(self, store: Store) -> None:
        self.store = store

    def latest(self, node_id: int) -> Inventory | None:
        """The node's newest inventory, or None when it has never sent one."""
        row = self.store.query_one(
            "SELECT data FROM inventories WHERE node_id = ? ORDER BY version DESC LIMIT 1",
            (node_id,),
        )
        return None if row is None else Inventory.model_validate_json(row["data"])
