"""The Debian disk image for ``os.method: image``: the mirror it is built from, its cache, and
(built lazily once per run, or reused from images/) its layout and contents."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ztpd.errors import NotFound, ZtpdError
from ztpd.images import osimage, sha256

from .conftest import IMAGES


def test_mirror_comes_from_apt_sources_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://one-line.example/debian/ bullseye main contrib\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb822.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert osimage.apt_mirror("bookworm", tmp_path) == "http://deb822.example/debian"
    assert osimage.apt_mirror("bullseye", tmp_path) == "http://one-line.example/debian"
    with pytest.raises(ZtpdError, match="no apt source for trixie main"):
        osimage.apt_mirror("trixie", tmp_path)


def test_unknown_recipe_and_fingerprints(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no image recipe 'plan9'"):
        osimage.build(tmp_path, "plan9", mirror="http://x/debian")
    recipe = osimage.RECIPES["debian-12"]
    assert recipe.fingerprint("http://a/debian") != recipe.fingerprint("http://b/debian")


def test_cached_needs_every_file_at_its_recorded_size(tmp_path: Path) -> None:
    out = tmp_path / "os" / "debian-12"
    out.mkdir(parents=True)
    (out / "debian-12.raw").write_bytes(b"x" * 10)
    image = osimage.OsImage(
        "debian-12",
        "f",
        "http://m",
        "bookworm",
        "u",
        (osimage.ImageFile("debian-12.raw", "00", 10),),
    )
    (out / "manifest.json").write_text(json.dumps(image.to_dict()))
    assert osimage.cached(tmp_path, "debian-12") == image
    (out / "debian-12.raw").write_bytes(b"x" * 11)
    assert osimage.cached(tmp_path, "debian-12") is None
    (out / "manifest.json").write_text("{")
    assert osimage.cached(tmp_path, "debian-12") is None


def _parts(raw: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    parts: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


@pytest.mark.slow
def test_image_layout_and_manifest(image: osimage.OsImage) -> None:
    out = IMAGES / "os" / "debian-12"
    raw, zst = image.file(".raw"), image.file(".raw.zst")
    assert raw.size < 1 << 30, "the raw image should stay under 1 GiB"
    assert zst.size < raw.size
    assert sha256(out / zst.name) == zst.sha256
    parts = _parts(out / raw.name)
    assert [p["type"] for p in parts] == [osimage.BIOS_BOOT, osimage.ESP, osimage.LINUX]
    last = parts[-1]
    end = (int(last["start"]) + int(last["size"])) * 512  # type: ignore[call-overload]
    assert end <= raw.size and raw.size - end < 2 << 20  # the root is last: it can grow
    # The ESP holds the UEFI loader (read with mtools at the partition's offset).
    esp = f"{out / raw.name}@@{int(parts[1]['start']) * 512}"  # type: ignore[call-overload]
    listing = subprocess.run(
        ["mdir", "-b", "-i", esp, "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert "BOOTX64.EFI" in listing.stdout


@pytest.mark.slow
def test_image_root_filesystem_is_generic(image: osimage.OsImage, tmp_path: Path) -> None:
    raw = IMAGES / "os" / "debian-12" / image.file(".raw").name
    root = _parts(raw)[-1]
    offset = int(root["start"]) * 512  # type: ignore[call-overload]

    def debugfs(request: str) -> str:
        done = subprocess.run(
            ["debugfs", "-R", request, f"{raw}?offset={offset}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    assert f"UUID={image.root_uuid}\t/\text4" in debugfs("cat /etc/fstab")
    assert "NoCloud" in debugfs("cat /etc/cloud/cloud.cfg.d/90-ztpd.cfg")
    assert "ssh_host_" not in debugfs("ls -l /etc/ssh")  # every node makes its own
    assert debugfs("cat /etc/machine-id") == ""
    assert "vmlinuz" in debugfs("ls -l /")
    assert f"--fs-uuid {image.root_uuid}" in debugfs("cat /boot/grub/grub.cfg")
