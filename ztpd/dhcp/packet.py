"""ztpd's own typed DHCP records: what a request says and what a reply will say.

Codecs (``codec.py``, the fast one; ``refcodec.py``, scapy) convert between these and bytes, so
handlers never see wire bytes or scapy objects. Every option-carrying field names its option
number in a comment; options without a field of their own travel in ``extra`` by number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011  # PXE boot server (proxyDHCP REQUEST/ACK, PXE spec 2.1)


class Op:
    """Option numbers (RFC 2132 and later) that ztpd reads or writes. Plain ints, not an enum:
    the codec reads them per packet, and an enum member lookup costs ~0.4 µs each."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN = 15
    NTP = 42
    VENDOR_OPTS = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAM_LIST = 55
    MESSAGE = 56
    MAX_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    BOOTFILE = 67
    USER_CLASS = 77
    RELAY_AGENT = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    SUBNET_SELECTION = 118  # RFC 3011
    IPXE = 175  # iPXE's encapsulated options
    END = 255


class Msg(enum.IntEnum):
    """Option 53 values."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


CLIENT_MESSAGES = frozenset({Msg.DISCOVER, Msg.REQUEST, Msg.DECLINE, Msg.RELEASE, Msg.INFORM})

# Option 82 sub-options (RFC 3046, RFC 3527) and iPXE option 175 sub-options.
RELAY_CIRCUIT_ID = 1
RELAY_REMOTE_ID = 2
RELAY_LINK_SELECTION = 5
IPXE_NO_PXEDHCP = 176  # 175.176=1: do not wait for ProxyDHCP offers


# Request and Reply are read-only by convention but not frozen: a frozen dataclass's __init__
# sets each of their ~30 fields through object.__setattr__, several µs per packet.
@dataclass(slots=True)
class Request:
    """One decoded BOOTREQUEST. Addresses are dotted strings, "0.0.0.0" when unset."""

    xid: int
    mac: str  # chaddr as aa:bb:cc:dd:ee:ff
    message_type: Msg  # option 53
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    chaddr: bytes = b""  # the full 16-byte field, echoed verbatim in replies
    requested_ip: str | None = None  # option 50
    server_id: str | None = None  # option 54
    hostname: str | None = None  # option 12
    param_list: tuple[int, ...] = ()  # option 55
    max_size: int | None = None  # option 57
    vendor_class: str | None = None  # option 60
    client_id: bytes | None = None  # option 61
    user_classes: tuple[bytes, ...] = ()  # option 77 (RFC 3004 list; a bare string is one item)
    circuit_id: bytes | None = None  # option 82.1
    remote_id: bytes | None = None  # option 82.2
    relay_agent: bytes | None = None  # option 82, raw, echoed in replies (RFC 3046)
    link_selection: str | None = None  # option 82.5 (RFC 3527): the client's link
    subnet_selection: str | None = None  # option 118 (RFC 3011): the client's subnet
    client_arch: tuple[int, ...] = ()  # option 93
    client_ndi: bytes | None = None  # option 94
    client_uuid: bytes | None = None  # option 97 (type byte + 16 bytes)
    ipxe: bytes | None = None  # option 175, raw
    options: tuple[tuple[int, bytes], ...] = ()  # every option in wire order, raw

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def relayed(self) -> bool:
        return self.giaddr != "0.0.0.0"

    @property
    def link(self) -> str | None:
        """An address on the client's link as the request names it: a relay's link selection
        sub-option, else the subnet selection option, else giaddr; None when not relayed."""
        if self.link_selection is not None:
            return self.link_selection
        if self.subnet_selection is not None:
            return self.subnet_selection
        return self.giaddr if self.relayed else None

    @property
    def client_key(self) -> str:
        """Who holds a lease: the client identifier when sent (RFC 2131 §4.2), else the MAC."""
        return "id:" + self.client_id.hex() if self.client_id else self.mac

    @property
    def is_ipxe(self) -> bool:
        return self.ipxe is not None or b"iPXE" in self.user_classes

    @property
    def uuid(self) -> str | None:
        """Option 97 as text (type 0 + 16 bytes, SMBIOS byte order for the first three fields)."""
        raw = self.client_uuid
        if raw is None or len(raw) != 17 or raw[0] != 0:
            return None
        b = raw[1:]
        le = b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:]
        h = le.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Network:
    """The options every grant in one subnet carries: built once per subnet, shared by its
    replies. ``wire`` is the same options encoded (``codec.with_wire``), so a reply costs only
    its per-client fields; empty, the codec encodes the fields."""

    subnet_mask: str | None = None  # option 1
    routers: tuple[str, ...] = ()  # option 3
    dns: tuple[str, ...] = ()  # option 6
    domain: str | None = None  # option 15
    ntp: tuple[str, ...] = ()  # option 42
    extra: tuple[tuple[int, bytes], ...] = ()  # configured options by number
    wire: bytes = b""


@dataclass(slots=True)
class Reply:
    """What to put in one BOOTREPLY; the codec turns it into bytes."""

    message_type: Msg  # option 53
    xid: int
    chaddr: bytes
    htype: int = 1
    hlen: int = 6
    flags: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"  # next server (TFTP)
    giaddr: str = "0.0.0.0"
    sname: str = ""
    file: str = ""  # BOOTP file field; also sent as option 67 so long URLs fit
    server_id: str | None = None  # option 54
    lease_time: int | None = None  # option 51; T1 (58) and T2 (59) are 1/2 and 7/8 of it
    hostname: str | None = None  # option 12
    network: Network | None = None  # options 1, 3, 6, 15, 42 and the configured ones
    vendor_opts: bytes | None = None  # option 43 (PXE sub-options in proxy replies)
    message: str | None = None  # option 56 (why a NAK)
    vendor_class: str | None = None  # option 60 (PXEClient / HTTPClient echo)
    relay_agent: bytes | None = None  # option 82, echoed from the request
    client_uuid: bytes | None = None  # option 97, echoed to PXE clients
    ipxe: bytes | None = None  # option 175 (iPXE encapsulated settings)
    max_size: int = 576  # the client's option 57, bounded; the codec never exceeds it

    @property
    def renewal_time(self) -> int | None:  # option 58, T1
        return None if self.lease_time is None else self.lease_time // 2

    @property
    def rebinding_time(self) -> int | None:  # option 59, T2
        return None if self.lease_time is None else self.lease_time * 7 // 8
