"""Backend fakes for unit tests: a fixed one (remembers what it was given), an empty one and a
broken one (every write fails), as the handlers and service only ever see ``DhcpBackend``."""

from __future__ import annotations

from collections.abc import Sequence

from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.leases import Lease
from ztpd.errors import StoreError


class MemoryBackend:
    def __init__(self, leases: Sequence[Lease] = ()) -> None:
        self.leases = {x.ip: x for x in leases}
        self.sightings: list[Sighting] = []

    def load_leases(self) -> list[Lease]:
        return list(self.leases.values())

    def save_leases(self, leases: Sequence[Lease]) -> None:
        self.leases.update({x.ip: x for x in leases})

    def record_sightings(self, sightings: Sequence[Sighting]) -> None:
        self.sightings.extend(sightings)

    def close(self) -> None:
        pass


class BrokenBackend(MemoryBackend):
    def save_leases(self, leases: Sequence[Lease]) -> None:
        raise StoreError("disk on fire")
