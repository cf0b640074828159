"""The VM plan, the QEMU command line and the VM's files: pure functions, table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpd.errors import ZtpdError
from ztpd.lab.vm import BIOS_NIC_ROM, DISK_OPTS, OVMF_CODE, SHAPES, VmFiles, VmSpec, plan, qemu_argv


def _opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_plan_gives_distinct_identities_and_varied_shapes() -> None:
    vms = plan(8, "mixed")
    assert [v.name for v in vms] == [f"vm{i}" for i in range(1, 9)]
    for attr in ("serial", "uuid"):
        assert len({getattr(v, attr) for v in vms}) == 8
    macs = [m for v in vms for m in v.macs]
    taps = [t for v in vms for t in v.taps]
    assert len(set(macs)) == len(macs) and len(set(taps)) == len(taps)
    assert all(len(t) <= 15 for t in taps)
    shapes = {v.shape for v in vms[: len(SHAPES)]}
    assert len(shapes) == len(SHAPES)
    for key in ("cpus", "memory_mb", "nics"):
        assert len({getattr(s, key) for s in shapes}) > 1, key
    assert len({len(s.disks_gb) for s in shapes}) > 1
    assert [v.firmware for v in vms[:2]] == ["bios", "uefi"]


def test_plan_is_stable_per_lab_and_differs_between_labs() -> None:
    assert plan(2, "bios") == plan(2, "bios")
    assert plan(1, "bios", "a")[0].uuid != plan(1, "bios", "b")[0].uuid


@pytest.mark.parametrize(("count", "firmware"), [(0, "bios"), (100, "bios"), (1, "coreboot")])
def test_plan_refuses_bad_input(count: int, firmware: str) -> None:
    with pytest.raises(ZtpdError):
        plan(count, firmware)


def test_spec_round_trips_through_json_dict() -> None:
    for v in plan(4, "mixed"):
        assert VmSpec.from_dict(v.to_dict()) == v


def test_bios_argv(tmp_path: Path) -> None:
    spec = plan(2, "bios")[1]  # edge-dual: 2 CPUs, 2 disks, 2 NICs
    files = VmFiles(tmp_path)
    argv = qemu_argv(spec, files, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert _opts(argv, "-accel") == ["tcg"]
    assert _opts(argv, "-smp") == ["2"] and _opts(argv, "-m") == ["768"]
    assert _opts(argv, "-machine") == ["pc"]
    assert _opts(argv, "-serial") == [f"file:{files.console}"]
    (smbios,) = _opts(argv, "-smbios")
    assert f"serial={spec.serial}" in smbios and f"uuid={spec.uuid}" in smbios
    assert smbios.startswith("type=1,")
    assert _opts(argv, "-netdev") == [
        "tap,id=net0,ifname=zl2n1,script=no,downscript=no",
        "tap,id=net1,ifname=zl2n2,script=no,downscript=no",
    ]
    devices = _opts(argv, "-device")
    nics = [d for d in devices if d.startswith("e1000")]
    assert nics == [
        f"e1000,romfile={BIOS_NIC_ROM},netdev=net0,mac={spec.macs[0]},bootindex=1",
        f"e1000,romfile={BIOS_NIC_ROM},netdev=net1,mac={spec.macs[1]}",
    ]
    disks = [d for d in devices if d.startswith("virtio-blk")]
    assert disks == [
        f"virtio-blk-pci,drive=disk0,serial={spec.serial}-D0,bootindex=2",
        f"virtio-blk-pci,drive=disk1,serial={spec.serial}-D1",
    ]
    assert _opts(argv, "-drive") == [
        f"if=none,id=disk0,format=qcow2,file={files.disk(0)},{DISK_OPTS}",
        f"if=none,id=disk1,format=qcow2,file={files.disk(1)},{DISK_OPTS}",
    ]
    assert "pflash" not in " ".join(argv)


def test_uefi_argv_has_ovmf_with_private_vars_and_no_nic_rom(tmp_path: Path) -> None:
    spec = plan(1, "uefi")[0]
    files = VmFiles(tmp_path)
    argv = qemu_argv(spec, files, "kvm")
    assert _opts(argv, "-accel") == ["kvm"] and _opts(argv, "-machine") == ["q35"]
    drives = _opts(argv, "-drive")
    assert drives[:2] == [
        f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
        f"if=pflash,format=raw,file={files.vars}",
    ]
    assert files.vars.parent == tmp_path
    (nic,) = [d for d in _opts(argv, "-device") if d.startswith("virtio-net")]
    assert nic.startswith("virtio-net-pci,romfile=,") and "bootindex=1" in nic


def test_console_text_is_empty_before_qemu_runs_then_its_tail(tmp_path: Path) -> None:
    files = VmFiles(tmp_path)
    assert files.console_text() == files.console_text(10) == ""
    files.console.write_bytes(b"SeaBIOS\n\xff iPXE\nztpd-agent: start\n")
    assert files.console_text() == "SeaBIOS\n\ufffd iPXE\nztpd-agent: start\n"
    assert files.console_text(6) == "start\n"
