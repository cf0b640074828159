"""The SQLite backend against a real store: leases round-trip, sightings make or update nodes."""

from __future__ import annotations

from pathlib import Path

from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.leases import BOUND, Lease
from ztpd.dhcp.sqlite_backend import SqliteBackend
from ztpd.store import Nodes, Store


def test_leases_round_trip_and_sightings_create_only_when_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "ztpd.db")
    backend = SqliteBackend(store, sync="normal")
    try:
        lease = Lease("10.9.0.5", "02:00:00:00:00:01", None, "10.9.0.0/24", BOUND, 99.0, "n1")
        backend.save_leases([lease])
        assert backend.load_leases() == [lease]
        relay = {"relay": {"giaddr": "10.9.0.254"}}
        backend.record_sightings(
            [
                Sighting("02:00:00:00:00:01", ip="10.9.0.5", facts=relay, creates=False),
                Sighting("02:00:00:00:00:02", arch="x86_64", facts={"boot_kind": "bios"}),
            ]
        )
        nodes = Nodes(store)
        assert nodes.by_mac("02:00:00:00:00:01") is None  # a plain relayed client: no node
        booted = nodes.by_mac("02:00:00:00:00:02")
        assert booted is not None and booted.state == "discovered"
        # Once it is a node, a sighting that creates none still updates it.
        backend.record_sightings([Sighting("02:00:00:00:00:02", ip="10.9.0.7", creates=False)])
        row = store.query_one("SELECT ip FROM nodes WHERE id = ?", (booted.id,))
        assert row is not None and row["ip"] == "10.9.0.7"
    finally:
        backend.close()
        store.close()
