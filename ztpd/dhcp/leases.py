"""The lease book: which address belongs to whom, held in memory and mirrored to the store.

ztpd owns its lease table, so the book is loaded once at start and every change that matters
after a crash (bound, renewed, released, declined) is written to the store before the client is
told (see ``service.py``). Offers live only here: an offer lost in a crash is harmless because
the client's REQUEST is checked against the book again. Addresses are ints inside, for speed.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, replace

from ztpd.config import DhcpSubnet
from ztpd.dhcp.packet import Request

OFFERED, BOUND, RELEASED, DECLINED = "offered", "bound", "released", "declined"
DECLINED_OWNER = "declined"  # the mac of a quarantined address: nobody's
LINKS_CACHED = 1024


def ip2int(ip: str) -> int:
    return int(struct.unpack("!I", socket.inet_aton(ip))[0])


def int2ip(n: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", n))


# Read-only by convention, not frozen: a frozen dataclass's __init__ costs ~2 µs more, and one
# is made per packet.
@dataclass(slots=True)
class Lease:
    ip: str
    mac: str
    client_id: str | None  # option 61 as hex, when the client sent one
    subnet: str
    state: str  # offered, bound, released, declined
    expires: float
    hostname: str | None = None

    @property
    def key(self) -> str:
        return "id:" + self.client_id if self.client_id else self.mac


@dataclass
class Plan:
    """One configured subnet, prepared for allocation."""

    conf: DhcpSubnet
    network: ipaddress.IPv4Network
    first: int
    last: int
    pools: list[tuple[int, int]]
    reserved: dict[str, int]  # mac -> address
    reserved_ips: frozenset[int]
    hostnames: dict[str, str]  # mac -> hostname, from reservations
    size: int  # addresses in the pools
    cursor: int = 0  # index into the flattened pools where the next free-address scan starts

    @classmethod
    def of(cls, conf: DhcpSubnet) -> Plan:
        net = ipaddress.IPv4Network(conf.subnet)
        reserved = {r.mac: ip2int(r.ip) for r in conf.reservations}
        pools = [(ip2int(p.start), ip2int(p.end)) for p in conf.pools]
        return cls(
            conf,
            net,
            int(net.network_address),
            int(net.broadcast_address),
            pools,
            reserved,
            frozenset(reserved.values()),
            {r.mac: r.hostname for r in conf.reservations if r.hostname},
            sum(b - a + 1 for a, b in pools),
        )

    def contains(self, ip: int) -> bool:
        return self.first <= ip <= self.last

    def in_pool(self, ip: int) -> bool:
        return any(a <= ip <= b for a, b in self.pools)

    def nth(self, i: int) -> int:
        for a, b in self.pools:
            if i <= b - a:
                return a + i
            i -= b - a + 1
        raise IndexError(i)


class LeaseBook:
    def __init__(self, subnets: list[DhcpSubnet]) -> None:
        self.plans = [Plan.of(s) for s in subnets]
        self.by_ip: dict[int, Lease] = {}
        self.by_key: dict[tuple[str, str], int] = {}  # (client key, subnet) -> address
        self._links: dict[str, Plan | None] = {}  # plan_for's answers (links are few)

    def load(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._put(lease)

    def plan_for(self, ip: str) -> Plan | None:
        if ip in self._links:
            return self._links[ip]
        n = ip2int(ip)
        plan = next((p for p in self.plans if p.contains(n)), None)
        if len(self._links) >= LINKS_CACHED:  # links come from packets: keep it bounded
            self._links.clear()
        self._links[ip] = plan
        return plan

    def _put(self, lease: Lease, n: int | None = None) -> Lease:
        n = ip2int(lease.ip) if n is None else n
        old = self.by_ip.get(n)
        if old is not None and self.by_key.get((old.key, old.subnet)) == n:
            del self.by_key[(old.key, old.subnet)]
        self.by_ip[n] = lease
        if lease.mac != DECLINED_OWNER:
            self.by_key[(lease.key, lease.subnet)] = n
        return lease

    def current(self, plan: Plan, key: str) -> Lease | None:
        n = self.by_key.get((key, plan.conf.subnet))
        return None if n is None else self.by_ip[n]

    def available(self, plan: Plan, ip: int, key: str, mac: str, now: float) -> bool:
        """May the client ``key``/``mac`` have ``ip`` in ``plan`` now?"""
        if not plan.contains(ip):
            return False
        if ip in plan.reserved_ips:
            return plan.reserved.get(mac) == ip
        lease = self.by_ip.get(ip)
        if lease is not None and lease.expires > now and lease.key != key:
            return False
        if lease is not None and lease.state == DECLINED and lease.expires > now:
            return False
        return plan.in_pool(ip)

    def choose(
        self, plan: Plan, key: str, mac: str, requested: str | None, now: float
    ) -> int | None:
        """The address to offer: reservation, then the client's own, then its wish, then free."""
        if mac in plan.reserved:
            return plan.reserved[mac]
        mine = self.current(plan, key)
        if mine is not None and mine.state != DECLINED:
            n = ip2int(mine.ip)
            if self.available(plan, n, key, mac, now):
                return n
        if requested is not None:
            n = ip2int(requested)
            if self.available(plan, n, key, mac, now):
                return n
        size = plan.size
        for step in range(size):
            i = (plan.cursor + step) % size
            n = plan.nth(i)
            if n not in plan.reserved_ips:
                lease = self.by_ip.get(n)
                if lease is None or lease.expires <= now:
                    plan.cursor = (i + 1) % size
                    return n
        return None

    def set(self, plan: Plan, ip: int, req: Request, state: str, expires: float) -> Lease:
        cid = req.client_id.hex() if req.client_id else None
        return self._put(
            Lease(int2ip(ip), req.mac, cid, plan.conf.subnet, state, expires, req.hostname), ip
        )

    def end(self, lease: Lease, state: str, expires: float) -> Lease:
        """Release or quarantine an address (a declined one belongs to nobody)."""
        mac = DECLINED_OWNER if state == DECLINED else lease.mac
        cid = None if state == DECLINED else lease.client_id
        return self._put(replace(lease, state=state, expires=expires, mac=mac, client_id=cid))

    def forget_offer(self, plan: Plan, key: str) -> None:
        lease = self.current(plan, key)
        if lease is not None and lease.state == OFFERED:
            n = ip2int(lease.ip)
            del self.by_ip[n]
            del self.by_key[(key, plan.conf.subnet)]
