"""Rendered install files: golden files for every shipped example profile and method, each
passing its real validator; broken templates and missing facts are RenderErrors, not files.

Regenerate the golden files after an intended template change with
    ZTPD_UPDATE_GOLDEN=1 .venv/bin/pytest tests/install/test_render.py
and review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ztpd.errors import NotFound, RenderError
from ztpd.install import checks
from ztpd.install.render import Renderer, Target
from ztpd.install.rootdisk import choose, stable_path
from ztpd.inventory.schema import Disk
from ztpd.model import Node
from ztpd.profiles.model import Os, RootDisk, User

from .conftest import EXAMPLES, MIRRORS, TEMPLATES, example_os, inventory

GOLDEN = Path(__file__).parent / "golden"
BASE = "http://ztpd.test:8080"
NODE_URL = f"{BASE}/install/7/TOKEN/"
HASH = "$6$rounds=4096$saltsalt$C0ffee.hash.for.tests.only"


def node(hostname: str | None = "edge-1", macs: tuple[str, ...] = ("52:54:00:12:34:56",)) -> Node:
    return Node(id=7, state="deploying", macs=macs, hostname=hostname)


def target(os_: Os, machine: str = "qemu-vm", hostname: str | None = "edge-1") -> Target:
    return Target(os_, node(hostname), inventory(machine), BASE, NODE_URL)


CASES = [(p, m) for p in sorted(EXAMPLES) for m in ("autoinstall", "preseed", "kickstart", "image")]


@pytest.mark.parametrize(("profile", "method"), CASES, ids=[f"{p}-{m}" for p, m in CASES])
def test_golden(renderer: Renderer, profile: str, method: str) -> None:
    machine, hostname = EXAMPLES[profile]
    t = target(example_os(profile, method), machine, hostname)
    for name in renderer.files(method):
        text = renderer.render(t, name)  # raises if the file fails its check
        golden = GOLDEN / profile / method / name
        if os.environ.get("ZTPD_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (see the module docstring)"


def _kickstart_files() -> list[Path]:
    return sorted(GOLDEN.glob("*/kickstart/ks.cfg"))


@pytest.mark.parametrize("path", _kickstart_files(), ids=lambda p: p.parts[-3])
def test_golden_kickstart_passes_ksvalidator(path: Path, tmp_path: Path) -> None:
    tool = Path(sys.executable).with_name("ksvalidator")
    # ksvalidator leaves its preprocessed copy (mkstemp "-ks.cfg") behind: keep it in tmp_path.
    done = subprocess.run(
        [str(tool), "-e", "-v", "RHEL9", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "path", sorted(GOLDEN.glob("*/preseed/preseed.cfg")), ids=lambda p: p.parts[-3]
)
def test_golden_preseed_passes_debconf(path: Path) -> None:
    tool = shutil.which("debconf-set-selections")
    if tool is None:
        pytest.skip("needs debconf-set-selections (Debian package debconf)")
    done = subprocess.run([tool, "--checkonly", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr


@pytest.mark.parametrize(
    "path", sorted(GOLDEN.glob("*/autoinstall/user-data")), ids=lambda p: p.parts[-3]
)
def test_golden_autoinstall_has_what_subiquity_requires(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    section = doc["autoinstall"]
    assert section["version"] == 1
    assert "identity" in section or "user-data" in section
    assert set(doc) == {"autoinstall"}
    assert section["reporting"]["ztpd"] == {"type": "webhook", "endpoint": NODE_URL + "progress"}
    assert section["user-data"]["phone_home"]["url"] == NODE_URL + "firstboot"


def test_every_template_rendered_is_in_the_golden_set() -> None:
    assert {p.parts[-3] for p in GOLDEN.glob("*/*/*")} == set(EXAMPLES)


def test_static_network_vlan_and_password_reach_every_method(renderer: Renderer) -> None:
    base = example_os("kubeedge-edge", "preseed")
    net = {
        "mode": "static",
        "interface": "52:54:00:12:34:56",
        "address": "10.0.0.5/24",
        "gateway": "10.0.0.1",
        "dns": ["10.0.0.2"],
        "vlan": 20,
        "mtu": 9000,
    }
    users = [User(name="ops", sudo=True, password_hash=HASH), User(name="dev", groups=["adm"])]
    for method, release in (
        ("autoinstall", "ubuntu-24.04"),
        ("preseed", "debian-12"),
        ("kickstart", "rocky-9"),
        ("image", None),
    ):
        os_ = Os.model_validate(
            {
                **base.model_dump(),
                "method": method,
                "release": release,
                "network": net,
                "users": [u.model_dump() for u in users],
            }
        )
        texts = {n: renderer.render(target(os_), n) for n in renderer.files(method)}
        joined = "\n".join(texts.values())
        assert "10.0.0.5" in joined and HASH in joined, method
        if method != "preseed":  # d-i takes the VLAN on the kernel line and in the file
            assert "9000" in joined, method
        assert "20" in joined


def test_wipe_lists_every_other_disk_and_never_the_root(renderer: Renderer) -> None:
    t = target(example_os("k3s-server", "autoinstall"), "dell-r650")
    ctx = renderer.context(t)
    assert ctx["disk"]["path"] not in ctx["wipe"]
    assert len(ctx["wipe"]) == len(inventory("dell-r650").disks) - 1
    none = example_os("storage-node", "preseed")
    assert renderer.context(target(none, "supermicro-storage"))["wipe"] == []


# --- failures: a RenderError, never a partial file --------------------------------------------


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    return copy


def test_undefined_value_in_a_template_is_a_render_error(broken_dir: Path) -> None:
    path = broken_dir / "install" / "autoinstall" / "user-data.j2"
    path.write_text(path.read_text().replace("  version: 1\n", "  version: {{ nope }}\n"))
    r = Renderer(broken_dir, MIRRORS)
    with pytest.raises(RenderError, match="'nope' is undefined"):
        r.render(target(example_os("kubeedge-edge", "autoinstall")), "user-data")


def test_template_output_that_fails_its_check_is_refused(broken_dir: Path) -> None:
    path = broken_dir / "install" / "autoinstall" / "user-data.j2"
    path.write_text(path.read_text().replace("  version: 1\n", "  version: 2\n"))
    r = Renderer(broken_dir, MIRRORS)
    with pytest.raises(RenderError, match="version: 2 is greater than the maximum of 1"):
        r.render(target(example_os("kubeedge-edge", "autoinstall")), "user-data")
    ks = broken_dir / "install" / "kickstart" / "ks.cfg.j2"
    ks.write_text(ks.read_text().replace("text\n", "text\nfrobnicate --now\n"))
    r.load()
    with pytest.raises(RenderError, match="kickstart"):
        r.render(target(example_os("kubeedge-edge", "kickstart")), "ks.cfg")
    pre = broken_dir / "install" / "preseed" / "preseed.cfg.j2"
    pre.write_text(pre.read_text() + "this is not a selection\n")
    r.load()
    with pytest.raises(RenderError, match="debconf-set-selections"):
        r.render(target(example_os("kubeedge-edge", "preseed")), "preseed.cfg")


def test_syntax_error_refuses_the_whole_set(broken_dir: Path) -> None:
    r = Renderer(broken_dir, MIRRORS)
    (broken_dir / "install" / "preseed" / "post.sh.j2").write_text("{% if %}\n")
    with pytest.raises(Exception, match=r"post\.sh\.j2:1"):
        r.load()
    r.render(target(example_os("kubeedge-edge", "preseed")), "post.sh")  # previous set serves


@pytest.mark.parametrize(
    ("change", "hostname", "machine", "message"),
    [
        ({}, None, "qemu-vm", "has no hostname"),
        ({}, "Not_A_Host", "qemu-vm", "not a valid host name"),
        ({"release": "ubuntu-99.04"}, "edge-1", "qemu-vm", "unknown release"),
        ({"release": "debian-12"}, "edge-1", "qemu-vm", "installs with preseed, not autoinstall"),
        ({"root_disk": {"min_size": "1TB"}}, "edge-1", "qemu-vm", "no disk fits"),
        ({"network": {"interface": "pxe"}}, "edge-1", "no-such", "boot MAC is unknown"),
    ],
)
def test_missing_or_wrong_facts_are_render_errors(
    renderer: Renderer, change: dict[str, object], hostname: str | None, machine: str, message: str
) -> None:
    os_ = Os.model_validate({**example_os("kubeedge-edge", "autoinstall").model_dump(), **change})
    inv = None if machine == "no-such" else inventory(machine)
    t = Target(
        os_, node(hostname, macs=() if inv is None else ("52:54:00:12:34:56",)), inv, BASE, NODE_URL
    )
    with pytest.raises(RenderError, match=message):
        renderer.render(t, "user-data")


def test_preseed_needs_a_user_and_urls_must_be_plain(renderer: Renderer) -> None:
    os_ = example_os("kubeedge-edge", "preseed").model_copy(update={"users": []})
    with pytest.raises(RenderError, match="at least one user"):
        renderer.render(target(os_), "preseed.cfg")
    t = Target(
        example_os("kubeedge-edge", "preseed"),
        node(),
        inventory("qemu-vm"),
        BASE,
        f"{BASE}/install/7/a;reboot/",
    )
    with pytest.raises(RenderError, match="install URL"):
        renderer.render(t, "preseed.cfg")


def test_a_file_the_method_does_not_have_is_not_found(renderer: Renderer) -> None:
    with pytest.raises(NotFound):
        renderer.render(target(example_os("kubeedge-edge", "preseed")), "ks.cfg")


# --- checks on their own ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\n", "must start with #cloud-config"),
        ("#cloud-config\nautoinstall: [\n", "not valid YAML"),
        ("#cloud-config\nhostname: x\n", "no autoinstall section"),
        ("#cloud-config\nautoinstall: {version: 1}\n", "needs identity or user-data"),
        ("#cloud-config\nversion: 1\nautoinstall: {version: 1}\n", "outside autoinstall: version"),
        ("#cloud-config\nautoinstall: {version: 1, user-data: {}, storage: []}\n", "storage"),
        ("#cloud-config\nautoinstall: {version: 1, user-data: {}, nonsense: 1}\n", "nonsense"),
        ("#cloud-config\nautoinstall: {version: 1, identity: {username: a}}\n", "hostname"),
    ],
)
def test_autoinstall_check(text: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        checks.check_autoinstall("user-data", text)


def test_kickstart_check_treats_deprecated_commands_as_errors() -> None:
    checks.check_kickstart("ks.cfg", "text\nrootpw --lock\n", "RHEL9")
    with pytest.raises(RenderError, match="kickstart"):
        checks.check_kickstart("ks.cfg", "install\ntext\nrootpw --lock\n", "RHEL9")
    with pytest.raises(RenderError, match="no kickstart syntax"):
        checks.check_kickstart("ks.cfg", "text\n", "RHEL99")


# --- root disk --------------------------------------------------------------------------------


def disk(name: str, size: int, rotational: bool | None = False, **kw: str) -> Disk:
    return Disk(name=name, size_bytes=size, rotational=rotational, **kw)


DISKS = [
    disk("/dev/sda", 960_000_000_000, True, serial="HDD1"),
    disk("/dev/sdb", 480_000_000_000, False, serial="SSD1", by_path="pci-0-ata-2"),
    disk("/dev/nvme0n1", 1_920_000_000_000, False, serial="NV1", wwn="eui.1"),
    disk("/dev/sdc", 240_000_000_000, None),
]


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        ({}, "/dev/sdc"),
        ({"prefer": "largest"}, "/dev/nvme0n1"),
        ({"prefer": "smallest-ssd"}, "/dev/sdb"),
        ({"prefer": "largest-ssd"}, "/dev/nvme0n1"),
        ({"prefer": "first"}, "/dev/sda"),
        ({"rotational": True}, "/dev/sda"),
        ({"serial": "NV1"}, "/dev/nvme0n1"),
        ({"min_size": "400GB", "max_size": "1TB"}, "/dev/sdb"),
        ({"min_size": "400GB", "prefer": "largest", "max_size": "1TB"}, "/dev/sda"),
    ],
)
def test_root_disk_choice(hints: dict[str, object], expected: str) -> None:
    assert choose(RootDisk.model_validate(hints), DISKS).name == expected


def test_no_fitting_disk_says_why_for_each() -> None:
    with pytest.raises(NotFound) as e:
        choose(RootDisk.model_validate({"prefer": "smallest-ssd", "min_size": "2TB"}), DISKS)
    assert "/dev/sda: prefer smallest-ssd takes SSDs only" in e.value.message
    assert "/dev/nvme0n1: 1920000000000 bytes is less than min_size" in e.value.message
    with pytest.raises(NotFound, match="no disks reported"):
        choose(RootDisk(), [])


def test_stable_paths() -> None:
    assert [stable_path(d) for d in DISKS] == [
        "/dev/sda",
        "/dev/disk/by-path/pci-0-ata-2",
        "/dev/disk/by-id/wwn-eui.1",
        "/dev/sdc",
    ]
