"""Collectors: the discovery agent's raw bundle → the v1 inventory.

The agent (ztpd/data/discovery/agent) is a busybox shell script. It does no parsing: it copies
files from /proc and /sys, writes where sysfs links point (``links``: ``path<TAB>target``), runs
dmidecode, ipmitool and ``uname -m`` into ``cmd/<name>`` (a failure into ``errors/<name>``) and
captures one LLDP frame per NIC as hex pcap (``lldp/<nic>.hex``). The parsing happens here, typed
and tested against bundles captured from real machines.

Each collector reads one section; one that fails is recorded in ``errors`` and the others still
run, so a partial inventory arrives. PCI storage and network controllers that no driver claimed
are reported as errors of the ``drivers`` collector: the ramdisk lacks their module.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pydantic

from ztpd.errors import BadRequest
from ztpd.identity import Identity
from ztpd.inventory.schema import (
    SCHEMA_VERSION,
    Bmc,
    Boot,
    CollectorError,
    Cpu,
    Disk,
    Firmware,
    Gpu,
    Interface,
    Inventory,
    Lldp,
    Memory,
    PciDevice,
    System,
)

MAX_FILES = 20_000
MAX_BYTES = 32 << 20  # unpacked; a large server's bundle is well under 2 MiB
_PCI_ADDR = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# Display controllers that are a BMC's or a hypervisor's console, not a GPU anyone schedules on.
CONSOLE_DISPLAY_VENDORS = frozenset({"0x1a03", "0x102b", "0x1234", "0x1013", "0x15ad", "0x1b36"})
GPU_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel"}
# PCI classes whose devices must have a driver for the inventory to be complete.
DRIVER_CLASSES = {"0x01": "storage", "0x02": "network"}
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


@dataclass(frozen=True)
class Bundle:
    """The files of one agent bundle, by relative path (``proc/cpuinfo``, ``cmd/dmidecode``)."""

    files: dict[str, bytes]
    links: dict[str, str] = field(default_factory=dict)  # "/sys/block/vda" → its real path

    @classmethod
    def of(cls, files: dict[str, bytes]) -> Bundle:
        links = {}
        for line in files.get("links", b"").decode(errors="replace").splitlines():
            path, _, target = line.partition("\t")
            if path and target:
                links[path.rstrip("/")] = target.rstrip("/")
        return cls(files, links)

    @classmethod
    def from_tar(cls, data: bytes) -> Bundle:
        """A gzip'ed tar as the agent posts it; bounded in files and unpacked bytes, only regular
        files, no path outside the bundle. BadRequest says what was wrong."""
        files: dict[str, bytes] = {}
        total = 0
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    if len(files) >= MAX_FILES:
                        raise BadRequest(f"bundle has more than {MAX_FILES} files")
                    if not member.isfile():
                        continue
                    name = _relative(member.name)
                    total += member.size
                    if total > MAX_BYTES:
                        raise BadRequest(f"bundle unpacks to more than {MAX_BYTES} bytes")
                    f = tar.extractfile(member)
                    if f is not None:
                        files[name] = f.read()
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise BadRequest(f"bundle is not a readable tar archive: {e}") from None
        if "bundle-version" not in files:
            raise BadRequest("bundle has no bundle-version file: not made by the ztpd agent")
        return cls.of(files)

    @classmethod
    def from_dir(cls, root: Path) -> Bundle:
        """A bundle unpacked into a directory (the test fixtures)."""
        return cls.of(
            {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        )

    def text(self, path: str) -> str | None:
        data = self.files.get(path.lstrip("/"))
        return None if data is None else data.decode(errors="replace")

    def value(self, path: str) -> str | None:
        """A one-line sysfs value, stripped; None when absent or empty."""
        t = self.text(path)
        return t.strip() or None if t is not None else None

    def children(self, directory: str) -> list[str]:
        prefix = directory.strip("/") + "/"
        return sorted(
            {k[len(prefix) :].split("/", 1)[0] for k in self.files if k.startswith(prefix)}
        )

    def link(self, path: str) -> str | None:
        return self.links.get(path.rstrip("/"))


def _relative(name: str) -> str:
    p = PurePosixPath(name)
    parts = [x for x in p.parts if x not in ("", ".")]
    if p.is_absolute() or ".." in parts or not parts:
        raise BadRequest(f"bundle member {name[:100]!r} is outside the bundle")
    return "/".join(parts)


# --- small parsers -------------------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


_UNITS = {"b": 1, "bytes": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def dmi_size(text: str) -> int | None:
    """dmidecode's ``16 GB`` / ``512 MB`` → bytes; ``No Module Installed`` → None."""
    m = re.match(r"^\s*(\d+)\s*([kmgt]?b|bytes)\s*$", text, re.IGNORECASE)
    return int(m.group(1)) * _UNITS[m.group(2).lower()] if m else None


