"""Shared pieces: the shipped example profiles, each with a fixture machine it takes, and a
renderer over the real boot-templates/."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztpd.install.render import Mirrors, Renderer
from ztpd.inventory.schema import Inventory
from ztpd.profiles import load_profiles
from ztpd.profiles.model import Os

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "boot-templates"
INVENTORIES = ROOT / "tests" / "fixtures" / "inventories"
MIRRORS = Mirrors(
    {
        "debian": "http://deb.debian.org/debian",
        "ubuntu": "http://archive.ubuntu.com/ubuntu",
        "rocky": "http://dl.rockylinux.org/pub/rocky",
        "almalinux": "http://repo.almalinux.org/almalinux",
    }
)
# Every shipped profile that installs an OS, with a fixture machine it matches and the host
# name the profile gives that machine (tests/profiles checks the matching itself).
EXAMPLES = {
    "k3s-server": ("dell-r650", "k3s-7xk4q53"),
    "k3s-agent": ("dell-r650", "k3s-7xk4q53"),
    "storage-node": ("supermicro-storage", "stor-a01234"),
    "gpu-node": ("gpu-server", "gpu-j30012ab"),
    "kubeedge-edge": ("qemu-vm", "edge-525400123456"),
}
# The installer method each release family uses, for rendering every example with each.
METHODS = {"autoinstall": "ubuntu-24.04", "preseed": "debian-12", "kickstart": "rocky-9"}


def inventory(machine: str) -> Inventory:
    return Inventory.model_validate_json((INVENTORIES / f"{machine}.json").read_text())


def example_os(profile: str, method: str) -> Os:
    spec = load_profiles(ROOT / "profiles").get(profile).spec
    assert spec.os is not None
    return spec.os.model_copy(update={"method": method, "release": METHODS.get(method)})


@pytest.fixture(scope="session")
def renderer() -> Renderer:
    return Renderer(TEMPLATES, MIRRORS)
