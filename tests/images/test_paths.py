"""The refusal rules for requested names, table-driven."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ztpd.images import paths
from ztpd.images.paths import Refused


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
    assert paths.clean(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("../etc/passwd", paths.FORBIDDEN),
        ("efi/../../x", paths.FORBIDDEN),
        ("..\\..\\etc\\passwd", paths.FORBIDDEN),
        ("/etc/passwd", paths.FORBIDDEN),
        ("\\etc\\passwd", paths.FORBIDDEN),
        ("a\x00b", paths.FORBIDDEN),
        ("a\nb", paths.FORBIDDEN),
        ("x" * (paths.MAX_NAME + 1), paths.FORBIDDEN),
        ("", paths.MISSING),
        ("./", paths.MISSING),
    ],
)
def test_clean_refuses(raw: str, code: str) -> None:
    with pytest.raises(Refused) as e:
        paths.clean(raw)
    assert e.value.kind == code


def test_locate(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.efi").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    os.symlink(root / "a.efi", root / "inside")
    os.symlink(tmp_path / "secret", root / "outside")
    os.symlink("../../secret", root / "sub" / "relative-out")
    os.symlink(root / "gone", root / "dangling")
    assert paths.locate(root, "a.efi") == root / "a.efi"
    assert paths.locate(root, "inside") == root / "inside"
    assert paths.locate(root, "missing") is None
    for name, code in [
        ("outside", paths.FORBIDDEN),
        ("sub/relative-out", paths.FORBIDDEN),
        ("sub", paths.FORBIDDEN),
        ("dangling", paths.MISSING),
    ]:
        with pytest.raises(Refused) as e:
            paths.locate(root, name)
        assert e.value.kind == code, name
