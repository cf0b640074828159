"""Which disk the OS goes on: a profile's ``os.root_disk`` hints applied to the inventory.

Pure and deterministic. The hints narrow the candidates (a disk any hint rules out is never
chosen); ``prefer`` picks among what is left; a tie goes to the lowest kernel name. No fitting
disk is ``NotFound`` with every disk and why it was ruled out, so the operator sees the reason
on the node instead of a half-installed machine.
"""

from __future__ import annotations

from collections.abc import Sequence

from ztpd.errors import NotFound
from ztpd.inventory.schema import Disk
from ztpd.profiles.model import RootDisk


def _ruled_out(hints: RootDisk, disk: Disk) -> str | None:
    """Why ``disk`` cannot be the root disk, or None."""
    for key in ("name", "serial", "wwn", "by_path", "model"):
        wanted = getattr(hints, key)
        if wanted is not None and getattr(disk, key) != wanted:
            return f"{key} is {getattr(disk, key)!r}, not {wanted!r}"
    if hints.rotational is not None and disk.rotational is not hints.rotational:
        return f"rotational is {disk.rotational}, not {hints.rotational}"
    wants_ssd = hints.prefer in ("smallest-ssd", "largest-ssd")
    if wants_ssd and disk.rotational is not False:
        return f"prefer {hints.prefer} takes SSDs only (rotational is {disk.rotational})"
    size = disk.size_bytes
    if (hints.min_size is not None or hints.max_size is not None) and size is None:
        return "its size is unknown"
    if hints.min_size is not None and size is not None and size < hints.min_size:
        return f"{size} bytes is less than min_size {hints.min_size}"
    if hints.max_size is not None and size is not None and size > hints.max_size:
        return f"{size} bytes is more than max_size {hints.max_size}"
    return None


def choose(hints: RootDisk, disks: Sequence[Disk]) -> Disk:
    fits = [d for d in disks if _ruled_out(hints, d) is None]
    if not fits:
        why = "; ".join(f"{d.name}: {_ruled_out(hints, d)}" for d in disks) or "no disks reported"
        raise NotFound(f"no disk fits os.root_disk ({why})", detail={"disks": len(disks)})
    if hints.prefer == "first":
        return fits[0]
    largest = hints.prefer.startswith("largest")

    def key(d: Disk) -> tuple[int, str]:
        size = d.size_bytes or 0
        return (-size if largest else size, d.name)

    return min(fits, key=key)


def stable_path(disk: Disk) -> str:
    """A device path that survives renumbering: by-path, else by-id from the WWN, else the
    kernel name (which can change between boots on machines with several controllers)."""
    if disk.by_path:
        return f"/dev/disk/by-path/{disk.by_path}"
    if disk.wwn:
        return f"/dev/disk/by-id/wwn-{disk.wwn}"
    return disk.name
