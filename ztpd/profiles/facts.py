"""Facts: the flat view of a node that profile conditions and hostname templates read.

``build_facts(inventory, node)`` turns a validated inventory plus what the network told ztpd
about the node (``NodeFacts``: DHCP architecture, relay circuit, labels ...) into a mapping
from dotted names (``cpu.count``, ``system.serial``) to values. List facts (``disks``,
``interfaces``, ``gpus``, ``pci``, ``errors``) hold one flat mapping per element. A fact the
machine did not report is absent, never None. ``FIELDS`` is the registry: every name a profile
may use, its kind (which operators and units apply) and what it means; unknown names are
refused when profiles are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ztpd.inventory import Inventory

Kind = Literal["int", "number", "str", "bool", "size", "speed", "ip", "mac", "strs", "ips", "list"]
Facts = Mapping[str, Any]

GIB = 2**30


@dataclass(frozen=True)
class Field:
    kind: Kind
    doc: str
    elements: Mapping[str, Field] | None = None  # for kind "list": the fields of one element


def _f(kind: Kind, doc: str) -> Field:
    return Field(kind, doc)


DISK = {
    "name": _f("str", "kernel name, e.g. /dev/nvme0n1"),
    "model": _f("str", "model string"),
    "vendor": _f("str", "vendor string"),
    "size_bytes": _f("size", "capacity (units accepted: 960GB, 1.92TB)"),
    "rotational": _f("bool", "true for spinning disks"),
    "serial": _f("str", "serial number"),
    "wwn": _f("str", "world wide name"),
    "by_path": _f("str", "/dev/disk/by-path name"),
    "transport": _f("str", "sata, sas, nvme, usb, virtio ..."),
}
INTERFACE = {
    "name": _f("str", "kernel name, e.g. eno1"),
    "mac": _f("mac", "hardware address"),
    "link": _f("bool", "carrier detected"),
    "speed_mbps": _f("speed", "link speed in Mbit/s (units accepted: 10G, 2500M)"),
    "driver": _f("str", "kernel driver, e.g. ice, mlx5_core"),
    "pci_vendor": _f("str", "PCI vendor id, e.g. 0x8086"),
    "pci_product": _f("str", "PCI product id"),
    "ipv4": _f("ips", "IPv4 addresses with prefix length"),
    "lldp.chassis_id": _f("str", "LLDP chassis id of the switch"),
    "lldp.port_id": _f("str", "LLDP port id on the switch"),
    "lldp.system_name": _f("str", "LLDP system name of the switch"),
    "lldp.port_description": _f("str", "LLDP port description"),
}
GPU = {
    "vendor": _f("str", "vendor name, e.g. NVIDIA Corporation"),
    "product": _f("str", "product name"),
    "pci_address": _f("str", "PCI address"),
}
PCI = {
    "address": _f("str", "PCI address, e.g. 0000:3b:00.0"),
    "vendor_id": _f("str", "vendor id, e.g. 0x10de"),
    "product_id": _f("str", "product id"),
    "class_id": _f("str", "class id, e.g. 0x030200"),
    "vendor": _f("str", "vendor name"),
    "product": _f("str", "product name"),
}
ERROR = {
    "collector": _f("str", "the inventory collector that failed"),
    "message": _f("str", "why it failed"),
}

FIELDS: Mapping[str, Field] = {
    "cpu.model": _f("str", "CPU model name"),
    "cpu.count": _f("int", "logical CPUs"),
    "cpu.cores": _f("int", "physical cores"),
    "cpu.threads": _f("int", "hardware threads"),
    "cpu.sockets": _f("int", "sockets"),
    "cpu.architecture": _f("str", "x86_64, aarch64 ..."),
    "cpu.flags": _f("strs", "CPU flags (use contains)"),
    "memory.total_bytes": _f("size", "usable memory as the kernel reports it"),
    "memory.physical_bytes": _f("size", "installed memory from DMI"),
    "memory.total_gb": _f("number", "installed memory in GiB (DMI when known, else usable)"),
    "disks": Field("list", "block devices (use count, any, all)", DISK),
    "interfaces": Field("list", "network interfaces (use count, any, all)", INTERFACE),
    "gpus": Field("list", "GPUs (use count, any, all)", GPU),
    "pci": Field("list", "PCI devices (use count, any, all)", PCI),
    "errors": Field("list", "inventory collectors that failed", ERROR),
    "system.manufacturer": _f("str", "e.g. Dell Inc."),
    "system.product": _f("str", "e.g. PowerEdge R650"),
    "system.serial": _f("str", "chassis serial (service tag)"),
    "system.uuid": _f("str", "SMBIOS UUID"),
    "system.sku": _f("str", "SKU"),
    "system.firmware.vendor": _f("str", "firmware vendor"),
    "system.firmware.version": _f("str", "firmware version"),
    "system.firmware.date": _f("str", "firmware date"),
    "boot.mode": _f("str", "uefi or bios"),
    "boot.secure_boot": _f("bool", "secure boot enabled"),
    "boot.pxe_interface": _f("mac", "MAC of the interface the node booted from"),
    "bmc.address": _f("ip", "BMC IP address"),
    "bmc.mac": _f("mac", "BMC MAC address"),
    "dhcp.arch": _f("str", "client architecture from DHCP option 93, e.g. efi-x64, bios"),
    "dhcp.vendor_class": _f("str", "DHCP option 60"),
    "relay.address": _f("ip", "address of the DHCP relay (giaddr)"),
    "relay.circuit_id": _f("str", "DHCP relay agent circuit id (option 82.1)"),
    "relay.remote_id": _f("str", "DHCP relay agent remote id (option 82.2)"),
    "node.mac": _f("mac", "MAC the node first appeared with"),
    "node.ip": _f("ip", "the node's current IP address"),
}
LABELS = "labels."  # labels.<key>: strings an operator attached to the node


def lookup(name: str) -> Field | None:
    """The registry entry for a fact name (``labels.<anything>`` is a string)."""
    if name.startswith(LABELS) and len(name) > len(LABELS):
        return Field("str", "operator label")
    return FIELDS.get(name)


@dataclass(frozen=True)
class NodeFacts:
    """What ztpd knows about a node besides its inventory (from DHCP, relays, operators)."""

    mac: str | None = None
    ip: str | None = None
    dhcp_arch: str | None = None
    dhcp_vendor_class: str | None = None
    relay_address: str | None = None
    relay_circuit_id: str | None = None
    relay_remote_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _flatten(prefix: str, data: Any, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            _flatten(f"{prefix}{k}.", v, out)
    elif data is not None and data != []:
        out[prefix[:-1]] = tuple(data) if isinstance(data, list) else data


def _elements(items: list[Any]) -> tuple[Mapping[str, Any], ...]:
    out = []
    for item in items:
        flat: dict[str, Any] = {}
        _flatten("", item.model_dump(), flat)
        out.append(flat)
    return tuple(out)


def build_facts(inventory: Inventory | None, node: NodeFacts | None = None) -> dict[str, Any]:
    """The flat fact view of one node; pure and cheap, so callers may rebuild it per match."""
    facts: dict[str, Any] = {}
    if inventory is not None:
        for section in ("cpu", "memory", "system", "boot", "bmc"):
            value = getattr(inventory, section)
            if value is not None:
                _flatten(f"{section}.", value.model_dump(), facts)
        for name in ("disks", "interfaces", "gpus", "pci", "errors"):
            facts[name] = _elements(getattr(inventory, name))
        mem = facts.get("memory.physical_bytes", facts.get("memory.total_bytes"))
        if mem is not None:
            facts["memory.total_gb"] = round(mem / GIB, 1)
    if node is not None:
        for name, value in (
            ("node.mac", node.mac),
            ("node.ip", node.ip),
            ("dhcp.arch", node.dhcp_arch),
            ("dhcp.vendor_class", node.dhcp_vendor_class),
            ("relay.address", node.relay_address),
            ("relay.circuit_id", node.relay_circuit_id),
            ("relay.remote_id", node.relay_remote_id),
        ):
            if value is not None:
                facts[name] = value
        for key, value in node.labels.items():
            facts[LABELS + key] = value
    return facts


def nested(facts: Facts) -> dict[str, Any]:
    """The facts as nested mappings (``system.serial`` -> ``{"system": {"serial": ...}}``),
    the shape hostname templates see."""
    out: dict[str, Any] = {}
    for name, value in facts.items():
        *parents, leaf = name.split(".")
        target = out
        for p in parents:
            target = target.setdefault(p, {})
        if isinstance(value, tuple) and value and isinstance(value[0], Mapping):
            target[leaf] = [nested(v) for v in value]
        else:
            target[leaf] = list(value) if isinstance(value, tuple) else value
    return out
