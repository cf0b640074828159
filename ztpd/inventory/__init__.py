"""The machine inventory: one documented, versioned schema (docs/inventory.md)."""

from ztpd.inventory.schema import SCHEMA_VERSION, SUPPORTED_VERSIONS, Inventory

__all__ = ["SCHEMA_VERSION", "SUPPORTED_VERSIONS", "Inventory"]
