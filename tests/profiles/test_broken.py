"""Golden error messages: every file in broken/ and the exact problems `ztpd check` prints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ztpd.errors import SourceError
from ztpd.profiles import check, load_profiles
from ztpd.yamlsrc import MAX_BYTES

from .conftest import BROKEN, SHIPPED, write

CASES = sorted(p.stem for p in BROKEN.glob("*.yaml"))


def problems_text(directory: Path) -> str:
    return "".join(f"{p}\n".replace(f"{directory}/", "") for p in check(directory))


@pytest.mark.parametrize("case", CASES)
def test_golden_messages(case: str, pdir: Path) -> None:
    pdir.mkdir()
    shutil.copy(BROKEN / f"{case}.yaml", pdir)
    expected = (BROKEN / f"{case}.expected").read_text()
    assert expected, "every broken profile must produce at least one problem"
    assert problems_text(pdir) == expected


def test_every_case_has_expected_messages() -> None:
    assert {p.stem for p in BROKEN.glob("*.expected")} == set(CASES)


def test_one_bad_file_refuses_the_whole_set_and_lists_every_problem(pdir: Path) -> None:
    shutil.copytree(SHIPPED, pdir)
    shutil.copy(BROKEN / "unknown-operator.yaml", pdir)
    shutil.copy(BROKEN / "bad-regex.yaml", pdir)
    with pytest.raises(SourceError) as err:
        load_profiles(pdir)
    files = {Path(p.file).name for p in err.value.problems}
    assert files == {"unknown-operator.yaml", "bad-regex.yaml"}
    # 3 bad regexes, 2 unknown operators, and both files name their profile "web"
    assert len(err.value.problems) == 6
    assert "duplicate profile name 'web'" in str(err.value)
    assert str(err.value).count("\n") == 5  # one problem per line


def test_huge_file(pdir: Path) -> None:
    write(pdir, {"huge.yaml": "name: web\ndescription: " + "x" * MAX_BYTES + "\n"})
    assert problems_text(pdir) == f"huge.yaml: file is larger than {MAX_BYTES} bytes\n"


def test_defaults_problems_point_into_the_defaults_file(pdir: Path) -> None:
    write(
        pdir,
        {
            "_defaults.yaml": "priority: 5\nos:\n  method: image\n  imgae: debian-12\n",
            "a.yaml": "name: a\n",
        },
    )
    assert problems_text(pdir) == (
        "_defaults.yaml:1:1: 'priority' cannot be a default (defaults may set approve, os, "
        "platform, register)\n"
        "_defaults.yaml:4:3: unknown key 'os.imgae' (did you mean 'image'?)\n"
    )


def test_a_profile_completing_its_defaults_is_located_in_its_own_file(pdir: Path) -> None:
    write(
        pdir,
        {
            "_defaults.yaml": "os:\n  users: [{name: ops}]\n",
            "a.yaml": "name: a\nos:\n  hostname: 'a-{{ system.serail }}'\n",
        },
    )
    assert problems_text(pdir) == (
        "a.yaml:3:3: missing required key 'os.method'\n"
        "a.yaml:3:13: os.hostname: template references unknown fact 'system.serail' "
        "(did you mean 'system.serial'?)\n"
    )


def test_missing_directory(tmp_path: Path) -> None:
    assert [str(p) for p in check(tmp_path / "nope")] == [
        f"{tmp_path / 'nope'}: profiles directory does not exist"
    ]
