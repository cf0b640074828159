"""Which boot file each client architecture gets: a table, not code.

Option 93 (RFC 4578, IANA "Processor Architecture Types") names the firmware; the table maps it
to a firmware *kind*, and ``FILES`` maps a kind to the iPXE build that kind loads. Operators
override either through ``dhcp.boot.arch`` and ``dhcp.boot.files``. Kinds ending in ``-http``
are UEFI HTTP boot clients: they get an ``http://`` URL, never a TFTP file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# option 93 code -> firmware kind
ARCH: Mapping[int, str] = MappingProxyType(
    {
        0: "bios",  # x86 BIOS
        6: "uefi-x86_64",  # x86 UEFI (32-bit firmware still chain-loads the 64-bit iPXE here)
        7: "uefi-x86_64",  # x64 UEFI
        9: "uefi-x86_64",  # EBC, which x86-64 firmware reports too
        11: "uefi-arm64",  # ARM 64-bit UEFI
        15: "uefi-x86_64-http",  # x86 UEFI HTTP boot
        16: "uefi-x86_64-http",  # x64 UEFI HTTP boot
        19: "uefi-arm64-http",  # ARM 64-bit UEFI HTTP boot
    }
)

# firmware kind -> boot file (TFTP path, or the file part of the HTTP boot URL)
FILES: Mapping[str, str] = MappingProxyType(
    {
        "bios": "undionly.kpxe",
        "uefi-x86_64": "ipxe.efi",  # "snponly.efi" when the NIC's own UEFI driver should be kept
        "uefi-arm64": "ipxe-arm64.efi",
        "uefi-x86_64-http": "ipxe.efi",
        "uefi-arm64-http": "ipxe-arm64.efi",
    }
)

# firmware kind -> (node arch, firmware) as recorded on the node
NODE_ARCH: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "bios": ("x86_64", "bios"),
        "uefi-x86_64": ("x86_64", "uefi"),
        "uefi-arm64": ("arm64", "uefi"),
        "uefi-x86_64-http": ("x86_64", "uefi-http"),
        "uefi-arm64-http": ("arm64", "uefi-http"),
    }
)

KINDS = frozenset(FILES)


@dataclass(frozen=True)
class ArchTable:
    """The defaults merged with the operator's overrides."""

    arch: Mapping[int, str]
    files: Mapping[str, str]

    @classmethod
    def with_overrides(cls, arch: Mapping[int, str], files: Mapping[str, str]) -> ArchTable:
        """Overrides come validated from config (only kinds in KINDS)."""
        return cls(MappingProxyType({**ARCH, **arch}), MappingProxyType({**FILES, **files}))

    def kind(self, code: int) -> str | None:
        return self.arch.get(code)
