"""Boot files: the iPXE loaders taken from Debian's ``ipxe`` package, and their manifest.

``fetch`` downloads the package once into ``<images>/cache/`` (``apt-get download``), unpacks it
with ``dpkg -x`` and copies the loaders into the images directory, recording each file's sha256
and the package version in ``manifest.json``. A second run reuses the cached ``.deb``, so it
works offline. Debian's ``ipxe`` package is ``Architecture: all`` but carries x86 builds only:
there is no arm64 ``ipxe.efi`` to take from it.

``missing`` is what ``ztpd check`` uses to report configured boot files that are not there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ztpd.errors import ZtpdError

log = logging.getLogger("ztpd.images")

PACKAGE = "ipxe"
MANIFEST = "manifest.json"
CACHE = "cache"
# Loader name in images/ → its path inside the package (usr/lib/ipxe/ipxe.efi is a symlink to
# /boot/ipxe.efi, which would point outside the unpacked tree, so the real file is named).
LOADERS: dict[str, str] = {
    "undionly.kpxe": "usr/lib/ipxe/undionly.kpxe",
    "ipxe.efi": "boot/ipxe.efi",
    "snponly.efi": "usr/lib/ipxe/snponly.efi",
}


@dataclass(frozen=True)
class Manifest:
    package: str
    version: str
    deb: str
    files: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version": self.version,
            "deb": self.deb,
            "files": self.files,
        }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(
    argv: list[str],
    *,
    what: str = "images",
    cwd: Path | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> str:
    """Run a build tool (``env`` adds to the environment, ``input`` is its stdin); its failure
    becomes a ZtpdError naming ``what``, the command and the end of what the tool said."""
    log.debug("%s run argv=%s", what, " ".join(argv))
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env={**os.environ, **env} if env else None,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ZtpdError(f"{what}: {argv[0]} failed: {e}") from None
    if done.returncode != 0:
        # Long command lines (debootstrap's package lists) are cut to their first words.
        shown = " ".join(argv) if len(argv) <= 6 else " ".join(argv[:3]) + " ..."
        tail = (done.stderr.strip() or done.stdout.strip())[-800:]
        raise ZtpdError(f"{what}: {shown} exited {done.returncode}: {tail}")
    return done.stdout


def cached_deb(cache: Path, package: str = PACKAGE) -> Path | None:
    """The newest cached ``<package>_*.deb``, if any."""
    debs = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    return debs[-1] if debs else None


def download(cache: Path, package: str, *, refresh: bool = False) -> Path:
    """``package``'s .deb in ``cache``: the cached one, or ``apt-get download`` it."""
    cache.mkdir(parents=True, exist_ok=True)
    deb = None if refresh else cached_deb(cache, package)
    if deb is not None:
        log.info("images reuse deb=%s", deb)
        return deb
    log.info("images download package=%s cache=%s", package, cache)
    run(["apt-get", "download", package], cwd=cache, timeout=1800)
    deb = cached_deb(cache, package)
    if deb is None:
        raise ZtpdError(f"images: apt-get download {package} left no .deb in {cache}")
    return deb


def unpack(deb: Path, files: dict[str, str], dest: Path) -> Manifest:
    """Copy ``files`` (name in ``dest`` → path inside ``deb``) into ``dest`` and write its
    manifest: the package, its version and each file's sha256 and size."""
    package = run(["dpkg-deb", "--field", str(deb), "Package"]).strip()
    version = run(["dpkg-deb", "--field", str(deb), "Version"]).strip()
    dest.mkdir(parents=True, exist_ok=True)
    recorded: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ztpd-deb-") as tmp:
        run(["dpkg", "-x", str(deb), tmp], timeout=900)
        for name, inside in files.items():
            src = Path(tmp) / inside
            if not src.is_file() or src.is_symlink():
                raise ZtpdError(f"images: {deb.name} has no regular file {inside}")
            # Copy beside the target and rename, so a transfer never reads a partial file.
            part = dest / f".{name}.part"
            shutil.copyfile(src, part)
            os.replace(part, dest / name)
            recorded[name] = {
                "sha256": sha256(dest / name),
                "size": (dest / name).stat().st_size,
                "from": inside,
            }
    manifest = Manifest(package, version, deb.name, recorded)
    part = dest / f".{MANIFEST}.part"
    part.write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(part, dest / MANIFEST)
    log.info("images ready package=%s version=%s files=%s", package, version, ",".join(files))
    return manifest


def fetch(images_dir: Path, *, refresh: bool = False) -> Manifest:
    """Put the loaders into ``images_dir`` and write the manifest (download only when needed)."""
    deb = download(images_dir / CACHE, PACKAGE, refresh=refresh)
    return unpack(deb, LOADERS, images_dir)


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts


def missing(
    images_dir: Path, names: Iterable[str], hint: str = "run `ztpd images fetch` or `make images`"
) -> list[str]:
    """Problems, one per configured boot file that is not a regular file inside ``images_dir``
    (``hint`` says how to get it).

    Also checks a file against the manifest's sha256 when the manifest lists it, so a loader
    that was replaced or truncated is reported too.
    """
    problems: list[str] = []
    recorded: dict[str, Any] = {}
    manifest = images_dir / MANIFEST
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text()).get("files", {})
        except (ValueError, AttributeError, OSError) as e:
            problems.append(f"{manifest}: unreadable manifest: {e}")
    root = images_dir.resolve()
    for name in dict.fromkeys(names):
        path = images_dir / name
        if not _safe_relative(name) or not path.resolve().is_relative_to(root):
            problems.append(f"boot file {name!r} is not inside {images_dir}")
        elif not path.is_file():
            problems.append(f"boot file {name!r} is missing from {images_dir} ({hint})")
        elif name in recorded and sha256(path) != recorded[name].get("sha256"):
            problems.append(
                f"boot file {name!r} in {images_dir} does not match the sha256 in "
                f"{MANIFEST} ({hint})"
            )
    return problems
