"""The DHCP backend over ztpd's SQLite store: leases in ``leases``, sightings through ``Nodes``.

Writes go through a connection of their own (a second ``Store`` on the same file; WAL lets the
rest of ztpd read meanwhile), used only by the DHCP writer thread, so a lease commit never
queues behind the appliance's other users of the shared connection's lock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.leases import Lease
from ztpd.errors import ZtpdError
from ztpd.identity import Identity
from ztpd.store import Nodes, Store

log = logging.getLogger("ztpd.dhcp")

SYNC = {"full": "FULL", "normal": "NORMAL"}


class SqliteBackend:
    def __init__(self, store: Store, *, sync: Literal["full", "normal"] = "full") -> None:
        self.store = store
        self.writes = Store(store.path, clock=store.clock)
        # dhcp.lease_sync: whether a lease commit waits for fsync (see config.DhcpConfig).
        self.writes.conn.execute(f"PRAGMA synchronous = {SYNC[sync]}")
        self.nodes = Nodes(self.writes)

    def close(self) -> None:
        self.writes.close()

    def load_leases(self) -> list[Lease]:
        rows = self.store.query(
            "SELECT ip, mac, client_id, subnet, state, expires, hostname FROM leases"
        )
        return [
            Lease(
                r["ip"],
                r["mac"],
                r["client_id"],
                r["subnet"],
                r["state"],
                r["expires"],
                r["hostname"],
            )
            for r in rows
        ]

    def save_leases(self, leases: Sequence[Lease]) -> None:
        now = self.writes.clock()
        with self.writes.transaction() as conn:
            conn.executemany(
                "INSERT INTO leases (ip, mac, client_id, subnet, state, expires, hostname, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ip) DO UPDATE SET "
                "mac = excluded.mac, client_id = excluded.client_id, subnet = excluded.subnet, "
                "state = excluded.state, expires = excluded.expires, "
                "hostname = excluded.hostname, updated_at = excluded.updated_at",
                [
                    (x.ip, x.mac, x.client_id, x.subnet, x.state, x.expires, x.hostname, now)
                    for x in leases
                ],
            )

    def record_sightings(self, sightings: Sequence[Sighting]) -> None:
        with self.writes.transaction():
            # One query finds which of the MACs that may only update a node have one: most
            # relayed clients that do not network-boot are not nodes (a MAC from the codec is
            # already in node_macs' form).
            only = [s.mac for s in sightings if not s.creates]
            marks = ", ".join("?" * len(only))
            nodes = {
                r["mac"]
                for r in self.writes.query(
                    f"SELECT mac FROM node_macs WHERE mac IN ({marks})",
                    tuple(only),
                )
            }
            for s in sightings:
                try:
                    if not s.creates and s.mac not in nodes:
                        continue
                    node = self.nodes.observe(
                        Identity.of(macs=[s.mac], uuid=s.uuid),
                        cause="dhcp",
                        detail={"mac": s.mac, **s.facts},
                    )
                    columns = {k: v for k, v in (("ip", s.ip), ("arch", s.arch)) if v}
                    self.nodes.update_facts(node.id, {"dhcp": s.facts}, **columns)
                    if s.ip:
                        self.writes.conn.execute(
                            "UPDATE leases SET node_id = ? WHERE ip = ?", (node.id, s.ip)
                        )
                except ZtpdError as e:  # one odd sighting must not lose the others
                    log.warning("dhcp sighting not recorded mac=%s reason=%s", s.mac, e)
