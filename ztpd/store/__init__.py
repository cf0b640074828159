"""The embedded SQLite store. Protocol code never imports this package: it gets a backend."""

from ztpd.store.db import SCHEMA_VERSION, Store
from ztpd.store.events import Events
from ztpd.store.inventories import Inventories
from ztpd.store.nodes import Nodes

__all__ = ["SCHEMA_VERSION", "Events", "Inventories", "Nodes", "Store"]
