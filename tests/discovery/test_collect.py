"""Collectors against agent bundles: one captured from a real machine (this CI host, a
Firecracker VM, by `ztpd-agent capture`), and a hand-made two-NIC server with a BMC, LLDP,
UEFI secure boot, NVMe + SATA disks, a GPU and a controller the ramdisk has no driver for."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import pytest

from ztpd.errors import BadRequest
from ztpd.inventory.collect import SECURE_BOOT_VAR, Bundle, collect, dmi_size, identity, parse_lldp

FIXTURES = Path(__file__).parent / "fixtures"


def test_captured_firecracker_vm() -> None:
    inv = collect(Bundle.from_dir(FIXTURES / "firecracker-vm"))
    assert inv.cpu is not None
    assert (inv.cpu.count, inv.cpu.sockets, inv.cpu.architecture) == (2, 1, "x86_64")
    assert "sse4_2" in inv.cpu.flags
    assert inv.memory is not None and inv.memory.total_bytes == 24684084 * 1024
    assert inv.memory.physical_bytes is None  # no DMI in a Firecracker VM
    [disk] = inv.disks
    assert (disk.name, disk.size_bytes, disk.transport) == ("/dev/vda", 256 << 30, "virtio")
    assert disk.by_path == "virtio-pci-0000:00:02.0" and disk.vendor is None
    [nic] = inv.interfaces
    assert (nic.name, nic.mac, nic.driver, nic.link) == (
        "eth0",
        "02:fc:00:00:00:01",
        "virtio_net",
        True,
    )
    assert (nic.pci_vendor, nic.pci_product, nic.ipv4) == ("0x1af4", "0x1041", ["192.0.2.2/24"])
    assert inv.system is None and inv.bmc is None and inv.gpus == []
    assert inv.boot is not None and inv.boot.mode == "bios"
    # dmidecode was missing on that machine: recorded, and everything else still arrived.
    assert [e.collector for e in inv.errors] == ["agent:dmidecode"]
    assert set(inv.sources) == {"cpu", "memory", "disks", "interfaces", "boot", "pci"}


def _pcap(frame: bytes) -> str:
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    return (head + struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame).hex()


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack(">H", kind << 9 | len(value)) + value


LLDP = (
    bytes.fromhex("0180c200000e00112233445588cc")
    + _tlv(1, b"\x04" + bytes.fromhex("001122334455"))
    + _tlv(2, b"\x05" + b"Ethernet1/7")
    + _tlv(3, b"\x00\x78")
    + _tlv(4, b"server-17 uplink")
    + _tlv(5, b"leaf-3.site")
    + _tlv(0, b"")
)

DMIDECODE = """# dmidecode 3.4
Handle 0x0000, DMI type 0, 26 bytes
BIOS Information
\tVendor: Dell Inc.
\tVersion: 2.19.1
\tRelease Date: 06/12/2023

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
\tProduct Name: PowerEdge R650
\tSerial Number: 7XK2QK3
\tUUID: 4c4c4544-0058-4b10-8032-b7c04f514b33
\tSKU Number: SKU=0A3C

Handle 0x1100, DMI type 17, 92 bytes
Memory Device
\tSize: 32 GB
\tLocator: A1

Handle 0x1101, DMI type 17, 92 bytes
Memory Device
\tSize: No Module Installed
\tLocator: A2

