"""The reference codec: scapy's reading of a DHCP packet, keyed by option number.

ztpd serves with the ``struct`` codec in ``codec.py`` (scapy costs ~1 ms per exchange); this
module is what that codec is checked against — the property and golden-packet tests assert
that scapy reads every packet the fast codec builds, and every captured request, to the same
fields. scapy stays behind this one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scapy.layers.dhcp import BOOTP, DHCP, DHCPRevOptions


@dataclass(frozen=True)
class Fields:
    """Header fields by BOOTP name; options by number with scapy's typed value
    (int, dotted address, list of addresses, or bytes for options scapy keeps raw)."""

    header: dict[str, Any]
    options: dict[int, Any]


def _code(name: str | int) -> int:
    return name if isinstance(name, int) else int(DHCPRevOptions[name][0])


def parse(data: bytes) -> Fields:
    pkt = BOOTP(data)
    header = {
        k: pkt.getfieldval(k)
        for k in (
            "op",
            "htype",
            "hlen",
            "hops",
            "xid",
            "secs",
            "flags",
            "ciaddr",
            "yiaddr",
            "siaddr",
            "giaddr",
            "chaddr",
            "sname",
            "file",
        )
    }
    header["flags"] = int(header["flags"])
    options: dict[int, Any] = {}
    if DHCP in pkt:
        for item in pkt[DHCP].options:
            if isinstance(item, tuple) and len(item) >= 2:
                options[_code(item[0])] = item[1] if len(item) == 2 else list(item[1:])
    return Fields(header, options)
