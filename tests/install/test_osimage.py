"""The Debian disk image for ``os.method: image``: the mirror it is built from, its cache, and
(built lazily once per run, or reused from images/) its layout and contents."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from ztpd.errors import NotFound, ZtpdError
from ztpd.images import osimage, sha256

from .conftest import IMAGES


def test_mirror_comes_from_apt_sources_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64] http://one-line.example/debian/ bullseye main contrib\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb822.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert osimage.apt_mirror("bookworm", tmp_path) == "http://deb822.example/debian"
    assert osimage.apt_mirror("bullseye", tmp_path) == "http://one-line.example/debian"
    with pytest.raises(ZtpdError, match="no apt source for trixie main"):
        osimage.apt_mirror("trixie", tmp_path)


def test_unknown_recipe_and_fingerprints(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no image recipe 'plan9'"):
        osimage.build(tmp_path, "plan9", mirror="http://x/debian")
    recipe = osimage.RECIPES["debian-12"]
    assert recipe.fingerprint("http://a/debian") != recipe.fingerprint("http://b/debian")


def test_cached_needs_every_file_at_its_recorded_size(tmp_path: Path) -> None:
    out = tmp_path / "os" / "debian-12"
    out.mkdir(parents=True)
    (out / "debian-12.raw").write_bytes(b"x" * 10)
    image = osimage.OsImage(
        "debian-12",
        "f",
        "http://m",
        "bookworm",
        "u",
        (osimage.ImageFile("debian-12.raw", "00", 10),),
    )
    (out / "manifest.json").write_text(json.dumps(image.to_dict()))
    assert osimage.cached(tmp_path, "debian-12") == image
    (out / "debian-12.raw").write_bytes(b"x" * 11)
    assert osimage.cached(tmp_path, "debian-12") is None
    (out / "manifest.json").write_text("{")
    assert osimage.cached(tmp_path, "debian-12") is None


def test_bios_boot_patches_what_grub_bios_setup_patches() -> None:
    mbr = bytearray(512)
    mbr[3:0x5A] = b"B" * (0x5A - 3)  # a BPB
    mbr[0x1B8:0x1FE] = b"P" * (0x1FE - 0x1B8)  # disk signature and partition table
    mbr[510:] = b"\x55\xaa"
    boot = bytes(range(256)) * 2
    # diskboot.img's default blocklist: sector 2, grub-mkimage's length, segment 0x820.
    core = bytearray(3 * 512 + 100)
    struct.pack_into("<QHH", core, 500, 2, 3, 0x820)
    struct.pack_into("<QHH", core, 488, 7, 7, 7)
    first, patched = osimage.bios_boot(bytes(mbr), boot, bytes(core), 2048)
    assert first[:3] == boot[:3] and first[3:0x5A] == mbr[3:0x5A]
    assert first[0x68:0x1B8] == boot[0x68:0x1B8]
    assert first[0x1B8:] == mbr[0x1B8:]
    assert struct.unpack_from("<Q", first, 0x5C) == (2048,)
    assert first[0x64] == 0xFF and first[0x66:0x68] == b"\x90\x90"
    assert struct.unpack_from("<QHH", patched, 500) == (2049, 3, 0x820)
    assert struct.unpack_from("<QHH", patched, 488) == (0, 0, 0)
    assert patched[512:] == core[512:]
    with pytest.raises(ZtpdError, match="55aa"):
        osimage.bios_boot(bytes(512), boot, bytes(core), 2048)
    with pytest.raises(ZtpdError, match="no GRUB core image"):
        osimage.bios_boot(bytes(mbr), boot, bytes(512), 2048)


def _parts(raw: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        ["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    parts: list[dict[str, object]] = json.loads(out)["partitiontable"]["partitions"]
    return parts


@pytest.mark.slow
def test_image_layout_and_manifest(image: osimage.OsImage) -> None:
    out = IMAGES / "os" / "debian-12"
    raw, zst = image.file(".raw"), image.file(".raw.zst")
    assert raw.size < 1 << 30, "the raw image should stay under 1 GiB"
    assert zst.size < raw.size
    assert sha256(out / zst.name) == zst.sha256
    parts = _parts(out / raw.name)
    assert [p["type"] for p in parts] == [osimage.BIOS_BOOT, osimage.ESP, osimage.LINUX]
    last = parts[-1]
    end = (int(last["start"]) + int(last["size"])) * 512  # type: ignore[call-overload]
    assert end <= raw.size and raw.size - end < 2 << 20  # the root is last: it can grow
    # The ESP holds the UEFI loader (read with mtools at the partition's offset).
    esp = f"{out / raw.name}@@{int(parts[1]['start']) * 512}"  # type: ignore[call-overload]
    listing = subprocess.run(
        ["mdir", "-b", "-i", esp, "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert "BOOTX64.EFI" in listing.stdout
    # BIOS: GRUB's boot.img in the MBR points at core.img in the BIOS boot partition.
    bios_lba = int(parts[0]["start"])  # type: ignore[call-overload]
    with (out / raw.name).open("rb") as f:
        mbr = f.read(512)
        f.seek(bios_lba * 512)
        core = f.read(512)
    assert mbr[510:] == b"\x55\xaa" and struct.unpack_from("<Q", mbr, 0x5C) == (bios_lba,)
    assert struct.unpack_from("<Q", core, 500) == (bios_lba + 1,)


@pytest.mark.slow
def test_image_root_filesystem_is_generic(image: osimage.OsImage, tmp_path: Path) -> None:
    raw = IMAGES / "os" / "debian-12" / image.file(".raw").name
    root = _parts(raw)[-1]
    offset = int(root["start"]) * 512  # type: ignore[call-overload]

    def debugfs(request: str) -> str:
        done = subprocess.run(
            ["debugfs", "-R", request, f"{raw}?offset={offset}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    def names(directory: str) -> set[str]:
        # ls -p: one "/inode/mode/uid/gid/name/size/" line per entry.
        lines = debugfs(f"ls -p {directory}").splitlines()
        return {line.split("/")[5] for line in lines if line.count("/") >= 6} - {".", ".."}

    assert f"UUID={image.root_uuid}\t/\text4" in debugfs("cat /etc/fstab")
    assert "NoCloud" in debugfs("cat /etc/cloud/cloud.cfg.d/90-ztpd.cfg")
    assert "ssh_host_" not in debugfs("ls -l /etc/ssh")  # every node makes its own
    assert debugfs("cat /etc/machine-id") == ""
    assert "vmlinuz" in debugfs("ls -l /")
    assert f"--fs-uuid {image.root_uuid}" in debugfs("cat /boot/grub/grub.cfg")
    # Small: no sound/wireless/media modules, docs or man pages; the server drivers stay.
    assert "sound" in debugfs("cat /etc/dpkg/dpkg.cfg.d/ztpd-excludes")
    (version,) = names("/usr/lib/modules")
    kernel = f"/usr/lib/modules/{version}/kernel"
    trees = names(kernel) | names(f"{kernel}/drivers")
    for kept in ("fs", "net", "nvme", "scsi", "ata", "md", "virtio", "infiniband", "char"):
        assert kept in trees, kept
    for gone in ("sound", "drivers/media", "drivers/staging"):
        assert names(f"{kernel}/{gone}") == set(), gone  # dpkg keeps the empty directory
    assert "ethernet" in names(f"{kernel}/drivers/net")
    assert names("/usr/share/man") == set()
    # Fast first boot: trimmed cloud-init stages that still call back; no apt timers.
    cloud = debugfs("cat /etc/cloud/cloud.cfg.d/90-ztpd.cfg")
    assert "phone-home" in cloud and "growpart" in cloud and "apt-configure" in cloud
    assert "/dev/null" in debugfs("stat /etc/systemd/system/apt-daily.timer")
    assert "ssh_genkeytypes: [ecdsa, ed25519]" in cloud  # no RSA: a minute of TCG
    # One cloud-init stage fewer: the config modules run in the final stage.
    assert "cloud_config_modules: []" in cloud
    assert "/dev/null" in debugfs("stat /etc/systemd/system/cloud-config.service")
    assert "\nPasswordAuthentication no\n" in debugfs("cat /etc/ssh/sshd_config")
    assert "set timeout=0" in debugfs("cat /boot/grub/grub.cfg")
    # The initramfs: zstd, any disk controller and ext4, none of the network/SAN/fs extras.
    initrd = tmp_path / "initrd.img"
    debugfs(f"dump /boot/initrd.img-{version} {initrd}")
    assert initrd.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    unpacked = subprocess.run(
        f"zstd -dc {initrd} | busybox cpio -t", shell=True, capture_output=True, check=True
    )
    files = unpacked.stdout.decode().splitlines()
    for kept in ("/ahci.ko", "/nvme.ko", "/virtio_blk.ko", "/megaraid_sas.ko", "/ext4.ko"):
        assert any(f.endswith(kept) for f in files), kept
    for gone in ("/drivers/net/", "/drivers/infiniband/", "/fs/xfs/", "/qla2xxx/"):
        assert not any(gone in f for f in files), gone
