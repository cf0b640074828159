"""End to end, image deploy: QEMU VMs (UEFI, TCG) PXE boot from a real ``ztpd serve`` (full
DHCP, TFTP, HTTP) on a LAN of network namespaces.

- Fast track: the discovery agent inspects the machine, the profile (``os.method: image``)
  matches, and the same agent, still polling, gets write-image: it streams the Debian image onto
  the disk ztpd chose (zeroing the image's range, then skipping its zero blocks) and writes the
  node's cloud-init seed; the machine boots its disk and cloud-init calls back: ``deployed``. A
  power cycle then boots the disk again (the local script); ``retire --wipe metadata`` runs
  through the agent and ends ``retired``. The disk is checked from the host. (Marker
  ``deploy``: `make e2e` only; the lab's e2e test in `make test` takes the same path.)
- Deploy mode: a node that is already matched when it PXE boots (as after a power cycle or a
  restart of ztpd) gets the image writer's boot script; its disk, full of old bytes, then holds
  the image byte for byte in the image's range (the root filesystem differs only by the seed)
  and still the old bytes after it. The image is a small one imported for the test (64 MiB:
  GPT, a partition of a byte pattern, an ext4 root): the bytes are the point, not a boot.

Bad input: an image whose registered sha256 is wrong (the small image again; the agent wipes
what it wrote and stays up; ``failed``), a disk smaller than the image and a profile whose
hints fit no disk (refused by ztpd before anything is written; ``failed`` with the reason)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon import serve_on_lan, ztpd_run
from tests.disks import assert_wiped, debugfs_cat, partition_table, raw_copy
from tests.netns import Lan, Netns, lan, require, wait_for
from ztpd.errors import IllegalTransition
from ztpd.identity import Identity
from ztpd.images import osimage
from ztpd.images.importer import import_image
from ztpd.inventory.schema import Inventory
from ztpd.lab.vm import OVMF_CODE, OVMF_VARS, QEMU, Shape, VmFiles, VmSpec, qemu_argv
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.model import Node
from ztpd.store import Nodes, Store

from .conftest import IMAGES, inventory

__all__ = ["lan"]

# The end-to-end test is `make e2e`'s only (the lab's e2e test in `make test` takes the same
# path, retire included); deploy mode and the bad-input tests are part of `make test`.
pytestmark = [pytest.mark.netns, pytest.mark.vm, pytest.mark.slow]

SERVER = "10.79.0.1"
SUBNET = "10.79.0.0/24"
# TCG on two shared cores: two discovery boots, a 1 GB write, OVMF trying the NIC's PXEv6 and
# HTTP entries before the disk (minutes), a Debian boot with cloud-init.
DEADLINE = 2100.0
REFUSED_DEADLINE = 600.0  # two discovery boots, nothing written
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2Zb6o1Xj3QX0bq1Vx3m9XG6Xo1m8k5G3o4xqz1K2P e2e@test"
CONSOLE = "console=ttyS0,115200n8"
SMALL = "small-1"  # a 64 MiB image: deploy mode checks its bytes, not a boot
BAD = "bad-12"  # the small image registered with a wrong sha256


def profile(name: str, serial: str, image: str, root_disk: dict[str, Any], priority: int) -> str:
    return yaml.safe_dump(
        {
            "name": name,
            "priority": priority,
            "match": [{"field": "system.serial", "op": "eq", "value": serial}],
            "os": {
                "method": "image",
                "image": image,
                "root_disk": root_disk,
                "hostname": "img-{{ boot.pxe_interface | replace(':', '') }}",
                "users": [{"name": "ops", "sudo": True, "ssh_keys": [KEY]}],
                "network": {"mode": "dhcp", "interface": "pxe"},
                "packages": [],  # the LAN has no way to a mirror
            },
        }
    )


# serial → (profile, image, root disk hints, disk size in MiB)
MACHINES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "ZTIMG0001": ("img-good", "debian-12", {"serial": "ZTIMG0001-D0"}, 4096),
    "ZTIMG0002": ("img-bad-sha", BAD, {"serial": "ZTIMG0002-D0"}, 2048),
    "ZTIMG0003": ("img-small-disk", "debian-12", {"serial": "ZTIMG0003-D0"}, 512),
    "ZTIMG0004": ("img-no-disk", "debian-12", {"serial": "NO-SUCH-DISK"}, 2048),
    "ZTIMG0005": ("img-deploy-mode", SMALL, {"serial": "ZTIMG0005-D0"}, 1024),
}
OLD = 0x5A  # what the deploy-mode machine's disk is full of before the write


def small_disk_image(path: Path) -> None:
    """A 64 MiB disk image: GPT, a 1 MiB partition full of a byte pattern, an ext4 root."""
    with path.open("wb") as f:
        f.truncate(64 << 20)
    layout = "label: gpt\n,1MiB,L\n,,L\n"
    subprocess.run(["sfdisk", "-q", str(path)], input=layout, text=True, check=True)
    first, root = partition_table(path)["partitions"]
    with path.open("r+b") as f:
        f.seek(first["start"] * 512)
        f.write(bytes(range(256)) * (first["size"] * 2))
    offset, kib = root["start"] * 512, root["size"] // 2
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", str(path), f"{kib}k"], check=True
    )


def register(images: Path, image: osimage.OsImage, tmp: Path) -> None:
    """The OS image under its own name (hard links: no copy of a gigabyte); a small disk image
    imported as an admin would, as ``SMALL``, and again as ``BAD``, whose manifest then gets a
    wrong sha256 for the file the agent streams: the agent writes it all, then finds out."""
    out = images / osimage.OS_DIR / image.name
    out.mkdir(parents=True)
    for name in (*(f.name for f in image.files), osimage.MANIFEST):
        os.link(IMAGES / osimage.OS_DIR / image.name / name, out / name)
    small = tmp / "small.raw"
    small_disk_image(small)
    import_image(images, small, SMALL)
    import_image(images, small, BAD)
    manifest = images / osimage.OS_DIR / BAD / osimage.MANIFEST
    doc = json.loads(manifest.read_text())
    doc["files"][f"{BAD}.raw.zst"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(doc))


@dataclass
class Site:
    ns: Netns
    lan: Lan
    dir: Path
    proc: subprocess.Popen[bytes]
    store: Store

    def log(self) -> str:
        return (self.dir / "ztpd.log").read_text(errors="replace")

    def node(self, serial: str) -> Node | None:
        row = self.store.query_one("SELECT id FROM nodes WHERE serial = ?", (serial,))
        return Nodes(self.store).get(int(row["id"])) if row else None

    def events(self, node_id: int, kind: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT id, cause, detail FROM events WHERE node_id = ? AND kind = ? ORDER BY id",
            (node_id, kind),
        )
        return [{"id": r["id"], "cause": r["cause"], **json.loads(r["detail"])} for r in rows]


@pytest.fixture
def site(lan: Lan, tmp_path: Path, image: osimage.OsImage, discovery_image: Path) -> Iterator[Site]:
    require(QEMU, "qemu-img", "dnsmasq", "sfdisk", "debugfs")
    if not (OVMF_CODE.is_file() and OVMF_VARS.is_file()):
        pytest.skip(f"needs OVMF: {OVMF_CODE} (apt-get install ovmf)")
    images = tmp_path / "images"
    (images / "discovery").mkdir(parents=True)
    for name in ("ipxe.efi", "snponly.efi"):
        if not (IMAGES / name).is_file():
            pytest.skip(f"needs the iPXE loaders: run `make images` ({name})")
        shutil.copyfile(IMAGES / name, images / name)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(discovery_image / name, images / "discovery" / name)
    register(images, image, tmp_path)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for priority, (serial, (name, img, hints, _)) in enumerate(MACHINES.items(), start=10):
        (profiles / f"{name}.yaml").write_text(profile(name, serial, img, hints, priority))
    with serve_on_lan(
        lan,
        tmp_path,
        SUBNET,
        images_dir=str(images),
        profiles_dir=str(profiles),
        boot={"discovery_args": "console=ttyS0,115200n8 ztpd.heartbeat=3 ztpd.lldp_wait=1"},
        lifecycle={"sweep_interval": 1},
        # Debian's (2019) ipxe.efi does not hand OVMF back its boot order on exit (it hangs or
        # resets); snponly.efi does, so the disk boots after it (and after OVMF's HTTP boot
        # entry, which gets the same loader).
        dhcp={"boot": {"files": {"uefi-x86_64": "snponly.efi", "uefi-x86_64-http": "snponly.efi"}}},
    ) as server:
        store = Store(tmp_path / "ztpd.db")
        try:
            yield Site(server.ns, lan, tmp_path, server.proc, store)
        finally:
            store.close()


@dataclass
class Vm:
    spec: VmSpec
    files: VmFiles
    proc: subprocess.Popen[bytes] | None = None

    def console(self) -> str:
        return self.files.console_text(4000)


def machine(site: Site, serial: str, index: int) -> Vm:
    """An empty disk of the machine's size, private UEFI variables, a tap on the LAN."""
    disk_mib = MACHINES[serial][3]
    spec = VmSpec(
        name=f"img{index}",
        index=index,
        firmware="uefi",
        shape=Shape("image-e2e", cpus=2, memory_mb=1024, disks_gb=(0,), nics=1),
        serial=serial,
        uuid=f"6d1f0000-0000-4000-8000-{index:012d}",
        macs=(f"52:54:00:79:00:{index:02x}",),
        taps=(f"tapimg{index}",),
    )
    files = VmFiles(site.dir / spec.name)
    files.dir.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(files.disk(0)), f"{disk_mib}M"],
        check=True,
    )
    shutil.copyfile(OVMF_VARS, files.vars)
    site.lan.tap(spec.taps[0])
    return Vm(spec, files)


