"""What identifies a machine: its MACs, its SMBIOS UUID and its serial — normalised, and with the
placeholder values that white-box firmware ships recognised as saying nothing.

A node is one machine, not one MAC. Strength of evidence: a real UUID beats a MAC (NICs move
between machines), a MAC beats a serial (serials repeat on white-box hardware).
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass

_MAC_HEX = re.compile(r"^[0-9a-f]{12}$")

# SMBIOS placeholders seen in the field; such values identify nothing.
BOGUS_UUIDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "03000200-0400-0500-0006-000700080009",  # AMI BIOS default
    }
)
BOGUS_SERIALS = frozenset(
    s.casefold()
    for s in (
        "",
        "0",
        "00000000",
        "0123456789",
        "1234567890",
        "123456789",
        "none",
        "n/a",
        "na",
        "not specified",
        "not applicable",
        "default string",
        "to be filled by o.e.m.",
        "system serial number",
        "chassis serial number",
        "serial",
        "xxxxxxxx",
        "empty",
        "invalid",
        "unknown",
        "oem",
        "o.e.m.",
    )
)


def normalize_mac(value: str) -> str:
    """``AA-BB-CC-DD-EE-FF``, ``aabb.ccdd.eeff``, ``01-aa-..`` (PXE hwtype) → ``aa:bb:..``."""
    hexdigits = re.sub(r"[^0-9a-fA-F]", "", value).lower()
    if len(hexdigits) == 14 and hexdigits.startswith("01"):  # iPXE/pxelinux "01-" hwtype
        hexdigits = hexdigits[2:]
    if not _MAC_HEX.match(hexdigits):
        raise ValueError(f"not a MAC address: {value!r}")
    if hexdigits in ("000000000000", "ffffffffffff"):
        raise ValueError(f"not a usable MAC address: {value!r}")
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


def normalize_uuid(value: str | None) -> str | None:
    """Canonical lower-case UUID, or None for missing/placeholder values."""
    if not value:
        return None
    try:
        text = str(uuidlib.UUID(value.strip()))
    except ValueError:
        return None
    return None if text in BOGUS_UUIDS else text


def normalize_serial(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    return None if text.casefold() in BOGUS_SERIALS or set(text) <= {"0", " "} else text


@dataclass(frozen=True)
class Identity:
    """What one sighting of a machine (a DHCP request, a boot, an inventory) says about it."""

    macs: tuple[str, ...] = ()
    uuid: str | None = None
    serial: str | None = None

    @classmethod
    def of(
        cls,
        macs: list[str] | tuple[str, ...] = (),
        uuid: str | None = None,
        serial: str | None = None,
    ) -> Identity:
        seen: list[str] = []
        for m in macs:
            try:
                n = normalize_mac(m)
            except ValueError:
                continue
            if n not in seen:
                seen.append(n)
        return cls(tuple(seen), normalize_uuid(uuid), normalize_serial(serial))

    def is_empty(self) -> bool:
        return not (self.macs or self.uuid or self.serial)
