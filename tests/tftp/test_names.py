"""The refusal rules for requested names, table-driven."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ztpd.tftp import names
from ztpd.tftp.names import Refused


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("undionly.kpxe", "undionly.kpxe"),
        ("efi/ipxe.efi", "efi/ipxe.efi"),
        ("./efi//ipxe.efi", "efi/ipxe.efi"),
        ("efi\\ipxe.efi", "efi/ipxe.efi"),
    ],
)
def test_clean_accepts(raw: str, expected: str) -> None:
    assert names.clean(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("../etc/passwd", names.ACCESS_VIOLATION),
        ("efi/../../x", names.ACCESS_VIOLATION),
        ("..\\..\\etc\\passwd", names.ACCESS_VIOLATION),
        ("/etc/passwd", names.ACCESS_VIOLATION),
        ("\\etc\\passwd", names.ACCESS_VIOLATION),
        ("a\x00b", names.ACCESS_VIOLATION),
        ("a\nb", names.ACCESS_VIOLATION),
        ("x" * (names.MAX_NAME + 1), names.ACCESS_VIOLATION),
        ("", names.FILE_NOT_FOUND),
        ("./", names.FILE_NOT_FOUND),
    ],
)
def test_clean_refuses(raw: str, code: int) -> None:
    with pytest.raises(Refused) as e:
        names.clean(raw)
    assert e.value.code == code


def test_locate(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.efi").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(root / "a.efi", root / "inside")
    os.symlink(tmp_path / "secret", root / "outside")
    os.symlink("../../secret", root / "sub" / "relative-out")
    os.symlink(root / "gone", root / "dangling")
    assert names.locate(root, "a.efi") == root / "a.efi"
    assert names.locate(root, "inside") == root / "inside"
    assert names.locate(root, "missing") is None
    for name, code in [
        ("outside", names.ACCESS_VIOLATION),
        ("sub/relative-out", names.ACCESS_VIOLATION),
        ("sub", names.ACCESS_VIOLATION),
        ("dangling", names.FILE_NOT_FOUND),
    ]:
        with pytest.raises(Refused) as e:
            names.locate(root, name)
        assert e.value.code == code, name
