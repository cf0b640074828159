"""The built Debian image boots (QEMU, TCG; UEFI with OVMF, BIOS with SeaBIOS) with a NoCloud
seed that ztpd's install endpoint served for it, and its first boot calls back: the node becomes
deployed with the image's SSH host key. The guest's network is QEMU's restricted user network:
it reaches nothing but ztpd on this host's loopback (one forwarded address)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from ztpd.config import HttpConfig
from ztpd.http.install import Install, add_install_routes
from ztpd.http.server import HttpService, make_app
from ztpd.identity import Identity
from ztpd.images import osimage
from ztpd.install.backend import StoreInstallBackend
from ztpd.install.render import Renderer
from ztpd.lab.vm import OVMF_CODE, OVMF_VARS, QEMU, Firmware, VmFiles
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.profiles.model import Os
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

from ..boot.conftest import free_tcp_port
from .conftest import IMAGES, MIRRORS, TEMPLATES, example_os

GUEST_ZTPD = "10.0.2.100"  # the address the guest reaches ztpd at (QEMU guestfwd)
MAC = "52:54:00:7a:00:01"
DEADLINE = 900  # seconds: a Debian boot with cloud-init under TCG on a shared, busy host


def _missing(firmware: Firmware) -> list[str]:
    tools = [QEMU, "qemu-img", "busybox", "mkfs.vfat", "mcopy"]
    gone = [t for t in tools if shutil.which(t) is None]
    ovmf = (OVMF_CODE, OVMF_VARS) if firmware == "uefi" else ()
    return gone + [str(p) for p in ovmf if not p.is_file()]


def _machine(tmp_path: Path, seed: Path, raw: Path, port: int, firmware: Firmware) -> list[str]:
    """A CIDATA volume with the seed, a 4 GiB overlay on the image (it grows on first boot),
    private UEFI variables (QEMU's default SeaBIOS for BIOS); the QEMU command line."""
    cidata = tmp_path / "cidata.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-n", "CIDATA", str(cidata), "2048"], check=True, capture_output=True
    )
    for f in sorted(seed.iterdir()):
        subprocess.run(
            ["mcopy", "-i", str(cidata), str(f), f"::/{f.name}"],
            check=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        )
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(disk), "4G"],
        check=True,
    )
    pflash: list[str] = []
    if firmware == "uefi":
        shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
        pflash = [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={tmp_path / 'vars.fd'}",
        ]  # fmt: skip
    return [
        QEMU, "-accel", "tcg", "-machine", "q35", "-smp", "2", "-m", "1024",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", f"file:{VmFiles(tmp_path).console}",
        *pflash,
        "-drive", f"if=virtio,format=qcow2,file={disk}",
        "-drive", f"if=virtio,format=raw,file={cidata}",
        # restrict=on: no way out but the one forward to ztpd, one nc per connection.
        "-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_ZTPD}:80-"
                   f"cmd:busybox nc 127.0.0.1 {port}",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile=",
    ]  # fmt: skip


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.deploy  # the lab's e2e test (make test) boots this image with both firmwares too
@pytest.mark.parametrize("firmware", ["uefi", "bios"])
async def test_image_boots_and_calls_back(
    image: osimage.OsImage, tmp_path: Path, firmware: Firmware
) -> None:
    if _missing(firmware):
        pytest.skip(f"needs {', '.join(_missing(firmware))} (make apt)")
    store = Store(tmp_path / "ztpd.db")
    lifecycle = Lifecycle(store, {"inspecting": 900, "deploying": 3600, "configuring": 3600})
    tokens = Tokens(store)
    # No packages: the guest has no way to a mirror, and needs none to boot and call back.
    os_ = Os.model_validate(
        {**example_os("kubeedge-edge", "image").model_dump(), "packages": [], "release": None}
    )
    nodes = Nodes(store)
    node = nodes.observe(Identity.of([MAC], None, None), cause="test")
    nodes.update_facts(node.id, {}, hostname="edge-image")
    for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
        lifecycle.fire(node.id, trigger, cause="test")
    lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile="edge")
    lifecycle.fire(node.id, Trigger.DEPLOY, cause="test")
    token = tokens.issue(node.id, "install", 3600)

    port = free_tcp_port()
    http = HttpConfig(listen=["127.0.0.1"], port=port, public_url=f"http://{GUEST_ZTPD}")
    app = make_app(http)
    backend = StoreInstallBackend(lifecycle, tokens, {"edge": os_}.get)
    add_install_routes(app, Install(http.base_url, Renderer(TEMPLATES, MIRRORS), backend))
    seed = tmp_path / "seed"
    seed.mkdir()
    async with HttpService(http, app), aiohttp.ClientSession() as session:
        # What the agent does for method image: fetch the seed files with the install token.
        for name in ("user-data", "meta-data", "network-config"):
            async with session.get(
                f"http://127.0.0.1:{port}/install/{node.id}/{token}/{name}"
            ) as r:
                assert r.status == 200, await r.text()
                (seed / name).write_bytes(await r.read())
        raw = IMAGES / "os" / "debian-12" / image.file(".raw").name
        argv = await asyncio.to_thread(_machine, tmp_path, seed, raw, port, firmware)
        qemu = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            start = time.monotonic()
            while time.monotonic() - start < DEADLINE:
                state = (await asyncio.to_thread(nodes.get, node.id)).state
                if state != "deploying" or qemu.returncode is not None:
                    break
                await asyncio.sleep(2)
            done = await asyncio.to_thread(nodes.get, node.id)
            tail = VmFiles(tmp_path).console_text(3000)
            assert done.state == "deployed", f"state {done.state}; console:\n{tail}"
            keys = done.facts["ssh_host_keys"]
            assert keys and all(k.startswith(("ssh-", "ecdsa-")) for k in keys)
            events = store.query(
                "SELECT cause, detail FROM events WHERE node_id = ? AND kind = 'install'",
                (node.id,),
            )
            assert token not in json.dumps(events)
        finally:
            if qemu.returncode is None:
                qemu.kill()
            await asyncio.wait_for(qemu.wait(), 30)
    store.close()
