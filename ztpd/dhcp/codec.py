"""The hot-path codec: plain ``struct`` between wire bytes and ``packet.Request``/``Reply``.

scapy (``refcodec.py``) is the reference; a property test proves scapy reads every packet this
module builds to the same fields, and the fuzz test proves ``decode`` only ever raises
``DecodeError``. Anything odd is refused rather than guessed at: ztpd answers well-formed
clients and logs and drops the rest.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import replace

from ztpd.dhcp.packet import (
    BOOTREPLY,
    BOOTREQUEST,
    CLIENT_MESSAGES,
    MAGIC_COOKIE,
    RELAY_CIRCUIT_ID,
    RELAY_LINK_SELECTION,
    RELAY_REMOTE_ID,
    Network,
    Op,
    Reply,
    Request,
)
from ztpd.errors import BadRequest

HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
HEADER_LEN = HEADER.size  # 240, cookie included
MIN_REPLY = 300  # BOOTP minimum; some PXE ROMs drop shorter replies
MAX_PACKET = 1500  # one Ethernet frame; anything longer did not come from a DHCP client


class DecodeError(BadRequest):
    """A packet ztpd refuses; ``mac``/``xid`` are set when the header was readable."""

    code = "dhcp-decode"

    def __init__(self, reason: str, *, mac: str = "-", xid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mac = mac
        self.xid = xid


ZERO = "0.0.0.0"
ZERO4 = bytes(4)


def _ip(b: bytes) -> str:
    return ZERO if b == ZERO4 else socket.inet_ntoa(b)


# Options whose value has a fixed size: a second instance is a duplicate, never the rest of a
# split option (RFC 3396 splits only options that may outgrow 255 bytes).
SINGLE = frozenset(
    {
        Op.OVERLOAD,
        Op.MESSAGE_TYPE,
        Op.REQUESTED_IP,
        Op.SERVER_ID,
        Op.MAX_SIZE,
        Op.SUBNET_SELECTION,
    }
)
SNAME, FILE = (44, 108), (108, 236)  # where the BOOTP sname and file fields lie in a packet
OVERLOAD_FIELDS = {1: (FILE,), 2: (SNAME,), 3: (FILE, SNAME)}  # RFC 3396 §5: file, then sname
IP_OPTIONS = frozenset({Op.REQUESTED_IP, Op.SERVER_ID, Op.SUBNET_SELECTION})  # one address each
CLIENT_MSG = {int(m): m for m in CLIENT_MESSAGES}  # Msg(n) costs an enum lookup per packet


def _scan(
    data: bytes, start: int, end: int, into: dict[int, bytes], *, where: str, mac: str, xid: int
) -> None:
    """Add the options in ``data[start:end]`` to ``into``; an option seen before is the
    continuation of a split one and is concatenated to it (RFC 3396)."""
    i = start
    while i < end:
        code = data[i]
        if code == Op.END:
            return
        if code == Op.PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise DecodeError(f"option {code} has no length{where}", mac=mac, xid=xid)
        j = i + 2 + data[i + 1]
        if j > end:
            raise DecodeError(f"option {code} runs past the end{where}", mac=mac, xid=xid)
        old = into.get(code)
        if old is None:
            into[code] = data[i + 2 : j]
        elif code in SINGLE:
            raise DecodeError(f"duplicate option {code}{where}", mac=mac, xid=xid)
        else:
            into[code] = old + data[i + 2 : j]
        i = j


def _options(data: bytes, mac: str, xid: int) -> dict[int, bytes]:
    """Every option by code, in order of first appearance: the options field, then the file
    and sname fields when option 52 says they hold options too (RFC 2132 §9.3, RFC 3396)."""
    by: dict[int, bytes] = {}
    _scan(data, HEADER_LEN, len(data), by, where="", mac=mac, xid=xid)
    overload = by.get(Op.OVERLOAD)
    if overload is None:
        return by
    fields = OVERLOAD_FIELDS.get(overload[0]) if len(overload) == 1 else None
    if fields is None:
        raise DecodeError(f"malformed option overload {overload.hex()}", mac=mac, xid=xid)
    for start, end in fields:
        where = " (option overload, in the " + ("file" if start == FILE[0] else "sname") + ")"
        _scan(data, start, end, by, where=where, mac=mac, xid=xid)
    return by


def _sub_options(raw: bytes) -> dict[int, bytes] | None:
    """RFC 3046 style code/length/value list; None when malformed."""
    subs: dict[int, bytes] = {}
    i = 0
    while i < len(raw):
        if i + 2 > len(raw) or i + 2 + raw[i + 1] > len(raw):
            return None
        subs[raw[i]] = raw[i + 2 : i + 2 + raw[i + 1]]
        i += 2 + raw[i + 1]
    return subs


def _user_classes(raw: bytes) -> tuple[bytes, ...]:
    """RFC 3004 length-prefixed items; many clients (iPXE) send one bare string instead."""
    items: list[bytes] = []
    i = 0
    while i < len(raw):
        length = raw[i]
        if length == 0 or i + 1 + length > len(raw):
            return (raw,)
        items.append(raw[i + 1 : i + 1 + length])
        i += 1 + length
    return tuple(items) or (raw,)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def decode(data: bytes) -> Request:
    """Wire bytes → Request; raises DecodeError with a short reason for anything refused."""
    if len(data) < HEADER_LEN:
        raise DecodeError(f"truncated: {len(data)} bytes")
    if len(data) > MAX_PACKET:
        raise DecodeError(f"oversized: {len(data)} bytes")
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        _sname,
        _file,
        cookie,
    ) = HEADER.unpack_from(data)
    if hlen == 0 or hlen > 16:
        raise DecodeError(f"absurd hlen {hlen}", xid=xid)
    mac = chaddr[:hlen].hex(":")
    if op != BOOTREQUEST:
        raise DecodeError(f"not a BOOTREQUEST (op {op})", mac=mac, xid=xid)
    if htype != 1 or hlen != 6:
        raise DecodeError(f"not Ethernet (htype {htype} hlen {hlen})", mac=mac, xid=xid)
    if cookie != MAGIC_COOKIE:
        raise DecodeError("wrong magic cookie", mac=mac, xid=xid)
    if hops > 16:
        raise DecodeError(f"too many relay hops {hops}", mac=mac, xid=xid)
    by = _options(data, mac, xid)
    mt = by.get(Op.MESSAGE_TYPE)
    if mt is None or len(mt) != 1:
        raise DecodeError("no message type", mac=mac, xid=xid)
    msg = CLIENT_MSG.get(mt[0])
    if msg is None:
        raise DecodeError(f"not a client message type {mt[0]}", mac=mac, xid=xid)

    requested = server_id = subnet_selection = None
    for code in IP_OPTIONS.intersection(by):
        if len(addr := by[code]) != 4:
            raise DecodeError(f"option {code} is not one address", mac=mac, xid=xid)
        if code == Op.REQUESTED_IP:
            requested = _ip(addr)
        elif code == Op.SERVER_ID:
            server_id = _ip(addr)
        else:
            subnet_selection = _ip(addr)
    arch: tuple[int, ...] = ()
    if (raw := by.get(Op.CLIENT_ARCH)) is not None:
        if len(raw) % 2 or not raw:
            raise DecodeError("option 93 has an odd length", mac=mac, xid=xid)
        arch = struct.unpack(f"!{len(raw) // 2}H", raw)
    circuit = remote = link = None
    if (relay := by.get(Op.RELAY_AGENT)) is not None:
        subs = _sub_options(relay)
        if subs is None:
            raise DecodeError("malformed option 82", mac=mac, xid=xid)
        circuit, remote = subs.get(RELAY_CIRCUIT_ID), subs.get(RELAY_REMOTE_ID)
        if (raw := subs.get(RELAY_LINK_SELECTION)) is not None:
            if len(raw) != 4:
                raise DecodeError("option 82.5 is not one address", mac=mac, xid=xid)
            link = _ip(raw)
    max_size = None
    if (raw := by.get(Op.MAX_SIZE)) is not None:
        if len(raw) != 2:
            raise DecodeError("option 57 is not 16 bits", mac=mac, xid=xid)
        max_size = struct.unpack("!H", raw)[0]
    client_id = by.get(Op.CLIENT_ID)
    if client_id is not None and not client_id:
        raise DecodeError("empty client identifier", mac=mac, xid=xid)
    return Request(
        xid=xid,
        mac=mac,
        message_type=msg,
        htype=htype,
        hlen=hlen,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_ip(ciaddr),
        yiaddr=_ip(yiaddr),
        siaddr=_ip(siaddr),
        giaddr=_ip(giaddr),
        chaddr=chaddr,
        requested_ip=requested,
        server_id=server_id,
        hostname=_text(by[Op.HOSTNAME]) if Op.HOSTNAME in by else None,
        param_list=tuple(by.get(Op.PARAM_LIST, b"")),
        max_size=max_size,
        vendor_class=_text(by[Op.VENDOR_CLASS]) if Op.VENDOR_CLASS in by else None,
        client_id=client_id,
        user_classes=_user_classes(by[Op.USER_CLASS]) if by.get(Op.USER_CLASS) else (),
        circuit_id=circuit,
        remote_id=remote,
        relay_agent=relay,
        link_selection=link,
        subnet_selection=subnet_selection,
        client_arch=arch,
        client_ndi=by.get(Op.CLIENT_NDI),
        client_uuid=by.get(Op.CLIENT_UUID),
        ipxe=by.get(Op.IPXE),
        options=tuple(by.items()),
    )


def _ips(values: tuple[str, ...] | list[str]) -> bytes:
    return b"".join(socket.inet_aton(v) for v in values)


def _tlv(code: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"option {code} is longer than 255 bytes")
    return bytes((code, len(value))) + value


def _network_wire(n: Network) -> bytes:
    out = bytearray()
    if n.subnet_mask:
        out += _tlv(Op.SUBNET_MASK, socket.inet_aton(n.subnet_mask))
    for code, ips in ((Op.ROUTER, n.routers), (Op.DNS, n.dns)):
        if ips:
            out += _tlv(code, _ips(ips))
    if n.domain:
        out += _tlv(Op.DOMAIN, n.domain.encode())
    if n.ntp:
        out += _tlv(Op.NTP, _ips(n.ntp))
    for code, value in n.extra:
        out += _tlv(code, value)
    return bytes(out)


def with_wire(n: Network) -> Network:
    """``n`` with its options encoded once, for every reply that carries it."""
    return replace(n, wire=_network_wire(n))


# The header up to chaddr; then sname and file, then the cookie.
HEAD = struct.Struct("!BBBBIHH4s4s4s4s16s")
EMPTY_NAMES = bytes(64 + 128) + MAGIC_COOKIE  # no sname, no file: most replies
LEASE_TIMES = struct.Struct("!BBIBBIBBI")  # options 51, 58, 59


def _aton(ip: str) -> bytes:
    return ZERO4 if ip == ZERO else socket.inet_aton(ip)


def encode(r: Reply) -> bytes:
    """Reply → wire bytes: the per-client fields, then the subnet's pre-encoded options.
    Raises ValueError if it cannot fit the client's maximum size."""
    body = bytearray(
        HEAD.pack(
            BOOTREPLY,
            r.htype,
            r.hlen,
            0,
            r.xid,
            0,
            r.flags,
            _aton(r.ciaddr),
            _aton(r.yiaddr),
            _aton(r.siaddr),
            _aton(r.giaddr),
            r.chaddr[:16].ljust(16, b"\0"),
        )
    )
    file = r.file.encode()
    if r.sname or 0 < len(file) < 128:
        body += r.sname.encode()[:63].ljust(64, b"\0")
        # A URL too long for the field travels in option 67 only.
        body += file.ljust(128, b"\0") if len(file) < 128 else bytes(128)
        body += MAGIC_COOKIE
    else:
        body += EMPTY_NAMES
    # Message type first (some ROMs insist), option 82 last (RFC 3046: a relay strips it).
    body += bytes((Op.MESSAGE_TYPE, 1, r.message_type))
    if r.server_id:
        body += bytes((Op.SERVER_ID, 4)) + socket.inet_aton(r.server_id)
    if (t := r.lease_time) is not None:
        body += LEASE_TIMES.pack(
            Op.LEASE_TIME, 4, t, Op.RENEWAL_TIME, 4, t // 2, Op.REBINDING_TIME, 4, t * 7 // 8
        )
    if r.hostname:
        body += _tlv(Op.HOSTNAME, r.hostname.encode())
    if (n := r.network) is not None:
        body += n.wire or _network_wire(n)
    if r.message:
        body += _tlv(Op.MESSAGE, r.message.encode())
    if r.vendor_class:
        body += _tlv(Op.VENDOR_CLASS, r.vendor_class.encode())
    if r.vendor_opts is not None:
        body += _tlv(Op.VENDOR_OPTS, r.vendor_opts)
    if file:
        body += _tlv(Op.BOOTFILE, file)
    if r.client_uuid is not None:
        body += _tlv(Op.CLIENT_UUID, r.client_uuid)
    if r.ipxe is not None:
        body += _tlv(Op.IPXE, r.ipxe)
    if r.relay_agent is not None:
        body += _tlv(Op.RELAY_AGENT, r.relay_agent)
    body.append(Op.END)
    # max_size counts the IP and UDP headers too (RFC 2132 §9.10).
    if len(body) + 28 > max(r.max_size, 576):
        raise ValueError(f"reply of {len(body)} bytes exceeds the client's maximum size")
    if len(body) < MIN_REPLY:
        body += bytes(MIN_REPLY - len(body))
    return bytes(body)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    payload: bytes,
    *,
    src_mac: bytes,
    dst_mac: bytes,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
) -> bytes:
    """An Ethernet/IPv4/UDP frame, for replying to a client that has no address yet."""
    s, d = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    ulen = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_UDP, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    ucs = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", ucs) + udp[8:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0x10, 20 + ulen, 0, 0x4000, 64, socket.IPPROTO_UDP, 0, s, d
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp
