"""End to end: a QEMU VM (TCG) with two NICs, two disks and a known SMBIOS identity boots the real
discovery image (direct kernel boot, the kernel command line the discovery script would give),
gets a lease from dnsmasq and reports to ztpd's agent endpoints served inside the namespace.
Virtio NIC and SATA disk here; test_pxe.py boots through ztpd's own PXE path (e1000, virtio
disks, a BMC, LLDP) and has the agent-killed case."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.discovery.conftest import serve, socket_in_netns
from tests.netns import Lan, require
from ztpd.lab.vm import VmFiles
from ztpd.model import Node
from ztpd.store import Nodes

pytestmark = [pytest.mark.netns, pytest.mark.vm, pytest.mark.slow]

SERVER = "10.78.0.1"
BOOT_MAC, SECOND_MAC = "52:54:00:78:00:01", "52:54:00:78:00:02"
SERIAL, UUID = "ZT-E2E-0001", "5a7e1d00-0000-4000-8000-00000000e2e1"
DISKS = {"DISK-SMALL-1": 64 << 20, "DISK-LARGE-2": 128 << 20}
DEADLINE = 300.0  # TCG on two shared cores: boot, DHCP, collectors, post


def start_vm(lan: Lan, tmp: Path, image: Path, token: str) -> subprocess.Popen[bytes]:
    switch = lan.switch
    assert switch is not None
    for tap in ("tapd0", "tapd1"):
        switch.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        switch.run(["ip", "link", "set", tap, "master", "br0", "up"])
    drives = []
    for i, size in enumerate(DISKS.values()):
        path = tmp / f"disk{i}.raw"
        with path.open("wb") as f:
            f.truncate(size)
        drives.append(path)
    cmdline = (
        f"console=ttyS0 quiet ztpd.url=http://{SERVER}:8080 ztpd.token={token} "
        f"BOOTIF=01-{BOOT_MAC.replace(':', '-')} ztpd.heartbeat=2 ztpd.lldp_wait=1"
    )
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "2",
        "-nodefaults", "-nographic", "-display", "none", "-no-reboot",
        "-serial", f"file:{VmFiles(tmp).console}",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", cmdline,
        "-smbios", f"type=1,manufacturer=ZtpdLab,product=EdgeBox,serial={SERIAL},uuid={UUID}",
        "-netdev", "tap,id=n0,ifname=tapd0,script=no,downscript=no",
        "-device", f"virtio-net-pci,netdev=n0,mac={BOOT_MAC}",
        "-netdev", "tap,id=n1,ifname=tapd1,script=no,downscript=no",
        "-device", f"e1000,netdev=n1,mac={SECOND_MAC}",
        "-drive", f"file={drives[0]},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,serial=DISK-SMALL-1",
        "-drive", f"file={drives[1]},if=none,id=d1,format=raw",
        "-device", "ahci,id=ahci",
        "-device", "ide-hd,drive=d1,bus=ahci.0,serial=DISK-LARGE-2",
    ]  # fmt: skip
    with (tmp / "qemu.txt").open("wb") as out:
        return switch.popen(argv, stdout=out, stderr=subprocess.STDOUT)


def start_dhcp(lan: Lan, tmp: Path) -> None:
    server = lan.hosts[0]
    server.popen(
        [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            "--dhcp-range=10.78.0.50,10.78.0.90,5m", "--interface=eth0",
            f"--dhcp-leasefile={tmp / 'leases'}",
        ]
    )  # fmt: skip


async def wait_node(nodes: Nodes, node_id: int, states: set[str], what: str) -> Node:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        node = nodes.get(node_id)
        if node.state in states:
            return node
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {DEADLINE:.0f}s waiting for {what}")


@pytest.fixture
def vm_lan(discovery_image: Path) -> Lan:
    require("qemu-system-x86_64", "dnsmasq")
    return Lan("disc")


async def test_vm_reports_exactly_its_hardware(
    vm_lan: Lan, discovery_image: Path, tmp_path: Path
) -> None:
    with vm_lan as lan:
        srv = lan.host("srv", f"{SERVER}/24")
        start_dhcp(lan, tmp_path)
        sock = socket_in_netns(srv.name, SERVER, 8080)
        async for site in serve(tmp_path, silence=60, mac=BOOT_MAC, extra=[sock]):
            started = time.monotonic()
            vm = start_vm(lan, tmp_path, discovery_image, site.token)
            nodes = Nodes(site.store)
            try:
                node = await wait_node(nodes, site.node_id, {"inspected", "failed"}, "inventory")
            except AssertionError:
                raise AssertionError(VmFiles(tmp_path).console_text(3000)) from None
            took = time.monotonic() - started
            assert node.state == "inspected", (node.reason, VmFiles(tmp_path).console_text(3000))
            print(f"power-on to inspected: {took:.1f}s")

            row = site.store.query_one("SELECT * FROM inventories WHERE node_id = ?", (node.id,))
            assert row is not None and row["version"] == 1 and row["source"] == "agent"
            inv = json.loads(row["data"])
            system = inv["system"]
            assert (system["serial"], system["uuid"]) == (SERIAL, UUID)
            assert (system["manufacturer"], system["product"]) == ("ZtpdLab", "EdgeBox")
            disks = {d["serial"]: d for d in inv["disks"]}
            assert {s: d["size_bytes"] for s, d in disks.items()} == DISKS
            assert disks["DISK-SMALL-1"]["transport"] == "virtio"
            assert disks["DISK-LARGE-2"]["transport"] == "sata"
            nics = {i["mac"]: i for i in inv["interfaces"]}
            assert set(nics) == {BOOT_MAC, SECOND_MAC}
            assert nics[BOOT_MAC]["driver"] == "virtio_net"
            assert nics[SECOND_MAC]["driver"] == "e1000"
            assert nics[BOOT_MAC]["ipv4"][0].startswith("10.78.0.")
            assert inv["boot"] == {"mode": "bios", "pxe_interface": BOOT_MAC}
            assert inv["cpu"]["count"] == 2 and inv["cpu"]["architecture"] == "x86_64"
            assert 400 << 20 < inv["memory"]["total_bytes"] <= inv["memory"]["physical_bytes"]
            assert inv["memory"]["physical_bytes"] == 512 << 20
            assert not [e for e in inv["errors"] if e["collector"] == "drivers"], inv["errors"]
            # Identity: UUID, serial and both MACs are this one node's.
            assert (node.uuid, node.serial) == (UUID, SERIAL)
            assert set(node.macs) == {BOOT_MAC, SECOND_MAC}

            # The console log arrives through the API while the agent waits for its action.
            async with aiohttp.ClientSession() as http:
                url = f"{site.url}/api/v1/nodes/{node.id}/agent-log"
                deadline = time.monotonic() + 60
                text = ""
                while "inventory accepted" not in text and time.monotonic() < deadline:
                    async with http.get(url) as resp:
                        assert resp.status == 200
                        text = (await resp.json())["text"]
                    await asyncio.sleep(0.5)
            assert "drivers loaded" in text and "inventory accepted" in text, text
            assert site.token not in text
            lan.switch.stop(vm)  # type: ignore[union-attr]
