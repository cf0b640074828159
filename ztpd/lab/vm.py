"""The lab's virtual machines: shapes, identities, disks, firmware, and the QEMU command line.

``plan`` gives each VM a shape from ``SHAPES`` (CPU, memory, disks, NICs — chosen so that
different example profiles match), a firmware, and identities no other VM shares: SMBIOS
serial and UUID, MACs, disk serials. ``qemu_argv`` is pure; ``prepare`` makes the files it
names (sparse qcow2 disks, a private copy of the OVMF variables).

BIOS VMs boot QEMU's own iPXE ROM on an e1000 NIC: DHCP straight to the HTTP script. UEFI VMs
use OVMF with the NIC's option ROM removed (``romfile=``), so OVMF's PXE fetches ipxe.efi over
TFTP first, as real UEFI machines do. ``accelerator`` boots a guest under KVM to see whether
it really runs (a /dev/kvm that opens but never runs guests exists) and falls back to TCG.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ztpd.errors import ZtpdError
from ztpd.images import run

Firmware = Literal["bios", "uefi"]
FIRMWARE_CHOICES = ("bios", "uefi", "mixed")
QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
BIOS_NIC_ROM = Path("/usr/lib/ipxe/qemu/pxe-e1000.rom")
KVM_PROBE_SECONDS = 10.0
DISK_OPTS = "cache=unsafe,discard=unmap,detect-zeroes=unmap"
UUID_NAMESPACE = uuid.UUID("6c2b8d0e-2f4b-4f53-9a3e-7a1d2c5b9e01")


@dataclass(frozen=True)
class Shape:
    name: str
    cpus: int
    memory_mb: int
    disks_gb: tuple[int, ...]
    nics: int


# Sizes are what the guest sees; qcow2 files grow only with what is written. Small VMs keep TCG
# usable on two cores. Against profiles/: the first three fit kubeedge-edge (at most 8 CPUs and
# 32 GB, a disk of 16 GB or more) and get the Debian image, so `lab up --nodes 3` (make demo)
# ends with every node deployed; the fourth's 8 GB disk is below kubeedge-edge's 16 GB, so
# hold-unknown holds it for an operator. The other example profiles want 8+ CPUs and 32+ GB.
SHAPES = (
    Shape("edge-small", cpus=1, memory_mb=512, disks_gb=(20,), nics=1),
    Shape("edge-dual", cpus=2, memory_mb=768, disks_gb=(32, 64), nics=2),
    Shape("edge-storage", cpus=2, memory_mb=640, disks_gb=(40, 500, 500), nics=3),
    Shape("tiny-disk", cpus=1, memory_mb=384, disks_gb=(8,), nics=1),
)


@dataclass(frozen=True)
class VmSpec:
    name: str
    index: int
    firmware: Firmware
    shape: Shape
    serial: str
    uuid: str
    macs: tuple[str, ...]
    taps: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VmSpec:
        shape = d["shape"]
        return cls(
            name=d["name"],
            index=d["index"],
            firmware=d["firmware"],
            shape=Shape(**{**shape, "disks_gb": tuple(shape["disks_gb"])}),
            serial=d["serial"],
            uuid=d["uuid"],
            macs=tuple(d["macs"]),
            taps=tuple(d["taps"]),
        )


def firmware_for(choice: str, index: int) -> Firmware:
    if choice == "mixed":
        return "bios" if index % 2 else "uefi"
    if choice in ("bios", "uefi"):
        return "bios" if choice == "bios" else "uefi"
    raise ZtpdError(f"lab: firmware must be one of {', '.join(FIRMWARE_CHOICES)}, not {choice!r}")


def plan(count: int, firmware: str, lab: str = "ztpd-lab") -> list[VmSpec]:
    """``count`` VMs, vm1..vmN, shapes in turn; identities derive from ``lab`` and the index."""
    if not 1 <= count <= 99:
        raise ZtpdError(f"lab: --nodes must be between 1 and 99, not {count}")
    specs = []
    for i in range(1, count + 1):
        shape = SHAPES[(i - 1) % len(SHAPES)]
        specs.append(
            VmSpec(
                name=f"vm{i}",
                index=i,
                firmware=firmware_for(firmware, i),
                shape=shape,
                serial=f"ZTL{i:04d}",
                uuid=str(uuid.uuid5(UUID_NAMESPACE, f"{lab}/vm{i}")),
                macs=tuple(f"52:54:00:5a:{i:02x}:{n:02x}" for n in range(1, shape.nics + 1)),
                # Names live in the switch namespace only; at most 15 characters.
                taps=tuple(f"zl{i}n{n}" for n in range(1, shape.nics + 1)),
            )
        )
    return specs


@dataclass(frozen=True)
class VmFiles:
    """Where one VM's files live (all under its own directory)."""

    dir: Path

    def disk(self, n: int) -> Path:
        return self.dir / f"disk{n}.qcow2"

    @property
    def vars(self) -> Path:
        return self.dir / "OVMF_VARS.fd"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    def console_text(self, tail: int | None = None) -> str:
        """The serial console so far (its last ``tail`` characters); empty before QEMU runs."""
        path = self.console
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-tail:] if tail else text

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"


