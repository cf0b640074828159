"""What a client (TFTP or HTTP) may ask for: a name relative to the images root that stays
inside it.

Pure functions, so the refusal rules are tested without sockets. A refusal says whether the
name is forbidden or simply not there, and the reason ztpd logs; each protocol maps that to its
own error (TFTP error code, HTTP status).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

# Longer than any loader or per-client name ztpd hands out; PXE's DHCP file field holds 128.
MAX_NAME = 255
# A name ztpd makes a directory and file names of (an imported image): no separator, no
# leading dot (ztpd's own work directories), nothing a URL or a shell would need quoted.
COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

FORBIDDEN: Literal["forbidden"] = "forbidden"
MISSING: Literal["missing"] = "missing"


class Refused(Exception):
    def __init__(self, kind: Literal["forbidden", "missing"], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def clean(raw: str) -> str:
    """The request's name as a relative POSIX path, or Refused.

    Backslashes count as separators (some Windows-derived firmware sends them). Absolute names
    are refused rather than re-rooted: ztpd's DHCP hands out relative names, so a leading "/"
    is either a misconfigured client or a probe.
    """
    if len(raw) > MAX_NAME:
        raise Refused(FORBIDDEN, f"name longer than {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise Refused(FORBIDDEN, "control character in name")
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise Refused(FORBIDDEN, "absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise Refused(FORBIDDEN, "parent directory in path")
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        raise Refused(MISSING, "empty name")
    return "/".join(kept)


def locate(root: Path, name: str) -> Path | None:
    """The file ``name`` (already cleaned) names under ``root``; None when nothing is there
    (it may still be a generated file). Refused when a symlink leads out of the root or the
    name is not a regular file."""
    path = root / name
    if not os.path.lexists(path):
        return None
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(os.path.realpath(root)):
        raise Refused(FORBIDDEN, "symlink leads out of the root")
    if not real.is_file():
        raise Refused(MISSING if not real.exists() else FORBIDDEN, "not a regular file")
    return path


def component_problem(name: str, reserved: frozenset[str] = frozenset()) -> str | None:
    """Why ``name`` cannot be one path component ztpd creates (None: it can)."""
    if not COMPONENT.fullmatch(name):
        return (
            f"{name!r} is not a safe name: 1 to 64 of A-Z a-z 0-9 . _ + -, "
            "starting with a letter or digit"
        )
    if name in reserved:
        return f"{name!r} is reserved"
    return None
