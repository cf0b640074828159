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

from tests.boot.test_vm import router_advertisements
from tests.daemon import REPO, write_config, ztpd_cmd
from tests.netns import Lan, Netns, wait_for
from ztpd.lab.vm import BIOS_NIC_ROM, VmFiles, VmSpec, missing_tools, prepare, qemu_argv

SERVER = "10.79.0.1"
PORT = 8080
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
    srv = lan.host("srv", f"{SERVER}/24")
    router_advertisements(srv)  # else iPXE waits ~15 s for IPv6 autoconfiguration
    (tmp / "profiles").mkdir()
    config = write_config(
        tmp / "ztpd.yaml",
        tmp,
        images_dir=str(images(tmp, discovery)),
        profiles_dir=str(tmp / "profiles"),
        http={"listen": [SERVER], "port": PORT, "auth": {"anonymous_read": True}},
        dhcp={
            "mode": "full",
            "interfaces": ["eth0"],
            "subnets": [
                {
                    "subnet": "10.79.0.0/24",
                    "pools": [{"start": "10.79.0.100", "end": "10.79.0.150"}],
                    "router": SERVER,
                }
            ],
        },
        boot={"discovery_args": args},
        **sections,
    )
    with (tmp / "ztpd.log").open("wb") as out:
        proc = srv.popen(ztpd_cmd("serve", "--config", str(config)), stdout=out, cwd=REPO)
    site = Site(lan, srv, tmp, proc)
    healthz = ["curl", "-sf", "--max-time", "2", f"http://{SERVER}:{PORT}/healthz"]
    wait_for(
        lambda: proc.poll() is not None or srv.run(healthz, check=False).returncode == 0,
        "ztpd to answer /healthz",
        timeout=60,
        step=0.2,
    )
    if proc.poll() is not None:
        raise AssertionError(f"ztpd exited {proc.returncode}:\n{site.log()}")
    try:
        yield site
    finally:
        srv.stop(proc)


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


def console(files: VmFiles) -> str:
    path = files.console
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no console)"
