"""The inventory schema, version 1: what a machine is, as the agent or a BMC reported it.

Shaped like ironic-python-agent's inventory. Every section is optional so a partial inventory
(a collector failed, or only the BMC answered) still validates; what failed is listed in
``errors`` and who said what in ``sources``. Unknown keys are refused so a typo in an agent is
caught, and an inventory written for a schema version this ztpd does not know is refused with
a message naming the versions it does know. The documentation is docs/inventory.md.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})
MAX_LIST = 4096  # far beyond any machine; bounds what one document may make ztpd hold

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalize_mac(value: str) -> str:
    v = value.strip().lower().replace("-", ":")
    if not _MAC.match(v):
        raise ValueError("not a MAC address like 52:54:00:12:34:56")
    return v


def _ip(value: str) -> str:
    return str(ipaddress.ip_address(value.strip()))


def _ip_interface(value: str) -> str:
    """An address with an optional prefix length, kept as written but normalised."""
    return str(ipaddress.ip_interface(value.strip()))


Mac = Annotated[str, pydantic.AfterValidator(normalize_mac)]
Ip = Annotated[str, pydantic.AfterValidator(_ip)]
IpInterface = Annotated[str, pydantic.AfterValidator(_ip_interface)]
Count = Annotated[int, Field(ge=0)]
Bytes = Annotated[int, Field(ge=0)]
Text = Annotated[str, Field(max_length=1024)]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cpu(Part):
    model: Text | None = None
    count: Count | None = None  # logical CPUs
    cores: Count | None = None
    threads: Count | None = None
    sockets: Count | None = None
    architecture: Text | None = None  # x86_64, aarch64 ...
    flags: Annotated[list[Text], Field(max_length=MAX_LIST)] = []


class Memory(Part):
    total_bytes: Bytes | None = None  # usable, as the kernel reports it
    physical_bytes: Bytes | None = None  # installed, from DMI


class Disk(Part):
    name: Text  # /dev/sda, /dev/nvme0n1
    model: Text | None = None
    vendor: Text | None = None
    size_bytes: Bytes | None = None
    rotational: bool | None = None
    serial: Text | None = None
    wwn: Text | None = None
    by_path: Text | None = None
    transport: Text | None = None  # sata, sas, nvme, usb, virtio ...


class Lldp(Part):
    chassis_id: Text | None = None
    port_id: Text | None = None
    system_name: Text | None = None
    port_description: Text | None = None


class Interface(Part):
    name: Text
    mac: Mac | None = None
    link: bool | None = None
    speed_mbps: Count | None = None
    driver: Text | None = None
    pci_vendor: Text | None = None  # 0x8086
    pci_product: Text | None = None
    ipv4: Annotated[list[IpInterface], Field(max_length=256)] = []
    lldp: Lldp | None = None


class Firmware(Part):
    vendor: Text | None = None
    version: Text | None = None
    date: Text | None = None


class System(Part):
    manufacturer: Text | None = None
    product: Text | None = None
    serial: Text | None = None
    uuid: Text | None = None
    sku: Text | None = None
    firmware: Firmware | None = None


class Boot(Part):
    mode: Literal["uefi", "bios"] | None = None
    secure_boot: bool | None = None
    pxe_interface: Mac | None = None


class Bmc(Part):
    address: Ip | None = None
    mac: Mac | None = None


class PciDevice(Part):
    address: Text  # 0000:3b:00.0
    vendor_id: Text | None = None
    product_id: Text | None = None
    class_id: Text | None = None
    vendor: Text | None = None
    product: Text | None = None


class Gpu(Part):
    vendor: Text | None = None
    product: Text | None = None
    pci_address: Text | None = None


class CollectorError(Part):
    collector: Text
    message: Annotated[str, Field(max_length=4096)]


Source = Literal["agent", "ipmi", "redfish"]


class Inventory(Part):
    """One machine's inventory. ``Inventory.model_validate(json)`` is the way in."""

    schema_version: int
    cpu: Cpu | None = None
    memory: Memory | None = None
    disks: Annotated[list[Disk], Field(max_length=MAX_LIST)] = []
    interfaces: Annotated[list[Interface], Field(max_length=MAX_LIST)] = []
    system: System | None = None
    boot: Boot | None = None
    bmc: Bmc | None = None
    pci: Annotated[list[PciDevice], Field(max_length=MAX_LIST)] = []
    gpus: Annotated[list[Gpu], Field(max_length=MAX_LIST)] = []
    errors: Annotated[list[CollectorError], Field(max_length=MAX_LIST)] = []
    sources: dict[str, Source] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        # Checked before the fields so a newer agent gets one clear message, not a list of
        # unknown keys it added in its version.
        if isinstance(data, dict) and "schema_version" in data:
            v = data["schema_version"]
            if isinstance(v, int) and not isinstance(v, bool) and v not in SUPPORTED_VERSIONS:
                known = ", ".join(str(x) for x in sorted(SUPPORTED_VERSIONS))
                raise ValueError(
                    f"inventory schema_version {v} is not supported (this ztpd reads {known})"
                )
        return data

    @pydantic.model_validator(mode="after")
    def _sources_name_sections(self) -> Inventory:
        unknown = sorted(set(self.sources) - set(type(self).model_fields))
        if unknown:
            raise ValueError(f"sources names unknown sections: {', '.join(unknown)}")
        return self