Handle 0x1102, DMI type 17, 92 bytes
Memory Device
\tSize: 32768 MB
\tLocator: B1
"""

CPUINFO = "".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338N\n"
    f"physical id\t: {i // 4}\nsiblings\t: 4\ncore id\t: {i % 2}\ncpu cores\t: 2\n"
    "flags\t\t: fpu vme sse4_2 avx512f vmx\n\n"
    for i in range(8)
)


def two_nic_server() -> dict[str, bytes]:
    pci = "/sys/devices/pci0000:17/0000:17:02.0"
    files = {
        "bundle-version": "1\n",
        "proc/cpuinfo": CPUINFO,
        "proc/meminfo": "MemTotal:       65536000 kB\nMemFree: 1 kB\n",
        "proc/cmdline": "console=ttyS0 ztpd.token=- BOOTIF=01-b4-96-91-aa-00-01\n",
        "cmd/uname-m": "x86_64\n",
        "cmd/firmware": "uefi\n",
        "cmd/dmidecode": DMIDECODE,
        "cmd/ipmitool-lan-1": "IP Address Source       : DHCP Address\n"
        "IP Address              : 10.1.0.17\nMAC Address             : d0:8e:79:00:00:17\n",
        "cmd/ip-addr": "2: eno1    inet 10.2.0.40/24 brd 10.2.0.255 scope global eno1\\ x\n",
        "errors/ipmitool-lan-2": "never asked",  # an agent-side failure is carried over
        f"sys/firmware/efi/efivars/{SECURE_BOOT_VAR}.hex": "0600000001\n",
        "sys/class/dmi/id/sys_vendor": "Dell Inc.\n",
        "sys/class/dmi/id/product_name": "PowerEdge R650\n",
        "sys/class/dmi/id/product_serial": "7XK2QK3\n",
        "sys/class/dmi/id/product_uuid": "4C4C4544-0058-4B10-8032-B7C04F514B33\n",
        "lldp/eno1.hex": _pcap(LLDP),
    }
    links = []
    for i, (name, mac, carrier, speed) in enumerate(
        [("eno1", "b4:96:91:aa:00:01", "1", "10000"), ("eno2", "b4:96:91:aa:00:02", "0", "-1")]
    ):
        addr = f"0000:31:00.{i}"
        base = f"sys/class/net/{name}"
        files |= {f"{base}/address": mac, f"{base}/carrier": carrier, f"{base}/speed": speed}
        links += [
            f"/{base}/device\t{pci}/0000:31:00.{i}",
            f"/{base}/device/driver\t/sys/bus/pci/drivers/ixgbe",
            f"/sys/bus/pci/devices/{addr}/driver\t/sys/bus/pci/drivers/ixgbe",
        ]
    devices = {
        "0000:31:00.0": ("0x8086", "0x1563", "0x020000"),
        "0000:31:00.1": ("0x8086", "0x1563", "0x020000"),
        "0000:00:17.0": ("0x8086", "0xa352", "0x010601"),  # AHCI
        "0000:5e:00.0": ("0x144d", "0xa80a", "0x010802"),  # NVMe
        "0000:3b:00.0": ("0x10de", "0x20b5", "0x030200"),  # A100
        "0000:03:00.0": ("0x102b", "0x0536", "0x030000"),  # the iDRAC's Matrox console
        "0000:98:00.0": ("0x1077", "0x2261", "0x0c0400"),  # FC HBA: not storage/network class
        "0000:4b:00.0": ("0x8086", "0x1593", "0x020000"),  # E810 without a bound driver
    }
    for addr, (vendor, device, cls) in devices.items():
        base = f"sys/bus/pci/devices/{addr}"
        files |= {f"{base}/vendor": vendor, f"{base}/device": device, f"{base}/class": cls}
        if addr in ("0000:00:17.0", "0000:5e:00.0", "0000:3b:00.0", "0000:03:00.0"):
            links.append(f"/{base}/driver\t/sys/bus/pci/drivers/bound")
    files |= {
        "sys/block/sda/size": "3750748848",
        "sys/block/sda/queue/rotational": "0",
        "sys/block/sda/device/model": "SAMSUNG MZ7L31T9",
        "sys/block/sda/device/vendor": "ATA     ",
        "sys/block/sda/device/wwid": "naa.5002538f33b0c5a1",
        "sys/block/sda/device/vpd_pg80.hex": (b"\x00\x80\x00\x0eS6ESNE0T700123").hex(),
        "sys/block/nvme0n1/size": "7501476528",
        "sys/block/nvme0n1/queue/rotational": "0",
        "sys/block/nvme0n1/device/model": "SAMSUNG MZQL27T6HBLA-00A07",
        "sys/block/nvme0n1/device/serial": "S6CKNT0W300456      ",
        "sys/block/nvme0n1/wwid": "eui.36434b3052b004560025384500000001",
    }
    links += [
        "/sys/block/sda\t/sys/devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sda",
        "/sys/block/nvme0n1\t/sys/devices/pci0000:5d/0000:5d:02.0/0000:5e:00.0/nvme/nvme0/nvme0n1",
    ]
    files["links"] = "\n".join(links) + "\n"
    return {k: v.encode() for k, v in files.items()}


def test_two_nic_server() -> None:
    inv = collect(Bundle.of(two_nic_server()))
    assert inv.cpu is not None
    assert (inv.cpu.count, inv.cpu.sockets, inv.cpu.cores, inv.cpu.threads) == (8, 2, 4, 8)
    assert inv.cpu.model == "Intel(R) Xeon(R) Gold 6338N"
    assert inv.memory is not None
    assert (inv.memory.total_bytes, inv.memory.physical_bytes) == (65536000 * 1024, 64 << 30)
    assert inv.system is not None and inv.system.firmware is not None
    assert (inv.system.serial, inv.system.uuid) == (
        "7XK2QK3",
        "4c4c4544-0058-4b10-8032-b7c04f514b33",
    )
    assert inv.system.sku == "SKU=0A3C"  # from dmidecode when /sys/class/dmi lacks it
    assert (inv.system.firmware.version, inv.system.firmware.date) == ("2.19.1", "06/12/2023")
    assert inv.boot is not None
    assert (inv.boot.mode, inv.boot.secure_boot, inv.boot.pxe_interface) == (
        "uefi", True, "b4:96:91:aa:00:01"
    )  # fmt: skip
    assert inv.bmc is not None and (inv.bmc.address, inv.bmc.mac) == (
        "10.1.0.17",
        "d0:8e:79:00:00:17",
    )
    eno1, eno2 = inv.interfaces
    assert (eno1.link, eno1.speed_mbps, eno1.driver, eno1.pci_product) == (
        True,
        10000,
        "ixgbe",
        "0x1563",
    )
    assert (eno2.link, eno2.speed_mbps, eno2.ipv4) == (False, None, [])
    assert eno1.ipv4 == ["10.2.0.40/24"]
    assert eno1.lldp is not None and eno2.lldp is None
    assert (eno1.lldp.chassis_id, eno1.lldp.port_id) == ("00:11:22:33:44:55", "Ethernet1/7")
    assert (eno1.lldp.system_name, eno1.lldp.port_description) == (
        "leaf-3.site",
        "server-17 uplink",
    )
    nvme, sda = inv.disks
    assert (sda.serial, sda.transport, sda.wwn, sda.rotational) == (
        "S6ESNE0T700123", "sata", "naa.5002538f33b0c5a1", False
    )  # fmt: skip
    assert (sda.by_path, sda.vendor, sda.size_bytes) == (
        "pci-0000:00:17.0-ata-3",
        "ATA",
        3750748848 * 512,
    )
    assert (nvme.serial, nvme.transport, nvme.by_path) == (
        "S6CKNT0W300456", "nvme", "pci-0000:5e:00.0-nvme-1"
    )  # fmt: skip
    assert nvme.wwn == "eui.36434b3052b004560025384500000001"
    assert [(g.vendor, g.pci_address) for g in inv.gpus] == [("NVIDIA", "0000:3b:00.0")]
    assert len(inv.pci) == 8
    assert [e.collector for e in inv.errors] == ["agent:ipmitool-lan-2", "drivers"]
    assert "0000:4b:00.0 (0x8086:0x1593" in inv.errors[1].message
    ident = identity(inv)
    assert ident.macs == ("b4:96:91:aa:00:01", "b4:96:91:aa:00:02")
    assert (ident.uuid, ident.serial) == ("4c4c4544-0058-4b10-8032-b7c04f514b33", "7XK2QK3")


def test_a_failing_collector_is_recorded_and_the_rest_arrive() -> None:
    files = two_nic_server()
    files["proc/cpuinfo"] = b"garbage without processors\n"
    files["cmd/ipmitool-lan-1"] = b"IP Address : 300.1.2.3\nMAC Address : d0:8e:79:00:00:17\n"
    inv = collect(Bundle.of(files))
    assert inv.cpu is None and inv.bmc is None
    failed = {e.collector: e.message for e in inv.errors}
    assert "processor" in failed["cpu"] and "bmc" in failed
    assert inv.system is not None and len(inv.disks) == 2 and len(inv.interfaces) == 2


@pytest.mark.parametrize(
    ("text", "size"),
    [("16 GB", 16 << 30), ("512 MB", 512 << 20), ("No Module Installed", None), ("1 TB", 1 << 40)],
)
def test_dmi_size(text: str, size: int | None) -> None:
    assert dmi_size(text) == size


def test_lldp_with_vlan_tag_and_address_chassis() -> None:
    frame = (
        bytes(12) + b"\x81\x00\x00\x0a" + b"\x88\xcc"
        + _tlv(1, b"\x05\x01" + bytes([10, 0, 0, 1]))
        + _tlv(2, b"\x03" + bytes.fromhex("aabbccddeeff"))
    )  # fmt: skip
    lldp = parse_lldp(frame)
    assert lldp is not None and (lldp.chassis_id, lldp.port_id) == ("10.0.0.1", "aa:bb:cc:dd:ee:ff")
    assert parse_lldp(bytes(12) + b"\x08\x00") is None


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_bundle_from_tar_round_trip_and_refusals() -> None:
    files = two_nic_server()
    bundle = Bundle.from_tar(_tar({f"./{k}": v for k, v in files.items()}))
    assert collect(bundle) == collect(Bundle.of(files))
    with pytest.raises(BadRequest, match="outside the bundle"):
        Bundle.from_tar(_tar({"bundle-version": b"1", "../../etc/passwd": b"x"}))
    with pytest.raises(BadRequest, match="not a readable tar"):
        Bundle.from_tar(b"\x1f\x8b not really gzip")
    with pytest.raises(BadRequest, match="bundle-version"):
        Bundle.from_tar(_tar({"proc/cpuinfo": b""}))
