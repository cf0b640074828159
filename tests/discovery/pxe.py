"""A PXE site for discovery VMs: the real ``ztpd serve`` (DHCP full mode, HTTP boot, agent
endpoints) in the server namespace of a test LAN, and QEMU VMs (ztpd.lab.vm's command line) on
the LAN's bridge that boot from it through their NIC's iPXE ROM. Shared by tests/discovery/
test_pxe.py and bench/discovery_boot.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon import LAN_HTTP_PORT, REPO, serve_on_lan
from tests.netns import Lan, Netns
from ztpd.lab.vm import BIOS_NIC_ROM, VmFiles, VmSpec, missing_tools, prepare, qemu_argv

SUBNET = "10.79.0.0/24"
SERVER = "10.79.0.1"
PORT = LAN_HTTP_PORT
LOADERS = ("undionly.kpxe", "ipxe.efi", "snponly.efi")
# What ztpd's boot script adds for discovery VMs: the serial console (quiet: TCG makes every
# console line slow) and a heartbeat short enough for the silence tests.
DISCOVERY_ARGS = "console=ttyS0,115200n8 quiet ztpd.heartbeat=2"


def missing() -> list[str]:
    """What this host lacks for a PXE site, each naming its Debian package."""
    problems = missing_tools(["bios"])
    for tool, package in (("curl", "curl"), ("dnsmasq", "dnsmasq-base")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} (apt-get install {package})")
    if not any(loader_source(n) for n in LOADERS):
        problems.append("the iPXE loaders (make images, or apt-get install ipxe)")
    return problems


def loader_source(name: str) -> Path | None:
    for src in (REPO / "images" / name, Path("/usr/lib/ipxe") / name):
        if src.is_file():
            return src
    return None


@dataclass
class Site:
    lan: Lan
    srv: Netns
    state: Path
    proc: subprocess.Popen[bytes]

    def api(self, path: str) -> Any:
        """GET an API path from inside the server's namespace (the caller runs outside it)."""
        done = self.srv.run(
            ["curl", "-sS", "--max-time", "10", f"http://{SERVER}:{PORT}{path}"], check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"curl {path}: {done.stderr.strip()}")
        return json.loads(done.stdout)

    def node(self, mac: str) -> dict[str, Any]:
        """The node that owns ``mac``; {} before the VM's first DHCP request made one."""
        found = self.api(f"/api/v1/nodes/{mac}")
        return found if "state" in found else {}

    def log(self) -> str:
        return (self.state / "ztpd.log").read_text(errors="replace")[-4000:]


def images(tmp: Path, discovery: Path) -> Path:
    """ztpd's images dir: the iPXE loaders and a copy of a built discovery image."""
    root = tmp / "images"
    (root / "discovery").mkdir(parents=True)
    for name in LOADERS:
        src = loader_source(name)
        if src is not None:
            shutil.copyfile(src, root / name)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(discovery / name, root / "discovery" / name)
    return root


@contextmanager
def serve(
    lan: Lan, tmp: Path, discovery: Path, args: str = DISCOVERY_ARGS, **sections: Any
) -> Iterator[Site]:
    """``ztpd serve`` in ``lan``'s new server namespace, an empty profiles directory (a node
    ends ``unmatched``: no install starts), ``args`` on the discovery kernel's command line;
    ``sections`` override config sections."""
    (tmp / "profiles").mkdir()
    with serve_on_lan(
        lan,
        tmp,
        SUBNET,
        images_dir=str(images(tmp, discovery)),
        profiles_dir=str(tmp / "profiles"),
        http={"auth": {"anonymous_read": True}},
        boot={"discovery_args": args},
        **sections,
    ) as server:
        yield Site(lan, server.ns, tmp, server.proc)


def start_vm(
    lan: Lan, spec: VmSpec, files: VmFiles, *, bmc: str | None = None
) -> subprocess.Popen[bytes]:
    """QEMU (TCG) on new taps of the LAN's bridge; BIOS, so the e1000's iPXE ROM boots it."""
    assert spec.firmware == "bios" and BIOS_NIC_ROM.is_file()
    switch = lan.switch
    assert switch is not None
    for tap in spec.taps:
        lan.tap(tap)
    prepare(spec, files)
    with files.qemu_log.open("wb") as out:
        return switch.popen(qemu_argv(spec, files, "tcg", bmc=bmc), stdout=out)
