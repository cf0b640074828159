"""Installer files: what each method needs (as its boot.ipxe template loads them), what
`ztpd check` says is missing, and the Debian netboot installer taken from its real package."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from ztpd import images
from ztpd.errors import NotFound
from ztpd.images import installers
from ztpd.profiles.model import Os

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT_CACHE = ROOT / "images" / images.CACHE


def test_files_are_what_the_boot_templates_load() -> None:
    for method, names in installers.FILES.items():
        text = (ROOT / "boot-templates" / "install" / method / "boot.ipxe.j2").read_text()
        loaded = set(re.findall(r"\{\{ installer_url \}\}/([\w.-]+)", text))
        assert loaded == set(names), method


def _os(method: str, release: str | None = None, image: str | None = None) -> Os:
    return Os.model_validate({"method": method, "release": release, "image": image})


def test_problems_name_each_missing_file_its_profiles_and_how_to_get_it(tmp_path: Path) -> None:
    profiles = {
        "deb-a": _os("preseed", "debian-12"),
        "deb-b": _os("preseed", "debian-12"),
        "ubuntu": _os("autoinstall", "ubuntu-24.04"),
        "rocky": _os("kickstart", "rocky-9"),
        "imaged": _os("image", image="debian-12"),  # needs no installer
        "bare": None,
    }
    assert installers.needed(profiles) == [
        "installer ubuntu-24.04 (autoinstall) needs "
        "installers/ubuntu-24.04/{vmlinuz,initrd,installer.iso} for profiles ubuntu",
        "installer rocky-9 (kickstart) needs installers/rocky-9/{vmlinuz,initrd.img} "
        "for profiles rocky",
        "installer debian-12 (preseed) needs installers/debian-12/{linux,initrd.gz} "
        "for profiles deb-a, deb-b",
    ]
    found = installers.problems(tmp_path, profiles)
    assert len(found) == 2 + 3 + 2
    linux = [p for p in found if "'linux'" in p]
    assert linux and "debian-12 (preseed; profiles deb-a, deb-b)" in linux[0]
    assert "run `ztpd images fetch`" in linux[0]
    iso = [p for p in found if "'installer.iso'" in p]
    assert iso and "ubuntu-24.04" in iso[0] and "casper/vmlinuz" in iso[0]
    assert all("rocky-9" in p and "pxeboot" in p for p in found if "kickstart" in p)

    # Placed by hand: no manifest, present is enough. Fetched: the manifest's sha256 counts.
    rocky = installers.release_dir(tmp_path, "rocky-9")
    rocky.mkdir(parents=True)
    for name in installers.FILES["kickstart"]:
        (rocky / name).write_bytes(b"x")
    debian = installers.release_dir(tmp_path, "debian-12")
    debian.mkdir(parents=True)
    for name in installers.FILES["preseed"]:
        (debian / name).write_bytes(b"fetched")
    recorded = {n: {"sha256": images.sha256(debian / n)} for n in installers.FILES["preseed"]}
    (debian / images.MANIFEST).write_text(json.dumps({"files": recorded}))
    assert installers.problems(tmp_path, profiles) == [p for p in found if "ubuntu" in p]
    (debian / "initrd.gz").write_bytes(b"changed")
    changed = installers.problems(tmp_path, {"deb-a": profiles["deb-a"]})
    assert len(changed) == 1 and "does not match the sha256" in changed[0]


def test_fetch_refuses_a_release_no_package_carries(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="place its files by hand"):
        installers.fetch(tmp_path, ["ubuntu-24.04"])


@pytest.mark.slow
def test_fetch_takes_the_debian_netboot_installer_from_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apt-get download (about 130 MB) unless `ztpd images fetch` already cached the .deb in
    the checkout's images/cache/, which is then linked in so the test stays offline."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian)")
    package = installers.PACKAGES["debian-12"].name
    cached = images.cached_deb(CHECKOUT_CACHE, package) if CHECKOUT_CACHE.is_dir() else None
    if cached is not None:
        (tmp_path / images.CACHE).mkdir()
        try:
            os.link(cached, tmp_path / images.CACHE / cached.name)
        except OSError:  # another filesystem
            shutil.copy2(cached, tmp_path / images.CACHE / cached.name)
    first = installers.fetch(tmp_path)["debian-12"]
    out = installers.release_dir(tmp_path, "debian-12")
    manifest = json.loads((out / images.MANIFEST).read_text())
    assert manifest["package"] == package and manifest["version"] == first.version
    assert set(manifest["files"]) == {"linux", "initrd.gz"}
    for name, entry in manifest["files"].items():
        assert images.sha256(out / name) == entry["sha256"]
    assert (out / "linux").read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    with gzip.open(out / "initrd.gz") as f:
        assert f.read(6) in (b"070701", b"070702")  # a newc cpio archive
    assert installers.problems(tmp_path, {"deb": _os("preseed", "debian-12")}) == []

    # Again, offline: an apt-get that fails comes first on PATH; the cached .deb is enough.
    (out / "linux").unlink()
    offline = tmp_path / "offline-bin"
    offline.mkdir()
    (offline / "apt-get").write_text("#!/bin/sh\necho offline >&2\nexit 100\n")
    (offline / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{offline}:/usr/sbin:/usr/bin:/sbin:/bin")
    assert installers.fetch(tmp_path, ["debian-12"])["debian-12"] == first