def power_on(site: Site, vm: Vm, *extra: str) -> None:
    assert site.lan.switch is not None
    with vm.files.qemu_log.open("ab") as out:
        vm.proc = site.lan.switch.popen(
            [*qemu_argv(vm.spec, vm.files, "tcg"), *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def power_off(site: Site, vm: Vm) -> None:
    if vm.proc is not None and site.lan.switch is not None:
        site.lan.switch.stop(vm.proc)
        vm.proc = None


def wait_state(site: Site, vm: Vm, states: set[str], deadline: float) -> Node:
    def reached() -> Node | None:
        node = site.node(vm.spec.serial)
        if node is not None and node.state in states:
            return node
        if vm.proc is not None and vm.proc.poll() is not None:
            raise AssertionError(f"QEMU exited {vm.proc.returncode}:\n{vm.console()}")
        return None

    def seen() -> str:
        node = site.node(vm.spec.serial)
        state = (node.state, node.reason) if node else "no node"
        return f"node {state}; console:\n{vm.console()}"

    node = wait_for(
        reached, f"{vm.spec.serial} to be {states}", timeout=deadline, step=2, detail=seen
    )
    assert isinstance(node, Node)
    return node


def agent_log(site: Site, node_id: int) -> str:
    rows = site.store.query(
        "SELECT text FROM agent_logs WHERE node_id = ? ORDER BY ts, offset", (node_id,)
    )
    return "".join(r["text"] for r in rows)


def host_copy(vm: Vm) -> Path:
    """The VM's disk as a (sparse) raw file, for the host's tools."""
    return raw_copy(vm.files.disk(0), vm.files.dir / "disk.raw")


def boot_scripts(site: Site, node_id: int) -> list[str]:
    return [e["served"] for e in site.events(node_id, "boot") if e.get("asked") == "/ipxe"]


def to_deploying(site: Site, node_id: int) -> list[str]:
    rows = site.store.query(
        "SELECT cause FROM events WHERE node_id = ? AND kind = 'transition' "
        "AND to_state = 'deploying' ORDER BY id",
        (node_id,),
    )
    return [r["cause"] for r in rows]


@pytest.mark.deploy
def test_image_deploy_end_to_end(site: Site) -> None:
    vm = machine(site, "ZTIMG0001", 1)
    started = time.monotonic()
    power_on(site, vm)
    try:
        node = wait_state(site, vm, {"deployed", "failed"}, DEADLINE)
        assert node.state == "deployed", (node.reason, agent_log(site, node.id), vm.console())
        print(f"power-on to deployed: {time.monotonic() - started:.0f}s")
        hostname = "img-525400790001"
        assert node.hostname == hostname
        assert node.facts["ssh_host_keys"] and node.facts["installed_hostname"] == hostname
        assert node.facts["image_deploy"]["disk"] == "/dev/vda"
        assert node.facts["install_progress"]["stage"] == "written"

        # What was served, in order: discovery (whose agent wrote the image: the fast track),
        # then the disk (local; once per network boot entry OVMF tries before the disk).
        served = boot_scripts(site, node.id)
        assert served[:1] == ["discovery.ipxe.j2"], served
        assert set(served[1:]) == {"local.ipxe.j2"}, served
        assert to_deploying(site, node.id) == ["agent"]
        install = site.events(node.id, "install")
        progress = [e for e in install if e["cause"] == "progress"]
        assert any(0 < (e.get("percent") or 0) < 100 and e.get("rate") for e in progress)
        assert progress[-1]["stage"] == "written"
        log = agent_log(site, node.id)
        assert "mode=discover" in log and "zeroed /dev/vda" in log and "seed written" in log, log
        assert "/install/" not in log and "/install/" not in site.log()

        # A power cycle boots the disk again: the local script, and the node stays deployed.
        seen = len(served)
        power_off(site, vm)
        power_on(site, vm)

        def booted_again() -> bool:
            # GRUB's line from the disk (the image's kernel is quiet); the console is this boot's.
            text = vm.files.console_text()
            return len(boot_scripts(site, node.id)) > seen and osimage.GRUB_BOOTING in text

        wait_for(booted_again, "the second boot from disk", timeout=DEADLINE / 2, step=2)
        scripts = boot_scripts(site, node.id)
        assert set(scripts[seen:]) == {"local.ipxe.j2"}, scripts
        after = site.node("ZTIMG0001")
        assert after is not None and after.state == "deployed"
    finally:
        power_off(site, vm)

    # The disk, from the host: GPT, the root (last partition, grown on first boot), the seed.
    raw = host_copy(vm)
    table = partition_table(raw)
    assert table["label"] == "gpt"
    root = table["partitions"][-1]
    assert root["size"] * 512 > 2 * (1 << 30), root  # growpart took the 4 GiB disk
    offset = root["start"] * table.get("sectorsize", 512)
    seed = "/var/lib/cloud/seed/nocloud"
    assert f"local-hostname: {hostname}" in debugfs_cat(raw, offset, f"{seed}/meta-data")
    user_data = debugfs_cat(raw, offset, f"{seed}/user-data")
    assert user_data.startswith("#cloud-config") and KEY in user_data
    assert "/firstboot" in user_data
    assert "ethernets" in debugfs_cat(raw, offset, f"{seed}/network-config")

    # retire --wipe metadata: the next boot runs the agent, which erases every disk's tables
    # and signatures and reports; the node is retired and the agent powers the machine off.
    config = str(site.dir / "ztpd.yaml")
    retire = ztpd_run(
        "node", "retire", "ZTIMG0001", "--wipe", "metadata", "--config", config, timeout=120
    )
    assert retire.returncode == 0 and "-> retiring" in retire.stdout, retire.stderr
    power_on(site, vm)
    try:
        retired = wait_state(site, vm, {"retired", "failed"}, DEADLINE / 2)
        assert retired.state == "retired", (retired.reason, vm.console())
        wait_for(lambda: vm.proc is not None and vm.proc.poll() is not None, "the poweroff", 120)
    finally:
        power_off(site, vm)
    raw.unlink()
    assert_wiped(host_copy(vm))


def matched_node(site: Site, vm: Vm) -> int:
    """The machine as ztpd knows it after an inspection and a match whose agent is gone (power
    cycled, or ztpd restarted): matched to its profile, with its inventory."""
    mac, serial = vm.spec.macs[0], vm.spec.serial
    doc = inventory("qemu-vm").model_dump(mode="json", exclude_none=True)
    doc["disks"][0].update(serial=f"{serial}-D0", size_bytes=MACHINES[serial][3] << 20)
    doc["interfaces"][0]["mac"] = doc["boot"]["pxe_interface"] = mac
    doc["system"].update(serial=serial, uuid=vm.spec.uuid)
    data = Inventory.model_validate(doc).model_dump_json(exclude_none=True)
    lifecycle = Lifecycle(site.store, {"inspecting": 600, "deploying": 600, "configuring": 600})
    node = Nodes(site.store).observe(Identity.of([mac], vm.spec.uuid, serial), cause="test")
    with site.store.transaction() as conn:
        conn.execute(
            "INSERT INTO inventories (node_id, version, ts, source, data) "
            "VALUES (?, 1, 0, 'agent', ?)",
            (node.id, data),
        )
    lifecycle.fire(node.id, Trigger.INSPECT, cause="test")
    lifecycle.fire(node.id, Trigger.INSPECTED, cause="test")
    # ztpd's matcher may take the inspected node first (same profile, by the serial).
    with contextlib.suppress(IllegalTransition):
        lifecycle.fire(
            node.id, Trigger.MATCH, cause="test", profile=MACHINES[serial][0], expect="inspected"
        )
    # The host name ztpd's matcher renders from the profile (the seed needs one).
    Nodes(site.store).update_facts(node.id, {}, hostname=f"img-{mac.replace(':', '')}")
    assert Nodes(site.store).get(node.id).state == "matched"
    return node.id


def differing_blocks(disk: Path, image: Path, length: int, block: int = 4096) -> list[int]:
    """Offsets of the ``block``-sized blocks in [0, length) where the two files differ."""
    differ = []
    with disk.open("rb") as a, image.open("rb") as b:
        for chunk in range(0, length, 1 << 20):
            x, y = a.read(1 << 20), b.read(1 << 20)
            if x != y:
                differ += [
                    chunk + i
                    for i in range(0, len(y), block)
                    if x[i : i + block] != y[i : i + block]
                ]
    return differ


def test_deploy_mode_writes_the_image_byte_for_byte_over_old_bytes(site: Site) -> None:
    vm = machine(site, "ZTIMG0005", 5)
    size = MACHINES["ZTIMG0005"][3] << 20
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -q -P {OLD:#x} 0 {size}", str(vm.files.disk(0))],
        check=True,
        timeout=120,
    )
    node_id = matched_node(site, vm)
    started = time.monotonic()

    # The agent's reboot into the written disk ends QEMU (-no-reboot), so the disk is as the
    # agent left it. OVMF may reset once on a machine's first boot: that ends QEMU too, before
    # anything was written, and the machine is powered on again.
    def written() -> bool:
        node = Nodes(site.store).get(node_id)
        if vm.proc is None or vm.proc.poll() is None:
            return False
        if node.facts.get("install_progress", {}).get("stage") == "written":
            return True
        assert node.state == "matched", (node.state, node.reason, vm.console())
        power_on(site, vm, "-no-reboot")
        return False

    power_on(site, vm, "-no-reboot")
    try:
        wait_for(written, "the image written and the agent's reboot", timeout=DEADLINE / 2, step=2)
    finally:
        power_off(site, vm)
    node = Nodes(site.store).get(node_id)
    assert node.state == "deploying", (node.state, node.reason, vm.console())
    print(f"power-on to written: {time.monotonic() - started:.0f}s")
    assert boot_scripts(site, node_id) == ["install/image.ipxe.j2"]
    assert to_deploying(site, node_id) == ["boot"]
    log = agent_log(site, node_id)
    assert "mode=deploy" in log and "zeroed /dev/vda" in log and "seed written" in log, log

    # From the host: the image's range holds the image; only the root filesystem (the last
    # partition, where the seed went) differs, in a few blocks; after it the old bytes remain.
    name = MACHINES["ZTIMG0005"][1]
    raw_image = site.dir / "images" / osimage.OS_DIR / name / f"{name}.raw"  # as registered
    length = raw_image.stat().st_size
    raw = host_copy(vm)
    table = partition_table(raw_image)
    root = table["partitions"][-1]
    root_start = root["start"] * table.get("sectorsize", 512)
    differ = differing_blocks(raw, raw_image, length)
    assert all(root_start <= at < length for at in differ), differ[:10]
    assert len(differ) < 256, len(differ)  # the seed's files, inodes, bitmaps, journal: < 1 MiB
    with raw.open("rb") as f:
        for at in differ:
            f.seek(at)
            assert f.read(4096) != bytes([OLD]) * 4096, at  # zeroed or written, never left old
        f.seek(length)
        rest = f.read(size - length)
    assert rest == bytes([OLD]) * (size - length)  # only the image's range was zeroed
    seed = "/var/lib/cloud/seed/nocloud"
    assert "local-hostname: img-525400790005" in debugfs_cat(raw, root_start, f"{seed}/meta-data")


def test_a_wrong_sha256_wipes_what_was_written_and_does_not_reboot(site: Site) -> None:
    vm = machine(site, "ZTIMG0002", 2)
    power_on(site, vm)
    try:
        node = wait_state(site, vm, {"deployed", "failed"}, DEADLINE)
        assert node.reason is not None and node.failed_from == "deploying"
        assert node.reason.startswith("image write failed: sha256 mismatch"), node.reason
        # The agent stays up and says so; the machine was not rebooted into a bad disk.
        wait_for(lambda: "write-image failed" in agent_log(site, node.id), "the agent log", 60)
        assert boot_scripts(site, node.id) == ["discovery.ipxe.j2"]
        assert vm.proc is not None and vm.proc.poll() is None
    finally:
        power_off(site, vm)
    assert_wiped(host_copy(vm), tail=False)  # 64 MiB written to a 2 GiB disk: its end untouched


def test_images_that_cannot_fit_are_refused_before_anything_is_written(
    site: Site, image: osimage.OsImage
) -> None:
    small, nowhere = machine(site, "ZTIMG0003", 3), machine(site, "ZTIMG0004", 4)
    need = image.file(".raw").size
    why = [
        (small, f"536870912 bytes is less than min_size {need}"),
        (nowhere, "serial is 'ZTIMG0004-D0', not 'NO-SUCH-DISK'"),
    ]
    try:
        for vm, _ in why:
            power_on(site, vm)
        for vm, reason in why:
            node = wait_state(site, vm, {"failed"}, REFUSED_DEADLINE)
            assert node.reason is not None and node.failed_from == "deploying"
            assert node.reason.startswith(f"image deploy: image debian-12 needs {need} bytes")
            assert reason in node.reason, node.reason
            assert boot_scripts(site, node.id) == ["discovery.ipxe.j2"]
    finally:
        for vm, _ in why:
            power_off(site, vm)
    for vm, _ in why:  # nothing written: the disks read as the empty ones they were made as
        empty = vm.files.dir / "empty.qcow2"
        size = f"{MACHINES[vm.spec.serial][3]}M"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(empty), size], check=True)
        same = subprocess.run(["qemu-img", "compare", str(empty), str(vm.files.disk(0))])
        assert same.returncode == 0, vm.spec.serial
