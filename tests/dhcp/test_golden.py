"""Captured requests of real firmware (see golden/README.md) parse to the expected fields, in the
fast codec and in scapy alike, and get the boot file their architecture needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpd.dhcp import boot, codec, refcodec
from ztpd.dhcp.arch import ArchTable
from ztpd.dhcp.packet import Msg

GOLDEN = Path(__file__).parent / "golden"
TARGETS = boot.BootTargets(
    "http://10.0.0.1:8080/boot.ipxe",
    "http://10.0.0.1:8080/ipxe",
    None,
    ArchTable.with_overrides({}, {}),
)


def load(name: str) -> bytes:
    return bytes.fromhex((GOLDEN / f"{name}.hex").read_text().replace("\n", ""))


@pytest.mark.parametrize(
    ("name", "mt", "mac", "arch", "vendor", "ipxe", "file"),
    [
        (
            "ipxe-bios-discover",
            Msg.DISCOVER,
            "52:54:00:12:34:56",
            0,
            "PXEClient:Arch:00000:UNDI:002001",
            True,
            "http://10.0.0.1:8080/boot.ipxe",
        ),
        (
            "ipxe-bios-request",
            Msg.REQUEST,
            "52:54:00:12:34:56",
            0,
            "PXEClient:Arch:00000:UNDI:002001",
            True,
            "http://10.0.0.1:8080/boot.ipxe",
        ),
        (
            "ovmf-uefi-x64-discover",
            Msg.DISCOVER,
            "52:54:00:12:34:57",
            7,
            "PXEClient:Arch:00007:UNDI:003000",
            False,
            "ipxe.efi",
        ),
    ],
)
def test_captured_requests(  # noqa: PLR0917 (one parameter per table column)
    name: str, mt: Msg, mac: str, arch: int, vendor: str, ipxe: bool, file: str
) -> None:
    data = load(name)
    req = codec.decode(data)
    assert (req.message_type, req.mac, req.client_arch, req.vendor_class, req.is_ipxe) == (
        mt,
        mac,
        (arch,),
        vendor,
        ipxe,
    )
    assert req.max_size == 1472 and 60 in req.param_list
    ref = refcodec.parse(data)
    assert ref.header["xid"] == req.xid and ref.header["flags"] == req.flags
    assert ref.options[53] == mt and ref.options[60].decode() == vendor
    assert ref.options[93] == arch.to_bytes(2, "big")
    choice = boot.choose(req, TARGETS)
    assert choice is not None and choice.file == file
    if name == "ipxe-bios-request":
        assert (req.requested_ip, req.server_id) == ("10.0.2.15", "10.0.2.2")
