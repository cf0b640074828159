"""Decisions: a typed request in, a typed reply (plus what to persist and record) out.

Pure logic over the lease book and the boot table: no sockets, no store, no clock of their own,
so they are tested table-driven with fakes. ``ProxyHandler`` answers only network-booting clients
and never hands out addresses; ``FullHandler`` is authoritative for its subnets (RFC 2131).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from ztpd.config import DhcpConfig, DhcpOption, DhcpSubnet
from ztpd.dhcp import boot, codec
from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.boot import BootChoice, BootTargets
from ztpd.dhcp.leases import (
    BOUND,
    DECLINED,
    OFFERED,
    RELEASED,
    Lease,
    LeaseBook,
    Plan,
    int2ip,
    ip2int,
)
from ztpd.dhcp.packet import (
    BROADCAST_FLAG,
    PXE_PORT,
    SERVER_PORT,
    Msg,
    Network,
    Reply,
    Request,
)

log = logging.getLogger("ztpd.dhcp")


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mac: bytes
    address: str
    network: ipaddress.IPv4Network


@dataclass(slots=True)  # read-only by convention: the hot path's records are not frozen (~2 µs)
class Arrival:
    """Where a request came in: the interface, the sender, and our port (67 or 4011)."""

    interface: Interface
    src_ip: str
    src_port: int
    port: int = SERVER_PORT


@dataclass(slots=True)
class Outcome:
    reply: Reply | None
    persist: tuple[Lease, ...] = ()  # must be durable before ``reply`` is sent
    sighting: Sighting | None = None
    note: str = ""  # why, for the log line


@dataclass(slots=True)
class Ignore:
    """Deliberately no answer (not ours to answer); counted, not an error."""

    reason: str
    sighting: Sighting | None = field(default=None)


Result = Outcome | Ignore


def _relay_facts(req: Request) -> dict[str, Any]:
    if not req.relayed and req.relay_agent is None:
        return {}
    relay: dict[str, Any] = {"giaddr": req.giaddr}
    for name, raw in (("circuit_id", req.circuit_id), ("remote_id", req.remote_id)):
        if raw is not None:
            text = raw.decode("ascii", "replace")
            relay[name] = text if text.isprintable() else raw.hex()
            relay[name + "_hex"] = raw.hex()
    if req.link_selection is not None:
        relay["link_selection"] = req.link_selection
    return {"relay": relay}


def sighting(req: Request, choice: BootChoice | None, ip: str | None = None) -> Sighting | None:
    """What to record on the node: boot clients, and any client a relay told us about. A
    machine becomes a node when it network-boots or a relay says where it is cabled (option
    82); a relayed client that does neither (a printer, a node's installed OS) only updates
    the node its MAC already belongs to."""
    facts = _relay_facts(req)
    if choice is None and not facts:
        return None
    if choice is not None:
        facts.update(
            {
                "vendor_class": req.vendor_class,
                "arch_code": choice.arch_code,
                "firmware": choice.firmware,
                "boot_kind": choice.kind,
                "user_class": [u.decode("ascii", "replace") for u in req.user_classes],
            }
        )
    if req.hostname:
        facts["hostname"] = req.hostname
    creates = choice is not None or req.circuit_id is not None or req.remote_id is not None
    return Sighting(req.mac, req.uuid, choice.node_arch if choice else None, ip, facts, creates)


def _base(req: Request, mt: Msg, server: str) -> dict[str, Any]:
    """The Reply fields every reply to ``req`` shares (built as keywords: one constructor call
    per reply keeps the hot path cheap)."""
    return {
        "message_type": mt,
        "xid": req.xid,
        "chaddr": req.chaddr,
        "htype": req.htype,
        "hlen": req.hlen,
        "flags": req.flags,
        "giaddr": req.giaddr,
        "server_id": server,
        "relay_agent": req.relay_agent,
        "max_size": min(req.max_size or 576, 1500),
    }


def _boot(
    choice: BootChoice | None, req: Request, *, server: str, targets: BootTargets, proxy: bool
) -> dict[str, Any]:
    """The boot fields of a reply: file, next server, vendor class, PXE and iPXE options."""
    if choice is None or choice.kind is None:
        return {}
    vendor_class = choice.vendor_class or (boot.PXE_CLIENT if proxy else None)
    out: dict[str, Any] = {"file": choice.file, "vendor_class": vendor_class}
    # iPXE takes a proxy offer only with both a next server and a file (dhcp_has_pxeopts),
    # even when the file is an http:// URL.
    if choice.tftp or proxy:
        out["siaddr"] = targets.tftp_server or server
    if proxy and vendor_class == boot.PXE_CLIENT:
        out["vendor_opts"] = boot.PXE_VENDOR_OPTS
    if proxy:
        out["client_uuid"] = req.client_uuid
    if choice.kind == "ipxe":
        out["ipxe"] = boot.IPXE_SETTINGS
    return out


def _log_unknown_arch(req: Request, choice: BootChoice | None) -> None:
    if choice is not None and choice.kind is None:
        log.warning(
            "dhcp unknown architecture mac=%s xid=%#x arch=%s vendor_class=%s",
            req.mac,
            req.xid,
            choice.arch_code,
            req.vendor_class,
        )


class ProxyHandler:
    """ProxyDHCP (PXE spec §2.2.3): boot server and file only, beside the site's DHCP server."""

    def __init__(self, targets: BootTargets) -> None:
        self.targets = targets

    def handle(self, req: Request, at: Arrival, now: float) -> Result:
        choice = boot.choose(req, self.targets)
        if choice is None:
            return Ignore("not a network-boot client")
        seen = sighting(req, choice)
        if choice.kind is None:
            _log_unknown_arch(req, choice)
            return Ignore("unknown architecture", seen)
        server = at.interface.address
        if at.port == PXE_PORT and req.message_type in (Msg.REQUEST, Msg.INFORM):
            mt = Msg.ACK
        elif at.port == SERVER_PORT and req.message_type == Msg.DISCOVER:
            mt = Msg.OFFER
        else:
            return Ignore(f"{req.message_type.name} is for the address server", seen)
        r = Reply(
            **_base(req, mt, server),
            **_boot(choice, req, server=server, targets=self.targets, proxy=True),
            ciaddr=req.ciaddr if mt == Msg.ACK else "0.0.0.0",
        )
        return Outcome(r, sighting=seen, note=f"boot={choice.kind} file={choice.file}")


def _option_bytes(o: DhcpOption) -> bytes:
    if o.text is not None:
        return o.text.encode()
    if o.ip is not None:
        return b"".join(ip2int(a).to_bytes(4, "big") for a in o.ip)
    for width, value in ((1, o.u8), (2, o.u16), (4, o.u32)):
        if value is not None:
            return value.to_bytes(width, "big")
    return bytes.fromhex((o.hex or "").replace(":", ""))


class FullHandler:
    """Authoritative DHCP for the configured subnets: the whole RFC 2131 exchange."""

    def __init__(self, config: DhcpConfig, targets: BootTargets, book: LeaseBook) -> None:
        self.config = config
        self.targets = targets
        self.book = book
        # Per subnet, the options every grant carries, encoded once (not per packet).
        self._network: dict[str, Network] = {
            s.subnet: codec.with_wire(
                Network(
                    subnet_mask=str(ipaddress.IPv4Network(s.subnet).netmask),
                    routers=(s.router,) if s.router else (),
                    dns=tuple(s.dns),
                    domain=s.domain,
                    ntp=tuple(s.ntp),
                    extra=tuple((o.code, _option_bytes(o)) for o in s.options),
                )
            )
            for s in config.subnets
        }

    def _plan(self, req: Request, at: Arrival) -> Plan | None:
        # The link the request names (RFC 3527 link selection, RFC 3011 subnet selection, or
        # a relay's giaddr, RFC 2131 §4.3.1); else the receiving interface's.
        return self.book.plan_for(req.link or at.interface.address)

    def _lease_time(self, s: DhcpSubnet) -> int:
        return s.lease_time or self.config.lease_time

    def _grant(
        self,
        req: Request,
        at: Arrival,
        plan: Plan,
        mt: Msg,
        *,
        ip: str | None,
        choice: BootChoice | None,
    ) -> Reply:
        s = plan.conf
        server = at.interface.address
        return Reply(
            mt,
            req.xid,
            req.chaddr,
            req.htype,
            req.hlen,
            req.flags,
            # INFORM (ip None): the client's own address and no lease (RFC 2131 §3.4).
            req.ciaddr if mt == Msg.ACK else "0.0.0.0",
            ip or "0.0.0.0",
            giaddr=req.giaddr,
            server_id=server,
            lease_time=None if ip is None else self._lease_time(s),
            hostname=plan.hostnames.get(req.mac),
            network=self._network[s.subnet],
            relay_agent=req.relay_agent,
            max_size=min(req.max_size or 576, 1500),
            **_boot(choice, req, server=server, targets=self.targets, proxy=False),
        )

    def _nak(self, req: Request, at: Arrival, why: str) -> Outcome:
        base = _base(req, Msg.NAK, at.interface.address)
        # RFC 2131 §4.3.2: a NAK through a relay asks it to broadcast.
        base["flags"] |= BROADCAST_FLAG if req.relayed else 0
        return Outcome(Reply(**base, message=why), note=f"nak reason={why!r}")

    def handle(self, req: Request, at: Arrival, now: float) -> Result:
        if at.port != SERVER_PORT:
            return Ignore("port 4011 is answered in proxy mode only")
        plan = self._plan(req, at)
        if plan is None:
            return Ignore(f"no subnet for link={req.link} interface={at.interface.name}")
        choice = boot.choose(req, self.targets)
        _log_unknown_arch(req, choice)
        key, mt = req.client_key, req.message_type
        if mt == Msg.DISCOVER:
            n = self.book.choose(plan, key, req.mac, req.requested_ip, now)
            if n is None:
                return Ignore(f"no free address in {plan.conf.subnet}", sighting(req, choice))
            current = self.book.current(plan, key)
            if current is None or ip2int(current.ip) != n or current.expires <= now:
                self.book.set(plan, n, req, OFFERED, now + self.config.offer_timeout)
            ip = int2ip(n)
            return Outcome(
                self._grant(req, at, plan, Msg.OFFER, ip=ip, choice=choice),
                sighting=sighting(req, choice),
                note=f"ip={ip}",
            )
        if mt == Msg.REQUEST:
            return self._request(req, at, plan, choice, now)
        if mt == Msg.INFORM:
            return Outcome(
                self._grant(req, at, plan, Msg.ACK, ip=None, choice=choice),
                sighting=sighting(req, choice, req.ciaddr),
                note="inform",
            )
        if req.server_id not in (None, at.interface.address):
            return Ignore(f"{mt.name} for another server {req.server_id}")
        held = req.requested_ip if mt == Msg.DECLINE else req.ciaddr
        lease = self.book.current(plan, key)
        if held is None or lease is None or lease.ip != held:
            return Ignore(f"{mt.name} of {held} which this client does not hold")
        if mt == Msg.DECLINE:  # someone else uses it: keep it out of the pool for a while
            ended = self.book.end(lease, DECLINED, now + self.config.decline_quarantine)
            log.warning(
                "dhcp decline mac=%s xid=%#x ip=%s quarantined=%ss",
                req.mac,
                req.xid,
                held,
                self.config.decline_quarantine,
            )
        else:
            ended = self.book.end(lease, RELEASED, now)
        return Outcome(None, persist=(ended,), note=f"{mt.name.lower()} ip={held}")

    def _request(
        self, req: Request, at: Arrival, plan: Plan, choice: BootChoice | None, now: float
    ) -> Result:
        key = req.client_key
        if req.server_id is not None and req.server_id != at.interface.address:
            self.book.forget_offer(plan, key)  # SELECTING another server's offer
            return Ignore(f"client chose server {req.server_id}")
        # SELECTING/INIT-REBOOT name the address in option 50; RENEWING/REBINDING in ciaddr.
        ip = req.requested_ip or (req.ciaddr if req.ciaddr != "0.0.0.0" else None)
        if ip is None:
            return Ignore("REQUEST names no address")
        n = ip2int(ip)
        if not plan.contains(n):
            return self._nak(req, at, f"{ip} is not on this network")
        if not self.book.available(plan, n, key, req.mac, now):
            return self._nak(req, at, f"{ip} is not available")
        lease = self.book.set(plan, n, req, BOUND, now + self._lease_time(plan.conf))
        return Outcome(
            self._grant(req, at, plan, Msg.ACK, ip=ip, choice=choice),
            persist=(lease,),
            sighting=sighting(req, choice, ip),
            note=f"ip={ip}",
        )


Handler = ProxyHandler | FullHandler
