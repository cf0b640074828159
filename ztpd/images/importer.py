"""Register a disk image made elsewhere: ``ztpd images import FILE --name NAME``.

In: a raw disk image, or one compressed with gzip or zstd, or a qcow2. Out: what
``make os-image`` leaves for a built image, so image deploy (``ztpd.install.deploy``) offers it
the same way::

    <images>/os/<name>/<name>.raw       the disk image (its size is what a node's disk must hold)
    <images>/os/<name>/<name>.raw.zst   what the agent streams
    <images>/os/<name>/manifest.json    sha256 and size of both (``osimage.write_manifest``)

The format comes from the file's first bytes, not its name. A qcow2 is converted the way
Ironic's agent does it: ``qemu-img info`` first, under ``prlimit`` (a crafted header must not
eat the machine's memory or CPU), then ``qemu-img convert -f qcow2 -O raw`` with the format
named, never probed. A qcow2 with a backing file or an external data file is refused: converting
it would read other files of this machine into the image. Whatever the input, the raw result
must hold a partition table (``sfdisk`` reads it) whose partitions lie inside the image, or it
is not a disk image a node can boot.

Idempotent: the manifest's fingerprint is ``import:<sha256 of the file imported>``; importing
that file under that name again returns the registration without work. A different file under
a registered name is refused unless ``replace``: a node may be writing the old one right now.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ztpd.errors import BadRequest, Conflict, ZtpdError
from ztpd.images import osimage, paths, run, sha256

log = logging.getLogger("ztpd.images.importer")

FORMATS = ("raw", "raw.gz", "raw.zst", "qcow2")
# First bytes of each format but raw (which has none of its own).
MAGIC = ((b"QFI\xfb", "qcow2"), (b"\x1f\x8b", "raw.gz"), (b"\x28\xb5\x2f\xfd", "raw.zst"))
# Ironic's limits for qemu-img on an untrusted image: 1 GiB of address space, 30 s of CPU.
QEMU_IMG_LIMITS = ("prlimit", f"--as={1 << 30}", "--cpu=30")
# Directories of <images>/os/ that are not images (osimage's package cache).
RESERVED = frozenset({"cache"})
SECTOR = 512
TIMEOUT = 3600  # converting or compressing a big image


def sniff(path: Path) -> str | None:
    """The format the first bytes say (None: no magic, possibly raw)."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((fmt for magic, fmt in MAGIC if head.startswith(magic)), None)


def qemu_info(path: Path, fmt: str | None) -> dict[str, Any]:
    """``qemu-img info`` as JSON, with the format named when known (else qemu-img probes)."""
    named = ("-f", fmt) if fmt else ()
    out = run(
        [*QEMU_IMG_LIMITS, "qemu-img", "info", "--output=json", *named, str(path)],
        what=f"images import: {path.name}",
        timeout=60,
    )
    info: dict[str, Any] = json.loads(out)
    return info


def check_qcow2(path: Path) -> None:
    """Refuse a qcow2 that would read other files, or that qemu-img finds damaged."""
    info = qemu_info(path, "qcow2")
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        raise BadRequest(
            f"images import: {path.name} is a qcow2 with a backing file ({backing}): "
            "flatten it first (qemu-img convert -O qcow2 without -B)"
        )
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        raise BadRequest(
            f"images import: {path.name} is a qcow2 with an external data file "
            f"({specific['data-file']}): refused"
        )
    if specific.get("corrupt"):
        raise BadRequest(f"images import: {path.name} is a qcow2 marked corrupt")
    run(
        [*QEMU_IMG_LIMITS, "qemu-img", "check", "-f", "qcow2", str(path)],
        what=f"images import: {path.name} is a damaged qcow2",
        timeout=TIMEOUT,
    )


