"""``ztpd images import`` with real tools: a disk made with sfdisk and mkfs.ext4, turned into
qcow2, gzip and zstd files, registered; the manifest matches the files; image deploy offers the
result; bad input is refused with the reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import write_config, ztpd_run
from ztpd.errors import BadRequest, Conflict, ZtpdError
from ztpd.images import importer, osimage, sha256
from ztpd.install.deploy import find_image, write_image_action
from ztpd.profiles.model import RootDisk

from ..install.conftest import inventory

TOOLS = ("qemu-img", "sfdisk", "mkfs.ext4", "debugfs", "zstd", "gzip", "prlimit")
MIB = 1 << 20
ROOT_START = 10240  # sectors: after a 4 MiB ESP at 1 MiB
MARKER = "ztpd import test\n"


def tool(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 MiB GPT disk image: an ESP and an ext4 root holding /etc/marker."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: apt-get install qemu-utils fdisk e2fsprogs zstd")
    work = tmp_path_factory.mktemp("disk")
    raw = work / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(24 * MIB)
    table = (
        "label: gpt\n"
        f"start=2048, size={ROOT_START - 2048}, type={osimage.ESP}\n"
        f"start={ROOT_START}, type={osimage.LINUX}\n"
    )
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True, timeout=60)
    (work / "tree" / "etc").mkdir(parents=True)
    (work / "tree" / "etc" / "marker").write_text(MARKER)
    root_kib = (24 * MIB - ROOT_START * 512 - 34 * 512) // 1024
    offset = f"offset={ROOT_START * 512}"
    tool("mkfs.ext4", "-q", "-F", "-d", str(work / "tree"), "-E", offset, str(raw), f"{root_kib}k")
    return raw


def marker(raw: Path) -> str:
    done = subprocess.run(
        ["debugfs", "-R", "cat /etc/marker", f"{raw}?offset={ROOT_START * 512}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def variant(disk: Path, fmt: str) -> Path:
    """``disk`` as a file of format ``fmt``, named without a telling suffix: import sniffs."""
    out = disk.parent / f"as-{fmt}"
    if not out.exists():
        if fmt == "qcow2":
            tool("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(out))
        elif fmt == "raw.gz":
            with out.open("wb") as f:
                subprocess.run(["gzip", "-c", str(disk)], stdout=f, check=True, timeout=60)
        elif fmt == "raw.zst":
            tool("zstd", "-q", str(disk), "-o", str(out))
        else:
            shutil.copyfile(disk, out)
    return out


def test_qcow2_is_registered_like_a_built_image_and_deploy_offers_it(
    disk: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    image = importer.import_image(images, variant(disk, "qcow2"), "edge-os")

    out = images / "os" / "edge-os"
    doc = json.loads((out / "manifest.json").read_text())
    assert sorted(doc["files"]) == ["edge-os.raw", "edge-os.raw.zst"]
    for name, entry in doc["files"].items():
        assert entry == {"sha256": sha256(out / name), "size": (out / name).stat().st_size}
    raw = out / "edge-os.raw"
    assert raw.read_bytes() == disk.read_bytes()  # partition table and file system intact
    assert marker(raw) == MARKER
    assert osimage.cached(images, "edge-os") == image

    source = find_image(images, "edge-os")
    action = write_image_action(
        7, RootDisk(), inventory("qemu-vm"), source, base_url="http://z:8080", seed_url="s/"
    )
    zst = doc["files"]["edge-os.raw.zst"]
    assert action["url"] == "http://z:8080/files/os/edge-os/edge-os.raw.zst?node=7"
    assert (action["format"], action["sha256"], action["size"]) == (
        "raw.zst",
        zst["sha256"],
        zst["size"],
    )
    assert action["disk_bytes"] == 24 * MIB and action["disk"] == "/dev/vda"
    # What the agent streams decompresses to the disk image.
    tool("zstd", "-d", "-q", str(out / "edge-os.raw.zst"), "-o", str(tmp_path / "back.raw"))
    assert (tmp_path / "back.raw").read_bytes() == disk.read_bytes()


def test_import_is_idempotent_and_guards_a_registered_name(disk: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    first = importer.import_image(images, variant(disk, "raw.zst"), "edge-os")
    manifest = images / "os" / "edge-os" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    assert importer.import_image(images, variant(disk, "raw.zst"), "edge-os") == first
    assert manifest.stat().st_mtime_ns == written  # nothing was done again

    with pytest.raises(Conflict, match=r"already registered with other content.*--replace"):
        importer.import_image(images, variant(disk, "raw.gz"), "edge-os")
    replaced = importer.import_image(images, variant(disk, "raw.gz"), "edge-os", replace=True)
    assert replaced.fingerprint == f"import:{sha256(variant(disk, 'raw.gz'))}"
    assert replaced.file(".raw") == first.file(".raw")  # same disk, other wrapping
    assert sorted(p.name for p in (images / "os").iterdir()) == ["edge-os"]  # no work dir left


@pytest.mark.parametrize("fmt", ["raw", "raw.gz", "raw.zst"])
def test_every_format_gives_the_same_disk(disk: Path, tmp_path: Path, fmt: str) -> None:
    image = importer.import_image(tmp_path, variant(disk, fmt), "img")
    assert image.file(".raw").sha256 == sha256(disk)


def corrupt_qcow2(disk: Path, out: Path) -> None:
    shutil.copyfile(variant(disk, "qcow2"), out)
    with out.open("r+b") as f:  # the L1 table offset (header bytes 40-47) points past the end
        f.seek(40)
        f.write((1 << 40).to_bytes(8, "big"))


def truncated(src: Path, out: Path) -> None:
    data = src.read_bytes()
    out.write_bytes(data[: len(data) // 2])


def truncated_mbr(out: Path) -> None:
    """An MBR disk cut short: its table names a partition past the end."""
    with out.open("wb") as f:
        f.truncate(8 * MIB)
    subprocess.run(
        ["sfdisk", "-q", str(out)], input="label: dos\nstart=2048\n", text=True, check=True
    )
    truncated(out, out)


def backed_qcow2(disk: Path, out: Path) -> None:
    tool("qemu-img", "create", "-f", "qcow2", "-b", str(disk), "-F", "raw", str(out))


BAD: dict[str, tuple[Callable[[Path, Path], object], str]] = {
    "text": (lambda d, o: o.write_text("not an image\n" * 100), "not a disk image"),
    "empty-disk": (lambda d, o: o.write_bytes(bytes(MIB)), "no partition table"),
    "truncated-raw": (lambda d, o: truncated(d, o), "GPT is unreadable"),
    "truncated-mbr": (lambda d, o: truncated_mbr(o), "partition .*1 ends at sector 16384"),
    "truncated-gz": (lambda d, o: truncated(variant(d, "raw.gz"), o), "zstd"),
    "truncated-qcow2": (lambda d, o: truncated(variant(d, "qcow2"), o), "qcow2"),
    "corrupt-qcow2": (corrupt_qcow2, "is a damaged qcow2"),
    "backing-file": (backed_qcow2, "with a backing file"),
    "vmdk": (
        lambda d, o: tool("qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(d), str(o)),
        "is vmdk, an unknown format",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_the_reason(disk: Path, tmp_path: Path, case: str) -> None:
    make, why = BAD[case]
    src = tmp_path / f"bad-{case}"
    make(disk, src)
    images = tmp_path / "images"
    with pytest.raises(ZtpdError, match=why):
        importer.import_image(images, src, "bad")
    assert osimage.cached(images, "bad") is None
    assert not (images / "os" / "bad" / "manifest.json").exists()
    assert not (images / "os" / ".import-bad").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "cache", "a b", "x" * 65])
def test_a_name_that_is_not_a_safe_path_component_is_refused(
    disk: Path, tmp_path: Path, name: str
) -> None:
    with pytest.raises(BadRequest, match="--name"):
        importer.import_image(tmp_path, variant(disk, "raw"), name)
    assert not (tmp_path / "os").exists()


def test_the_cli_imports_and_reports_bad_input(disk: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ztpd.yaml", tmp_path / "state")

    def ztpd(*args: str) -> subprocess.CompletedProcess[str]:
        return ztpd_run("images", *args, env={"ZTPD_CONFIG": str(config)}, timeout=300)

    done = ztpd("import", str(variant(disk, "qcow2")), "--name", "edge-os", "--json")
    assert done.returncode == 0, done.stderr
    files = json.loads(done.stdout)["files"]
    assert files["edge-os.raw"]["size"] == 24 * MIB
    assert osimage.cached(tmp_path / "state" / "images", "edge-os") is not None

    (tmp_path / "notes.txt").write_text("hello\n")
    done = ztpd("import", str(tmp_path / "notes.txt"), "--name", "notes")
    assert done.returncode == 1 and "not a disk image" in done.stderr
    done = ztpd("import", str(variant(disk, "raw")))
    assert done.returncode == 2 and "needs FILE and --name NAME" in done.stderr
