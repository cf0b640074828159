"""The DHCP service: sockets on the configured interfaces, delivery, limits, durable ACKs.

One thread serves DHCP: it waits for datagrams on every socket, decodes, decides (in memory)
and sends the replies that need no store write, then commits the burst's lease changes in one
transaction and sends the replies that waited for it (``writer.py``): no ACK before its COMMIT,
so after ``kill -9`` no address can have been promised to two clients. Packets never cross a
thread, so none waits for the GIL to be handed over between an event loop and a writer; the
event loop only starts and stops the thread. Bad packets are logged (MAC, xid, reason), counted
and dropped; nothing a client sends can stop the thread. ``counters`` is what a /metrics
endpoint reads.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import math
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from ztpd.config import DhcpConfig
from ztpd.dhcp import codec
from ztpd.dhcp.backend import DhcpBackend, Sighting
from ztpd.dhcp.boot import BootTargets
from ztpd.dhcp.handlers import Arrival, FullHandler, Handler, Ignore, Interface, ProxyHandler
from ztpd.dhcp.leases import LeaseBook
from ztpd.dhcp.packet import CLIENT_PORT, PXE_PORT, SERVER_PORT, Msg, Reply, Request
from ztpd.dhcp.writer import Writer
from ztpd.errors import ConfigError

log = logging.getLogger("ztpd.dhcp")

SIOCGIFADDR, SIOCGIFNETMASK, SIOCGIFHWADDR = 0x8915, 0x891B, 0x8927
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
BROADCAST = "255.255.255.255"
SIGHTING_REFRESH = 300.0  # seconds before an unchanged sighting is written again
LIMITER_SIZE = 65_536  # MACs tracked by the rate limiter
READ_BURST = 64  # datagrams read from one socket before the burst's leases are committed
MAX_DATAGRAM = 4096
RCVBUF = 4 << 20  # absorbs bursts (a rack powering on) while a commit is in flight
REPLY_COUNTER = {m: f"reply.{m.name.lower()}" for m in Msg}


def interface(name: str) -> Interface:
    """The IPv4 address, netmask and MAC of ``name`` (SIOCGIF* ioctls)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("256s", name.encode()[:15])
        try:
            addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)[20:24])
            mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), SIOCGIFNETMASK, req)[20:24])
            mac = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
        except OSError as e:
            raise ConfigError(
                f"dhcp.interfaces: {name}: no usable IPv4 address ({e.strerror})"
            ) from None
    return Interface(
        name,
        socket.if_nametoindex(name),
        mac,
        addr,
        ipaddress.IPv4Network(f"{addr}/{mask}", strict=False),
    )


@dataclass(slots=True)  # read-only by convention: one per reply, and frozen costs ~2 µs
class Route:
    ip: str
    port: int
    layer2: bool = False  # unicast to chaddr without ARP: the client has no address yet


def route(req: Request, reply: Reply, at: Arrival) -> Route:
    """Where a reply goes, per RFC 2131 §4.1 (and back to the sender for PXE port 4011)."""
    if at.port == PXE_PORT:
        return Route(at.src_ip, at.src_port)
    if req.relayed:
        return Route(req.giaddr, SERVER_PORT)
    if reply.message_type == Msg.NAK:
        return Route(BROADCAST, CLIENT_PORT)
    if req.ciaddr != "0.0.0.0":
        return Route(req.ciaddr, CLIENT_PORT)
    if req.broadcast or reply.yiaddr == "0.0.0.0":
        return Route(BROADCAST, CLIENT_PORT)
    return Route(reply.yiaddr, CLIENT_PORT, layer2=True)