def qemu_argv(spec: VmSpec, files: VmFiles, accel: str, *, bmc: str | None = None) -> list[str]:
    """The full QEMU command line for ``spec`` (pure: it only names files). ``bmc``
    ("host:port") wires a BMC reached over KCS to an external simulator listening there
    (OpenIPMI's ipmi_sim, ``serial 15 host port codec VM``): QEMU's own simulator has no LAN
    configuration, so ``ipmitool lan print`` would find no BMC address or MAC."""
    shape = spec.shape
    argv = [
        QEMU,
        "-name",
        spec.name,
        "-accel",
        accel,
        "-smp",
        str(shape.cpus),
        "-m",
        str(shape.memory_mb),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        f"file:{files.console}",
        "-smbios",
        f"type=1,manufacturer=ztpd-lab,product={shape.name},serial={spec.serial},uuid={spec.uuid}",
    ]
    if spec.firmware == "uefi":
        argv += [
            "-machine",
            "q35",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,file={files.vars}",
            # Nothing on the lab boots over IPv6, and OVMF's PXEv6 entry waits over a minute
            # for a DHCPv6 offer before a deployed VM reaches its disk: its IPv6 stack stays off.
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6Support,string=no",
        ]
        nic = "virtio-net-pci,romfile="  # no iPXE ROM: OVMF's PXE loads ipxe.efi over TFTP
    else:
        argv += ["-machine", "pc"]
        nic = f"e1000,romfile={BIOS_NIC_ROM}"
    for n, (mac, tap) in enumerate(zip(spec.macs, spec.taps, strict=True)):
        boot = ",bootindex=1" if n == 0 else ""
        argv += [
            "-netdev",
            f"tap,id=net{n},ifname={tap},script=no,downscript=no",
            "-device",
            f"{nic},netdev=net{n},mac={mac}{boot}",
        ]
    for n in range(len(shape.disks_gb)):
        # The first disk boots once the network says "boot local" (iPXE exits). A lab disk
        # needs no durability against a host crash, so guest flushes are ignored (unsafe); and
        # zero blocks of an image write stay unallocated (detect-zeroes) — both speed TCG up.
        boot = ",bootindex=2" if n == 0 else ""
        argv += [
            "-drive",
            f"if=none,id=disk{n},format=qcow2,file={files.disk(n)},{DISK_OPTS}",
            "-device",
            f"virtio-blk-pci,drive=disk{n},serial={spec.serial}-D{n}{boot}",
        ]
    if bmc is not None:
        host, _, port = bmc.rpartition(":")
        argv += [
            "-chardev",
            f"socket,id=ipmi0,host={host},port={port},reconnect=1",
            "-device",
            "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
            "-device",
            "isa-ipmi-kcs,bmc=bmc0",
        ]
    return argv


def missing_tools(firmware: Iterable[str]) -> list[str]:
    """What this host lacks to run VMs of these firmwares, each naming its Debian package."""
    firmware = set(firmware)
    problems = []
    if shutil.which(QEMU) is None or shutil.which("qemu-img") is None:
        problems.append(f"{QEMU} and qemu-img (apt-get install qemu-system-x86 qemu-utils)")
    if "bios" in firmware and not BIOS_NIC_ROM.is_file():
        problems.append(f"{BIOS_NIC_ROM} (apt-get install ipxe-qemu)")
    if "uefi" in firmware and not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        problems.append(f"{OVMF_CODE} (apt-get install ovmf)")
    return problems


def prepare(spec: VmSpec, files: VmFiles) -> None:
    """Create the VM's empty disks and firmware variables (kept if they exist: a restart)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    for n, size in enumerate(spec.shape.disks_gb):
        if not files.disk(n).exists():
            run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(files.disk(n)), f"{size}G"],
                what="lab",
                timeout=60,
            )
    if spec.firmware == "uefi" and not files.vars.exists():
        shutil.copyfile(OVMF_VARS, files.vars)


def accelerator(workdir: Path, kernel: Path, kvm: Path = Path("/dev/kvm")) -> tuple[str, str]:
    """("kvm" | "tcg", why): KVM only when a Linux kernel really runs under it.

    Some hosts have a /dev/kvm that opens and even runs SeaBIOS (real mode) but stops the guest
    with "KVM internal error" once it leaves it; so the probe boots ``kernel`` (the discovery
    kernel) without a root file system and waits for its panic on the serial console.
    """
    if not kvm.exists():
        return "tcg", f"{kvm} does not exist"
    if not kernel.exists():
        return "tcg", f"no kernel to probe KVM with ({kernel})"
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "kvm-probe.log"
    out.unlink(missing_ok=True)
    # timeout(1) ends the probe by itself even when this process is killed before its cleanup.
    argv = [
        "timeout",
        "-s",
        "KILL",
        str(int(KVM_PROBE_SECONDS) + 5),
        QEMU,
        "-accel",
        "kvm",
        "-m",
        "128",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{out}",
        "-kernel",
        str(kernel),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + KVM_PROBE_SECONDS
    verdict = ("tcg", f"KVM opens but ran no kernel within {KVM_PROBE_SECONDS:.0f}s")
    try:
        while time.monotonic() < deadline:
            exited = proc.poll() is not None  # before the read: an exited probe's log is whole
            if out.exists() and "Kernel panic" in out.read_text(errors="replace"):
                verdict = ("kvm", "a test kernel ran under KVM")
                break
            if exited:
                err = proc.stderr.read().strip() if proc.stderr else ""
                verdict = ("tcg", f"KVM refused: {err.splitlines()[-1] if err else 'exited'}")
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.terminate()  # timeout(1) hands it on, and kills QEMU at its deadline anyway
        proc.communicate()
        out.unlink(missing_ok=True)
    return verdict
