"""What a booting client is told to load: the decision between a request and a reply's boot fields.

PXE firmware gets an iPXE build over TFTP (chosen by option 93), UEFI HTTP boot firmware gets an
``http://`` URL with its vendor class echoed, and iPXE itself (user class ``iPXE`` or option 175)
gets the boot script URL, which ends the chain-load loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ztpd.config import Config
from ztpd.dhcp.arch import NODE_ARCH, ArchTable
from ztpd.dhcp.packet import IPXE_NO_PXEDHCP, Request

PXE_CLIENT = "PXEClient"
HTTP_CLIENT = "HTTPClient"
# 175.176 = 1: iPXE need not wait for ProxyDHCP offers (none will come in full mode).
IPXE_SETTINGS = bytes((IPXE_NO_PXEDHCP, 1, 1))
# Option 43 for proxy offers: PXE_DISCOVERY_CONTROL (6) = 8, "boot the file named here".
PXE_VENDOR_OPTS = bytes((6, 1, 8))
_ARCH_IN_CLASS = re.compile(r":Arch:(\d{5})")


@dataclass(frozen=True)
class BootTargets:
    script_url: str  # iPXE's second stage: <http base>/boot.ipxe
    http_boot_base: str  # UEFI HTTP boot clients get <http_boot_base>/<file>
    tftp_server: str | None  # next-server; None means the address of the receiving interface
    table: ArchTable


def boot_targets(config: Config) -> BootTargets:
    boot = config.dhcp.boot
    base = config.http.base_url
    return BootTargets(
        script_url=boot.script_url or f"{base}/boot.ipxe",
        http_boot_base=(boot.http_boot_base or f"{base}/ipxe").rstrip("/"),
        tftp_server=boot.tftp_server,
        table=ArchTable.with_overrides(boot.arch, boot.files),
    )


@dataclass(frozen=True)
class BootChoice:
    kind: str | None  # firmware kind ("ipxe" for iPXE itself); None: architecture unknown
    file: str  # TFTP path or URL; empty when the architecture is unknown
    tftp: bool  # True when ``file`` is fetched from next-server
    vendor_class: str | None  # option 60 to echo
    arch_code: int | None
    node_arch: str | None
    firmware: str | None


def is_boot_client(req: Request) -> bool:
    vc = req.vendor_class or ""
    return req.is_ipxe or vc.startswith((PXE_CLIENT, HTTP_CLIENT))


def arch_code(req: Request) -> int | None:
    if req.client_arch:
        return req.client_arch[0]
    m = _ARCH_IN_CLASS.search(req.vendor_class or "")
    return int(m.group(1)) if m else None


def choose(req: Request, targets: BootTargets) -> BootChoice | None:
    """The boot file for ``req``; None when it is not a network-booting client at all."""
    if not is_boot_client(req):
        return None
    code = arch_code(req)
    kind = None if code is None else targets.table.kind(code)
    node_arch, firmware = NODE_ARCH.get(kind or "", (None, None))
    if req.is_ipxe:
        return BootChoice("ipxe", targets.script_url, False, None, code, node_arch, firmware)
    if kind is None:
        return BootChoice(None, "", False, None, code, None, None)
    file = targets.table.files[kind]
    if kind.endswith("-http"):
        return BootChoice(
            kind, f"{targets.http_boot_base}/{file}", False, HTTP_CLIENT, code, node_arch, firmware
        )
    return BootChoice(kind, file, True, None, code, node_arch, firmware)
