"""Reading a VM's disk image from the host: its partition table, and files in an ext4 partition
of a powered-off system."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


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
