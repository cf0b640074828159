"""Reading a VM's disk image from the host: a raw copy of it, its partition table, files in an
ext4 partition of a powered-off system, and what a metadata wipe leaves."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any


def raw_copy(disk: Path, raw: Path) -> Path:
    """``disk`` (a stopped VM's qcow2) as a sparse raw file at ``raw``: only what the VM wrote
    takes room."""
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True, timeout=300
    )
    return raw


def partition_table(path: Path) -> dict[str, Any]:
    """sfdisk's view of a disk image's partition table."""
    done = subprocess.run(["sfdisk", "-J", str(path)], capture_output=True, text=True, check=True)
    table: dict[str, Any] = json.loads(done.stdout)["partitiontable"]
    return table


def debugfs_cat(raw: Path, offset: int, path: str) -> str:
    """The file ``path`` of the ext4 file system at byte ``offset`` of ``raw``."""
    # -c: a powered-off system's journal is not replayed and its bitmaps do not check; the files
    # read here were written and unmounted before its boot.
    done = subprocess.run(
        ["debugfs", "-c", "-R", f"cat {path}", f"{raw}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def assert_wiped(raw: Path, *, tail: bool = True) -> None:
    """No partition table, and zeros in the first MiB (MBR, primary GPT, most signatures) and,
    with ``tail``, the last (the backup GPT)."""
    assert subprocess.run(["sfdisk", "-d", str(raw)], capture_output=True).returncode != 0
    with raw.open("rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
        if tail:
            f.seek(-(1 << 20), os.SEEK_END)
            assert f.read() == bytes(1 << 20)