def check_disk(raw: Path, source: str) -> None:
    """A raw image a node can boot: whole sectors and a partition table that fits inside."""
    size = raw.stat().st_size
    if size == 0 or size % SECTOR:
        raise BadRequest(
            f"images import: {source} is not a disk image ({size} bytes: not whole sectors)"
        )
    try:
        table = json.loads(run(["sfdisk", "--json", str(raw)], what="sfdisk", timeout=60))
    except ZtpdError as e:
        raise BadRequest(
            f"images import: {source} is not a disk image (no partition table: {e.message})"
        ) from None
    parts = table.get("partitiontable", {}).get("partitions", [])
    if not parts:
        raise BadRequest(f"images import: {source} has a partition table with no partition")
    if [p.get("type") for p in parts] == ["ee"]:
        # sfdisk falls back to the protective MBR when neither GPT header reads back.
        raise BadRequest(
            f"images import: {source} is damaged or truncated: a GPT disk whose GPT is unreadable"
        )
    sectors = size // SECTOR
    for p in parts:
        if int(p["start"]) + int(p["size"]) > sectors:
            raise BadRequest(
                f"images import: {source} is damaged or truncated: partition {p['node']} ends "
                f"at sector {int(p['start']) + int(p['size'])}, the image has {sectors}"
            )


def _to_raw(src: Path, fmt: str | None, raw: Path) -> str:
    """Write ``src`` as a raw image to ``raw``; returns the format it was."""
    what = f"images import: {src.name}"
    if fmt == "qcow2":
        check_qcow2(src)
        run(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(raw)],
            what=what,
            timeout=TIMEOUT,
        )
    elif fmt in ("raw.gz", "raw.zst"):  # zstd reads gzip too
        run(["zstd", "-d", "-q", "-f", str(src), "-o", str(raw)], what=what, timeout=TIMEOUT)
    else:
        probed = qemu_info(src, None).get("format")
        if probed != "raw":
            raise BadRequest(
                f"images import: {src.name} is {probed}, an unknown format here "
                f"(ztpd imports {', '.join(FORMATS)}): convert it with qemu-img convert -O raw"
            )
        fmt = "raw"
        shutil.copyfile(src, raw)
    return fmt


def import_image(
    images_dir: Path, src: Path, name: str, *, replace: bool = False
) -> osimage.OsImage:
    """Register ``src`` as image ``name`` (see the module docstring); returns its manifest."""
    problem = paths.component_problem(name, RESERVED)
    if problem is not None:
        raise BadRequest(f"images import: --name {problem}")
    if not src.is_file():
        raise BadRequest(f"images import: {src} is not a regular file")
    fingerprint = f"import:{sha256(src)}"
    have = osimage.cached(images_dir, name)
    if have is not None and have.fingerprint == fingerprint:
        log.info("image import reuse name=%s fingerprint=%s", name, fingerprint)
        return have
    if have is not None and not replace:
        raise Conflict(
            f"images import: image {name} is already registered with other content "
            f"({have.fingerprint}); pass --replace to overwrite it (no node may be deploying it)"
        )
    out = images_dir / osimage.OS_DIR / name
    work = images_dir / osimage.OS_DIR / f".import-{name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        raw = work / f"{name}.raw"
        fmt = _to_raw(src, sniff(src), raw)
        check_disk(raw, f"{src.name} ({fmt})")
        run(
            ["zstd", "-q", "-f", "-T0", "-6", str(raw), "-o", f"{raw}.zst"],
            what="images import",
            timeout=TIMEOUT,
        )
        out.mkdir(parents=True, exist_ok=True)
        # Unregistered while its files change: a node asking meanwhile is told it is missing,
        # never handed a file that does not match the manifest.
        (out / osimage.MANIFEST).unlink(missing_ok=True)
        files = []
        for path in (raw, Path(f"{raw}.zst")):
            dest = out / path.name
            os.replace(path, dest)
            files.append(osimage.ImageFile(dest.name, sha256(dest), dest.stat().st_size))
        image = osimage.OsImage(name, fingerprint, "", "", "", tuple(files))
        osimage.write_manifest(out, image)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "image import ready name=%s from=%s format=%s raw_bytes=%s",
        name,
        src.name,
        fmt,
        image.file(".raw").size,
    )
    return image
