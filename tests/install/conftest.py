"""Shared pieces: the shipped example profiles, each with a fixture machine it takes, and a
renderer over the real boot-templates/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ztpd.images import osimage
from ztpd.install.render import Mirrors, Renderer
from ztpd.inventory.schema import Inventory
from ztpd.profiles import load_profiles
from ztpd.profiles.model import Os

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "boot-templates"
INVENTORIES = ROOT / "tests" / "fixtures" / "inventories"
IMAGES = ROOT / "images"
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


@pytest.fixture(scope="session")
def image() -> osimage.OsImage:
    """The real image, built once (minutes) or reused; CI always has what it needs."""
    missing = [
        t
        for t in ("debootstrap", "mkfs.vfat", "mcopy", "grub-mkstandalone", "sfdisk")
        if shutil.which(t) is None
    ]
    if os.geteuid() != 0 or missing:
        have = osimage.cached(IMAGES, "debian-12")
        if have is not None:
            return have
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the OS image: root={os.geteuid() == 0} missing={missing}")
        pytest.skip(f"needs root and {', '.join(missing) or 'nothing else'}: run `make os-image`")
    return osimage.build(IMAGES, "debian-12")
