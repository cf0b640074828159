"""What a TFTP client may ask for: a name relative to the root that stays inside it.

Pure functions, so the refusal rules are tested without sockets. A refusal carries the TFTP
error code the client gets and the reason ztpd logs.
"""

from __future__ import annotations

import os
from pathlib import Path

# TFTP error codes (RFC 1350 section 5, RFC 2347).
NOT_DEFINED = 0
FILE_NOT_FOUND = 1
ACCESS_VIOLATION = 2
ILLEGAL_OPERATION = 4
UNKNOWN_TID = 5
OPTION_NEGOTIATION = 8

# Longer than any loader or per-client name ztpd hands out; PXE's DHCP file field holds 128.
MAX_NAME = 255
MODES = frozenset({"octet", "netascii"})


class Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def clean(raw: str) -> str:
    """The request's name as a relative POSIX path, or Refused.

    Backslashes count as separators (some Windows-derived firmware sends them). Absolute names
    are refused rather than re-rooted: ztpd's DHCP hands out relative names, so a leading "/"
    is either a misconfigured client or a probe.
    """
    if len(raw) > MAX_NAME:
        raise Refused(ACCESS_VIOLATION, f"name longer than {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise Refused(ACCESS_VIOLATION, "control character in name")
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise Refused(ACCESS_VIOLATION, "absolute path")
    parts = name.split("/")
    if ".." in parts:
        raise Refused(ACCESS_VIOLATION, "parent directory in path")
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        raise Refused(FILE_NOT_FOUND, "empty name")
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
        raise Refused(ACCESS_VIOLATION, "symlink leads out of the root")
    if not real.is_file():
        raise Refused(
            FILE_NOT_FOUND if not real.exists() else ACCESS_VIOLATION, "not a regular file"
        )
    return path
