"""What the DHCP handlers need from the rest of ztpd: a small protocol, never SQLite itself.

``sqlite_backend.SqliteBackend`` is the real one; tests use in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ztpd.dhcp.leases import Lease


@dataclass(slots=True)  # read-only by convention; made per packet, frozen costs ~2 µs more
class Sighting:
    """What one DHCP request said about a machine, to be recorded on its node."""

    mac: str
    uuid: str | None = None  # option 97
    arch: str | None = None  # x86_64, arm64
    ip: str | None = None  # the address it was given, in full mode
    facts: dict[str, Any] = field(default_factory=dict)  # vendor class, firmware, relay info
    creates: bool = True  # False: record it only on a node that already has this MAC


class DhcpBackend(Protocol):
    def load_leases(self) -> list[Lease]:
        """Every lease row; called once at start."""
        ...

    def save_leases(self, leases: Sequence[Lease]) -> None:
        """Write these rows in one transaction; durable when it returns."""
        ...

    def record_sightings(self, sightings: Sequence[Sighting]) -> None:
        """Record boot facts on each machine's node, creating nodes in ``discovered`` (unless
        the sighting says it ``creates`` none)."""
        ...

    def close(self) -> None:
        """Release what the backend holds; the service calls it when it stops."""
        ...
