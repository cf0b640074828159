"""End to end: a QEMU VM (TCG) PXE boots against ztpd (DHCP full mode, TFTP, HTTP boot) on a LAN
made of network namespaces, and reaches its second-stage script — seen in ztpd's events.

BIOS: QEMU's e1000 ROM is iPXE already, so it asks DHCP, gets the boot script URL and goes
straight to HTTP. UEFI: OVMF's own PXE on virtio-net (no option ROM) fetches ipxe.efi over TFTP,
which asks DHCP again and chains to HTTP.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import LanServer, serve_on_lan
from tests.netns import Lan, lan, require, wait_for

__all__ = ["lan"]

pytestmark = [pytest.mark.netns, pytest.mark.vm, pytest.mark.slow]

HERE = Path(__file__).parent
IPXE = Path("/usr/lib/ipxe")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
E1000_ROM = IPXE / "qemu" / "pxe-e1000.rom"
SUBNET = "10.77.0.0/24"
DEADLINE = 60.0


def query(z: LanServer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows from ztpd's store (read-only); none before its schema exists."""
    if not (z.state / "ztpd.db").exists():
        return []
    conn = sqlite3.connect(f"file:{z.state / 'ztpd.db'}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        conn.close()


def macs(z: LanServer, node_id: int) -> list[str]:
    return [mac for (mac,) in query(z, "SELECT mac FROM node_macs WHERE node_id = ?", node_id)]


def boot_events(z: LanServer) -> list[dict[str, Any]]:
    rows = query(z, "SELECT node_id, detail FROM events WHERE kind = 'boot'")
    return [{"node_id": n, **json.loads(d)} for n, d in rows]


def loaders(images: Path) -> None:
    """The loaders ztpd serves (from `make images` when run, else Debian's ipxe package), and a
    stand-in discovery kernel/initrd: reaching the second stage is what is tested here."""
    checkout = HERE.parents[1] / "images"
    for name in ("undionly.kpxe", "ipxe.efi", "snponly.efi"):
        src = checkout / name if (checkout / name).is_file() else IPXE / name
        if not src.is_file():
            pytest.skip(f"needs the iPXE loaders: run `make images` or install ipxe ({name})")
        shutil.copyfile(src, images / name)
    (images / "discovery").mkdir()
    (images / "discovery" / "vmlinuz").write_bytes(b"not a kernel")
    (images / "discovery" / "initrd.img").write_bytes(b"not an initrd")


@pytest.fixture
def ztpd(lan: Lan, tmp_path: Path) -> Iterator[LanServer]:
    require("qemu-system-x86_64")
    images = tmp_path / "images"
    images.mkdir()
    loaders(images)
    with serve_on_lan(lan, tmp_path, SUBNET, images_dir=str(images)) as server:
        yield server


def vm(
    lan: Lan, tmp_path: Path, name: str, *, mac: str, firmware: list[str], nic: str
) -> subprocess.Popen[bytes]:
    """QEMU under TCG on a tap port of the LAN's bridge, serial console to a file."""
    switch = lan.switch
    assert switch is not None
    tap = f"tap{name}"
    switch.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    switch.run(["ip", "link", "set", tap, "master", "br0", "up"])
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-display",
        "none",
        "-serial",
        f"file:{tmp_path / (name + '.console')}",
        "-netdev",
        f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device",
        f"{nic},netdev=n0,mac={mac},bootindex=1",
        *firmware,
    ]
    with (tmp_path / f"{name}.qemu").open("wb") as out:
        return switch.popen(argv, stdout=out, stderr=subprocess.STDOUT)


def reached_second_stage(z: LanServer, platform: str) -> dict[str, Any] | None:
    for e in boot_events(z):
        if e.get("asked") == "/ipxe" and e.get("platform") == platform:
            return e
    return None


def boots_to_second_stage(
    lan: Lan,
    z: LanServer,
    tmp_path: Path,
    name: str,
    *,
    platform: str,
    mac: str,
    firmware: list[str],
    nic: str,
) -> dict[str, Any]:
    """Start the VM; its second-stage boot event, once the discovery script was served to the
    node that owns its MAC."""
    started = time.monotonic()
    proc = vm(lan, tmp_path, name, mac=mac, firmware=firmware, nic=nic)
    event = wait_for(
        lambda: reached_second_stage(z, platform) or proc.poll() is not None,
        f"the {name} VM to fetch its second stage",
        timeout=DEADLINE,
        step=0.5,
    )
    assert isinstance(event, dict), (tmp_path / f"{name}.qemu").read_text(errors="replace")
    print(f"{name} second stage after {time.monotonic() - started:.1f}s")
    assert event["status"] == 200 and event["served"] == "discovery.ipxe.j2"
    assert macs(z, event["node_id"]) == [mac]
    return event


def test_bios_vm_reaches_second_stage(lan: Lan, ztpd: LanServer, tmp_path: Path) -> None:
    if not E1000_ROM.is_file():
        pytest.skip(f"needs QEMU's iPXE ROMs: {E1000_ROM} (apt-get install ipxe-qemu)")
    boots_to_second_stage(
        lan,
        ztpd,
        tmp_path,
        "bios",
        platform="pcbios",
        mac="52:54:00:77:00:01",
        firmware=["-boot", "n"],
        nic=f"e1000,romfile={E1000_ROM}",
    )


def test_uefi_vm_fetches_ipxe_efi_over_tftp_and_reaches_second_stage(
    lan: Lan, ztpd: LanServer, tmp_path: Path
) -> None:
    if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        pytest.skip(f"needs OVMF: {OVMF_CODE} (apt-get install ovmf)")
    variables = tmp_path / "vars.fd"
    shutil.copyfile(OVMF_VARS, variables)
    firmware = [
        "-machine",
        "q35",
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        "-drive",
        f"if=pflash,format=raw,file={variables}",
    ]
    # romfile= (empty): no iPXE option ROM, so OVMF's own PXE does the first step over TFTP.
    event = boots_to_second_stage(
        lan,
        ztpd,
        tmp_path,
        "uefi",
        platform="efi",
        mac="52:54:00:77:00:02",
        firmware=firmware,
        nic="virtio-net-pci,romfile=",
    )
    assert "tftp sent" in ztpd.log() and "file=ipxe.efi" in ztpd.log()
    fetched = [e for e in boot_events(ztpd) if e.get("asked") == "tftp ipxe.efi"]
    # OVMF asks for the size first and aborts that transfer; then it fetches the file.
    assert {e["node_id"] for e in fetched} == {event["node_id"]}
    assert "sent" in {e["status"] for e in fetched}
