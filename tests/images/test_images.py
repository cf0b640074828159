"""The boot-file build step against the real Debian package (apt-get download + dpkg -x)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ztpd import images

CHECKOUT_CACHE = Path(__file__).resolve().parents[2] / "images" / images.CACHE


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """A fresh images dir whose cache holds the checkout's .deb when `make images` ran, so the
    test stays offline; otherwise fetch() downloads it like an operator's first run."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian)")
    cached = images.cached_deb(CHECKOUT_CACHE) if CHECKOUT_CACHE.is_dir() else None
    if cached is not None:
        (tmp_path / images.CACHE).mkdir()
        shutil.copy2(cached, tmp_path / images.CACHE / cached.name)
    return tmp_path


def test_fetch_writes_loaders_and_manifest_and_reruns_offline(
    images_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = images.fetch(images_dir)
    assert set(first.files) == {"undionly.kpxe", "ipxe.efi", "snponly.efi"}
    manifest = json.loads((images_dir / images.MANIFEST).read_text())
    assert manifest["package"] == "ipxe" and manifest["version"] == first.version
    for name, entry in manifest["files"].items():
        assert images.sha256(images_dir / name) == entry["sha256"]
        assert (images_dir / name).stat().st_size == entry["size"] > 10_000
    # The same bytes as the installed package's files (same Debian version on this machine).
    system = Path("/usr/lib/ipxe/undionly.kpxe")
    if system.is_file():
        assert (images_dir / "undionly.kpxe").read_bytes() == system.read_bytes()

    (images_dir / "ipxe.efi").unlink()
    # Offline: an apt-get that fails comes first on PATH; the cached .deb must be enough.
    offline = images_dir / "offline-bin"
    offline.mkdir()
    (offline / "apt-get").write_text("#!/bin/sh\necho offline >&2\nexit 100\n")
    (offline / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{offline}:/usr/sbin:/usr/bin:/sbin:/bin")
    second = images.fetch(images_dir)
    assert second == first
    assert len(list((images_dir / images.CACHE).glob("*.deb"))) == 1


def test_missing_reports_absent_escaping_and_changed_files(images_dir: Path) -> None:
    images.fetch(images_dir)
    assert images.missing(images_dir, ["undionly.kpxe", "ipxe.efi"]) == []
    (images_dir / "snponly.efi").write_bytes(b"not the loader")
    problems = images.missing(
        images_dir, ["snponly.efi", "arm64/ipxe.efi", "../etc/passwd", "/etc/passwd"]
    )
    assert len(problems) == 4
    assert "does not match the sha256" in problems[0]
    assert "'arm64/ipxe.efi' is missing" in problems[1]
    assert "not inside" in problems[2] and "not inside" in problems[3]