class RateLimiter:
    """A token bucket per MAC, so one client cannot flood the server or drain a pool."""

    def __init__(self, per_second: float, burst: int) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}  # mac -> (tokens, last refill)

    def allow(self, mac: str, now: float) -> bool:
        tokens, last = self.buckets.pop(mac, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        self.buckets[mac] = (tokens - 1 if allowed else tokens, now)  # most recent last
        if len(self.buckets) > LIMITER_SIZE:
            del self.buckets[next(iter(self.buckets))]
        return allowed


class _Listener:
    """One UDP socket (interface, port), read by the DHCP thread in bursts."""

    def __init__(self, service: DhcpService, iface: Interface, port: int) -> None:
        self.service = service
        self.iface = iface
        self.port = port
        self.sock = _udp_socket(iface.name, port)
        self.last = Arrival(iface, "", 0, port)  # the last sender's, reused while it sends

    def read(self) -> None:
        """Handle up to READ_BURST datagrams, as many as are waiting."""
        at = self.last
        for _ in range(READ_BURST):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning(
                    "dhcp socket error interface=%s port=%d error=%s",
                    self.iface.name,
                    self.port,
                    e,
                )
                return
            if addr[0] != at.src_ip or addr[1] != at.src_port:  # a relay sends them all
                at = self.last = Arrival(self.iface, addr[0], addr[1], self.port)
            self.service.received(data, at, self)

    def sendto(self, data: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(data, to)


class DhcpService:
    """``async with DhcpService(config, backend, targets):`` serves DHCP until the block ends
    (and then closes ``backend``, which the service owns from then on)."""

    def __init__(
        self,
        config: DhcpConfig,
        backend: DhcpBackend,
        targets: BootTargets,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.backend = backend
        self.targets = targets
        self.clock = clock
        self.counts: Counter[str] = Counter()  # written by the DHCP thread only
        self.interfaces: list[Interface] = []
        self.book = LeaseBook(list(config.subnets))
        self.handler: Handler = (
            FullHandler(config, targets, self.book)
            if config.mode == "full"
            else ProxyHandler(targets)
        )
        self.limiter = RateLimiter(config.rate_limit.per_second, config.rate_limit.burst)
        self.writer = Writer(backend, self.counts)
        self._recent: dict[str, tuple[Sighting, float]] = {}
        self._listeners: list[_Listener] = []
        self._raw: dict[str, socket.socket] = {}
        self._own: frozenset[str] = frozenset()
        self._wake: tuple[int, int] | None = None  # a pipe: a byte in it stops the thread
        self._thread = threading.Thread(target=self._serve, name="dhcp", daemon=True)

    async def __aenter__(self) -> DhcpService:
        if self.config.mode == "off":
            return self
        try:
            await self._open()
        except BaseException:
            self._close_sockets()
            self.backend.close()
            raise
        self._thread.start()
        return self

    async def _open(self) -> None:
        self.interfaces = [interface(n) for n in self.config.interfaces]
        self._own = frozenset(i.address for i in self.interfaces)
        self.book.load(await asyncio.to_thread(self.backend.load_leases))
        ports = [SERVER_PORT, PXE_PORT] if self.config.mode == "proxy" else [SERVER_PORT]
        self._wake = os.pipe()
        for iface in self.interfaces:
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._raw[iface.name] = raw
            raw.bind((iface.name, 0))
            for port in ports:
                self._listeners.append(_Listener(self, iface, port))
            log.info(
                "dhcp listening mode=%s interface=%s address=%s ports=%s",
                self.config.mode,
                iface.name,
                iface.address,
                ports,
            )

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # The thread stops reading, commits what is queued (its replies still go out), and
        # writes the pending sightings; then the sockets close.
        if self._thread.is_alive() and self._wake is not None:
            os.write(self._wake[1], b"x")
            await asyncio.to_thread(self._thread.join)
        self._close_sockets()
        self.backend.close()

    def _close_sockets(self) -> None:
        for lst in self._listeners:
            lst.sock.close()
        self._listeners.clear()
        for raw in self._raw.values():
            raw.close()
        self._raw.clear()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    # --- the DHCP thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._wake is not None
        poller = select.poll()
        by_fd = {lst.sock.fileno(): lst for lst in self._listeners}
        for fd in (*by_fd, self._wake[0]):
            poller.register(fd, select.POLLIN)
        writer = self.writer
        timeout: float | None = None
        while True:
            events = poller.poll(None if timeout is None else math.ceil(timeout * 1e3))
            try:
                for fd, _ in events:
                    lst = by_fd.get(fd)
                    if lst is None:  # the wake pipe: stop
                        writer.flush()
                        return
                    lst.read()
                now = time.monotonic()
                if events:
                    writer.last_packet = now
                writer.commit()
                timeout = writer.pace(now)
            except Exception:  # a bug must cost a burst, never the service
                log.exception("dhcp thread failed a burst")
                self.counts["error.thread"] += 1

    # --- the hot path ------------------------------------------------------------------------

    @property
    def counters(self) -> Counter[str]:
        """Packets and their outcomes so far (``received``, ``reply.ack``, ``drop.*`` ...).
        Safe from any thread: copying a dict is one C call, atomic under the GIL."""
        return Counter(dict(self.counts))

    def _drop(self, reason: str, counter: str, mac: str, xid: int | None) -> None:
        self.counts[f"drop.{counter}"] += 1
        _log_drop(reason, mac, xid)

    def received(self, data: bytes, at: Arrival, listener: _Listener) -> None:
        self.counts["received"] += 1
        if at.src_ip in self._own:
            self._drop(f"from our own address {at.src_ip}", "own_address", "-", None)
            return
        try:
            req = codec.decode(data)
        except codec.DecodeError as e:
            self._drop(e.reason, "bad_packet", e.mac, e.xid)
            return
        now = self.clock()
        if not self.limiter.allow(req.mac, now):
            self.counts["drop.rate_limit"] += 1
            if self.limiter.buckets[req.mac][0] >= 0.999 - self.limiter.rate * 1e-3:
                log.warning("dhcp drop mac=%s xid=%#x reason=rate limit", req.mac, req.xid)
            return
        try:
            result = self.handler.handle(req, at, now)
        except Exception:  # a handler bug must cost one packet, not the service
            log.exception("dhcp handler failed mac=%s xid=%#x", req.mac, req.xid)
            self.counts["error.handler"] += 1
            return
        if result.sighting is not None:
            self._record(result.sighting, now)
        if isinstance(result, Ignore):
            self.counts["ignored"] += 1
            log.debug(
                "dhcp ignore mac=%s xid=%#x type=%s reason=%s",
                req.mac,
                req.xid,
                req.message_type.name,
                result.reason,
            )
            return
        reply = result.reply
        if log.isEnabledFor(logging.DEBUG):  # per packet: INFO would cost more than the reply
            log.debug(
                "dhcp %s mac=%s xid=%#x interface=%s %s",
                (reply.message_type.name if reply else req.message_type.name).lower(),
                req.mac,
                req.xid,
                at.interface.name,
                result.note,
            )
        if reply is None:
            self.writer.submit(result.persist)
        elif result.persist:
            self.writer.submit(result.persist, lambda: self._send(req, reply, at, listener))
        else:
            self.counts[self._send(req, reply, at, listener)] += 1

    def _record(self, s: Sighting, now: float) -> None:
        last = self._recent.get(s.mac)
        if last is not None and last[0] == s and now - last[1] < SIGHTING_REFRESH:
            return
        if not self.writer.sight(s):
            self.counts["drop.sighting_backlog"] += 1
            return
        self._recent.pop(s.mac, None)
        self._recent[s.mac] = (s, now)
        if len(self._recent) > LIMITER_SIZE:
            del self._recent[next(iter(self._recent))]

    def _send(self, req: Request, reply: Reply, at: Arrival, listener: _Listener) -> str:
        """Encode and send ``reply``; the name of the counter to bump."""
        try:
            data = codec.encode(reply)
        except ValueError as e:
            _log_drop(f"reply not encodable: {e}", req.mac, req.xid)
            return "drop.encode"
        to = route(req, reply, at)
        try:
            if to.layer2:
                raw = self._raw[at.interface.name]
                raw.send(
                    codec.udp_frame(
                        data,
                        src_mac=at.interface.mac,
                        dst_mac=req.chaddr[:6],
                        src_ip=at.interface.address,
                        dst_ip=to.ip,
                        sport=at.port,
                        dport=to.port,
                    )
                )
            else:
                listener.sendto(data, (to.ip, to.port))
        except OSError as e:
            log.warning(
                "dhcp send failed mac=%s xid=%#x to=%s error=%s", req.mac, req.xid, to.ip, e
            )
            return "error.send"
        return REPLY_COUNTER[reply.message_type]


def _log_drop(reason: str, mac: str, xid: int | None) -> None:
    log.warning(
        "dhcp drop mac=%s xid=%s reason=%s", mac, "-" if xid is None else f"{xid:#x}", reason
    )


def _udp_socket(ifname: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:  # as root, beyond net.core.rmem_max
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        # Only this interface: ztpd must never answer DHCP where it was not asked to.
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode())
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s