def dmidecode(text: str) -> list[tuple[int, dict[str, str]]]:
    """dmidecode's output as (DMI type, {key: value}) per structure."""
    out: list[tuple[int, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        m = re.match(r"^Handle 0x[0-9A-Fa-f]+, DMI type (\d+),", line)
        if m:
            current = {}
            out.append((int(m.group(1)), current))
        elif current is not None and line.startswith("\t") and not line.startswith("\t\t"):
            key, sep, value = line.strip().partition(":")
            if sep:
                current[key.strip()] = value.strip()
    return out


def _clean(value: str | None) -> str | None:
    v = (value or "").strip()
    return v or None


def lldp_frame(pcap: bytes) -> bytes | None:
    """The first packet of a pcap file (either byte order, µs or ns timestamps)."""
    if len(pcap) < 40:
        return None
    magic = pcap[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        return None
    incl = struct.unpack_from(f"{order}I", pcap, 24 + 8)[0]
    return pcap[40 : 40 + incl]


def _lldp_id(subtype: int, value: bytes, mac_subtype: int) -> str:
    if subtype == mac_subtype and len(value) == 6:
        return ":".join(f"{b:02x}" for b in value)
    if subtype == (5 if mac_subtype == 4 else 4) and len(value) == 5 and value[0] == 1:
        return ".".join(str(b) for b in value[1:])  # network address, IPv4
    return value.decode(errors="replace").strip("\0 ")


def parse_lldp(frame: bytes) -> Lldp | None:
    """Chassis ID, port ID, system name and port description from an LLDP Ethernet frame."""
    off = 12
    if frame[off : off + 2] == b"\x81\x00":  # a VLAN tag
        off += 4
    if frame[off : off + 2] != b"\x88\xcc":
        return None
    off += 2
    found: dict[str, str] = {}
    while off + 2 <= len(frame):
        head = struct.unpack_from(">H", frame, off)[0]
        kind, length = head >> 9, head & 0x1FF
        value = frame[off + 2 : off + 2 + length]
        off += 2 + length
        if kind == 0:
            break
        if kind == 1 and value:
            found["chassis_id"] = _lldp_id(value[0], value[1:], 4)
        elif kind == 2 and value:
            found["port_id"] = _lldp_id(value[0], value[1:], 3)
        elif kind == 4:
            found["port_description"] = value.decode(errors="replace").strip("\0 ")
        elif kind == 5:
            found["system_name"] = value.decode(errors="replace").strip("\0 ")
    return Lldp(**found) if found else None


def _pci_of(path: str | None) -> str | None:
    """The PCI address closest to the device in a sysfs device path."""
    addrs = [p for p in (path or "").split("/") if _PCI_ADDR.match(p)]
    return addrs[-1] if addrs else None


def _hex_bytes(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex("".join(text.split()))
    except ValueError:
        return None


# --- the collectors ------------------------------------------------------------------------------


def cpu(b: Bundle) -> Cpu | None:
    text = b.text("proc/cpuinfo")
    if text is None:
        return None
    parsed = [
        dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        for block in text.split("\n\n")
    ]
    blocks = [blk for blk in parsed if "processor" in blk]
    if not blocks:
        raise ValueError("/proc/cpuinfo lists no processor")
    first = blocks[0]
    count = len(blocks)
    sockets = len({blk.get("physical id") for blk in blocks if "physical id" in blk}) or 1
    per_socket = _int(first.get("cpu cores"))
    flags = (first.get("flags") or first.get("Features") or "").split()
    return Cpu(
        model=_clean(first.get("model name") or first.get("Model name")),
        count=count,
        cores=per_socket * sockets if per_socket else count,
        threads=count,
        sockets=sockets,
        architecture=b.value("cmd/uname-m"),
        flags=sorted(set(flags)),
    )


def memory(b: Bundle) -> Memory | None:
    total = None
    for line in (b.text("proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    sizes = [
        dmi_size(fields.get("Size", ""))
        for kind, fields in dmidecode(b.text("cmd/dmidecode") or "")
        if kind == 17
    ]
    physical = sum(s for s in sizes if s) or None
    if total is None and physical is None:
        return None
    return Memory(total_bytes=total, physical_bytes=physical)


def _transport(path: str) -> str | None:
    for marker, name in (
        ("/virtio", "virtio"),
        ("/nvme", "nvme"),
        ("/usb", "usb"),
        ("/end_device-", "sas"),
        ("/ata", "sata"),
        ("/host", "scsi"),
    ):
        if marker in path:
            return name
    return None


def _by_path(name: str, path: str, transport: str | None) -> str | None:
    """A udev-style /dev/disk/by-path name (there is no udev in the ramdisk to ask)."""
    pci = _pci_of(path)
    if pci is None:
        return None
    if transport == "virtio":
        return f"virtio-pci-{pci}"
    if transport == "nvme":
        m = re.search(r"n(\d+)$", name)
        return f"pci-{pci}-nvme-{m.group(1) if m else 1}"
    if transport == "sata":
        m = re.search(r"/ata(\d+)/", path)
        return f"pci-{pci}-ata-{m.group(1)}" if m else f"pci-{pci}"
    hctl = re.findall(r"/(\d+:\d+:\d+:\d+)/", path)
    return f"pci-{pci}-scsi-{hctl[-1]}" if hctl else f"pci-{pci}"


def _vpd_serial(hex_text: str | None) -> str | None:
    raw = _hex_bytes(hex_text)
    if not raw or len(raw) < 4:
        return None
    return _clean(raw[4 : 4 + raw[3]].decode(errors="replace").strip("\0"))


def _wwn(value: str | None) -> str | None:
    if value and value.startswith(("naa.", "eui.", "0x")):
        return value
    return None


def _vendor(value: str | None) -> str | None:
    # A virtio disk's "vendor" is the PCI vendor id of virtio (0x1af4), not a disk maker.
    return None if value is None or re.match(r"^0x[0-9a-f]{4}$", value) else value


def disks(b: Bundle) -> list[Disk]:
    out = []
    for name in b.children("sys/block"):
        base = f"sys/block/{name}"
        sectors = _int(b.value(f"{base}/size"))
        if sectors is None:
            continue
        path = b.link(f"/{base}") or ""
        transport = _transport(path)
        rotational = b.value(f"{base}/queue/rotational")
        out.append(
            Disk(
                name=f"/dev/{name}",
                model=b.value(f"{base}/device/model"),
                vendor=_vendor(b.value(f"{base}/device/vendor")),
                size_bytes=sectors * 512,
                rotational=None if rotational is None else rotational == "1",
                serial=b.value(f"{base}/serial")
                or b.value(f"{base}/device/serial")
                or _vpd_serial(b.text(f"{base}/device/vpd_pg80.hex")),
                wwn=_wwn(b.value(f"{base}/wwid") or b.value(f"{base}/device/wwid")),
                by_path=_by_path(name, path, transport),
                transport=transport,
            )
        )
    return out


def _ipv4(b: Bundle) -> dict[str, list[str]]:
    """``ip -o -4 addr show`` → {interface: [address/prefix]}."""
    out: dict[str, list[str]] = {}
    for line in (b.text("cmd/ip-addr") or "").splitlines():
        m = re.match(r"^\d+:\s+(\S+)\s+inet\s+(\S+)", line)
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


def interfaces(b: Bundle) -> list[Interface]:
    addresses = _ipv4(b)
    out = []
    for name in b.children("sys/class/net"):
        base = f"sys/class/net/{name}"
        if b.link(f"/{base}/device") is None and b.value(f"{base}/address") is None:
            continue
        pci = _pci_of(b.link(f"/{base}/device"))
        driver = b.link(f"/{base}/device/driver")
        carrier = b.value(f"{base}/carrier")
        speed = _int(b.value(f"{base}/speed"))
        frame = lldp_frame(_hex_bytes(b.text(f"lldp/{name}.hex")) or b"")
        out.append(
            Interface(
                name=name,
                mac=b.value(f"{base}/address"),
                link=None if carrier is None else carrier == "1",
                speed_mbps=speed if speed is not None and speed > 0 and carrier == "1" else None,
                driver=driver.rsplit("/", 1)[-1] if driver else None,
                pci_vendor=b.value(f"sys/bus/pci/devices/{pci}/vendor") if pci else None,
                pci_product=b.value(f"sys/bus/pci/devices/{pci}/device") if pci else None,
                ipv4=addresses.get(name, []),
                lldp=parse_lldp(frame) if frame else None,
            )
        )
    return out


def system(b: Bundle) -> System | None:
    dmi = "sys/class/dmi/id"
    fields = {
        "manufacturer": b.value(f"{dmi}/sys_vendor"),
        "product": b.value(f"{dmi}/product_name"),
        "serial": b.value(f"{dmi}/product_serial"),
        "uuid": b.value(f"{dmi}/product_uuid"),
        "sku": b.value(f"{dmi}/product_sku"),
    }
    firmware = {
        "vendor": b.value(f"{dmi}/bios_vendor"),
        "version": b.value(f"{dmi}/bios_version"),
        "date": b.value(f"{dmi}/bios_date"),
    }
    # Without /sys/class/dmi (older kernels, some arm64 boards) dmidecode says the same.
    table = dmidecode(b.text("cmd/dmidecode") or "")
    sys_info = next((f for kind, f in table if kind == 1), {})
    bios = next((f for kind, f in table if kind == 0), {})
    for key, dmi_key in (
        ("manufacturer", "Manufacturer"),
        ("product", "Product Name"),
        ("serial", "Serial Number"),
        ("uuid", "UUID"),
        ("sku", "SKU Number"),
    ):
        fields[key] = fields[key] or _clean(sys_info.get(dmi_key))
    for key, dmi_key in (("vendor", "Vendor"), ("version", "Version"), ("date", "Release Date")):
        firmware[key] = firmware[key] or _clean(bios.get(dmi_key))
    if fields["uuid"]:
        fields["uuid"] = fields["uuid"].lower()
    if not any(fields.values()) and not any(firmware.values()):
        return None
    return System(**fields, firmware=Firmware(**firmware) if any(firmware.values()) else None)


def boot(b: Bundle) -> Boot | None:
    mode = b.value("cmd/firmware")
    secure = None
    var = _hex_bytes(b.text(f"sys/firmware/efi/efivars/{SECURE_BOOT_VAR}.hex"))
    if var is not None and len(var) >= 5:
        secure = var[4] == 1  # 4 bytes of attributes, then the value
    bootif = None
    for word in (b.text("proc/cmdline") or "").split():
        if word.startswith("BOOTIF="):
            value = word.removeprefix("BOOTIF=")
            bootif = value[3:] if value.startswith("01-") else value
    if mode not in ("uefi", "bios"):
        mode = None
    if mode is None and secure is None and bootif is None:
        return None
    return Boot(
        mode=mode,  # type: ignore[arg-type]  # narrowed to the two literals just above
        secure_boot=secure,
        pxe_interface=bootif.replace("-", ":") if bootif else None,
    )


def bmc(b: Bundle) -> Bmc | None:
    for name in sorted(n for n in b.children("cmd") if n.startswith("ipmitool-lan-")):
        found: dict[str, str] = {}
        for line in (b.text(f"cmd/{name}") or "").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                found[key.strip()] = value.strip()
        address = found.get("IP Address")
        mac = found.get("MAC Address")
        if mac:
            return Bmc(address=None if address in (None, "0.0.0.0") else address, mac=mac)
    return None


def pci(b: Bundle) -> list[PciDevice]:
    out = []
    for addr in b.children("sys/bus/pci/devices"):
        base = f"sys/bus/pci/devices/{addr}"
        out.append(
            PciDevice(
                address=addr,
                vendor_id=b.value(f"{base}/vendor"),
                product_id=b.value(f"{base}/device"),
                class_id=b.value(f"{base}/class"),
            )
        )
    return out


def gpus(b: Bundle) -> list[Gpu]:
    return [
        Gpu(
            vendor=GPU_VENDORS.get(d.vendor_id or "", d.vendor_id),
            product=d.product_id,
            pci_address=d.address,
        )
        for d in pci(b)
        if (d.class_id or "").startswith("0x03") and d.vendor_id not in CONSOLE_DISPLAY_VENDORS
    ]


def missing_drivers(b: Bundle) -> list[str]:
    """One message per storage or network controller that no loaded driver claimed."""
    out = []
    for d in pci(b):
        kind = DRIVER_CLASSES.get((d.class_id or "")[:4])
        if kind and b.link(f"/sys/bus/pci/devices/{d.address}/driver") is None:
            out.append(
                f"no driver for {kind} controller {d.address} "
                f"({d.vendor_id}:{d.product_id}, class {d.class_id}): "
                "the discovery image lacks its kernel module"
            )
    return out


COLLECTORS: dict[str, Callable[[Bundle], Any]] = {
    "cpu": cpu,
    "memory": memory,
    "disks": disks,
    "interfaces": interfaces,
    "system": system,
    "boot": boot,
    "bmc": bmc,
    "pci": pci,
    "gpus": gpus,
}


def collect(b: Bundle) -> Inventory:
    """Run every collector; a failing one becomes an ``errors`` entry and the rest carry on."""
    sections: dict[str, Any] = {}
    errors: list[CollectorError] = []
    for name in sorted(b.children("errors")):
        message = (b.text(f"errors/{name}") or "").strip() or "failed"
        errors.append(CollectorError(collector=f"agent:{name}", message=message[:4096]))
    for name, collector in COLLECTORS.items():
        try:
            value = collector(b)
        except (ValueError, KeyError, IndexError, struct.error, pydantic.ValidationError) as e:
            errors.append(CollectorError(collector=name, message=f"{type(e).__name__}: {e}"[:4096]))
            continue
        if value not in (None, []):
            sections[name] = value
    errors += [CollectorError(collector="drivers", message=m) for m in missing_drivers(b)]
    return Inventory(
        schema_version=SCHEMA_VERSION,
        **sections,
        errors=errors,
        sources=dict.fromkeys(sections, "agent"),
    )


def identity(inventory: Inventory) -> Identity:
    """What the inventory says about which machine this is."""
    macs = [i.mac for i in inventory.interfaces if i.mac]
    system_ = inventory.system or System()
    return Identity.of(macs, system_.uuid, system_.serial)
