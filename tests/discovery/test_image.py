"""The discovery image build: what goes in, that it runs, and that it is reproducible."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ztpd.errors import ZtpdError
from ztpd.images import discovery, sha256


def test_elf_needs_of_a_real_binary() -> None:
    interp, needed = discovery.elf_needs(Path("/bin/ls").read_bytes())
    assert interp == "/lib64/ld-linux-x86-64.so.2" and "libc.so.6" in needed
    assert discovery.elf_needs(b"#!/bin/sh\n") == (None, [])


def test_select_modules_follows_dependencies_and_names_unknown_ones() -> None:
    deps = discovery.parse_modules_dep(
        "kernel/a/virtio_net.ko: kernel/b/virtio.ko kernel/c/net_failover.ko\n"
        "kernel/c/net_failover.ko: kernel/d/failover.ko\n"
        "kernel/d/failover.ko:\nkernel/b/virtio.ko:\n"
    )
    assert discovery.select_modules(deps, ["virtio_net"]) == [
        "kernel/a/virtio_net.ko", "kernel/b/virtio.ko",
        "kernel/c/net_failover.ko", "kernel/d/failover.ko",
    ]  # fmt: skip
    with pytest.raises(ZtpdError, match="no such kernel modules: nope"):
        discovery.select_modules(deps, ["nope"])


def test_cpio_is_sorted_and_timeless(tmp_path: Path) -> None:
    for root in (tmp_path / "a", tmp_path / "b"):
        (root / "bin").mkdir(parents=True)
        (root / "bin/z").write_text("z")
        (root / "init").write_text("#!/bin/sh\n")
        (root / "bin/sh").symlink_to("/bin/busybox")
    os.utime(tmp_path / "b/init", (1, 1))
    assert discovery.cpio(tmp_path / "a") == discovery.cpio(tmp_path / "b")


@pytest.mark.slow
def test_image_manifest_size_and_tools_run(discovery_image: Path) -> None:
    manifest = json.loads((discovery_image / discovery.MANIFEST).read_text())
    for name in (discovery.KERNEL, discovery.INITRD):
        assert sha256(discovery_image / name) == manifest["files"][name]["sha256"]
    assert manifest["files"][discovery.INITRD]["size"] < 60 << 20
    assert {"virtio_net", "e1000e", "ixgbe", "mlx5_core", "nvme", "ahci", "megaraid_sas"} <= set(
        manifest["modules"]["included"]
    )
    assert manifest["packages"]["busybox-static"]["version"]
    # Without --firmware none is included, and the manifest says what the drivers would load.
    assert manifest["firmware"]["included"] == []
    assert "rtl_nic/rtl8168d-1.fw" in manifest["firmware"]["missing"]  # r8169's
    if os.geteuid() != 0 or shutil.which("chroot") is None:
        pytest.skip("needs root and chroot to run the ramdisk's tools")
    root = discovery_image.parent / "root"
    root.mkdir(exist_ok=True)
    subprocess.run(
        ["cpio", "-id", "--quiet"] if shutil.which("cpio") else ["busybox", "cpio", "-id"],
        input=gzip.decompress((discovery_image / discovery.INITRD).read_bytes()),
        cwd=root,
        check=True,
        capture_output=True,
    )
    tools = [
        ["/usr/sbin/dmidecode", "--version"],
        ["/usr/bin/ipmitool", "-V"],
        ["/usr/bin/tcpdump", "--version"],
        ["/bin/sh", "-n", "/bin/ztpd-agent"],
        # The image writer's: coreutils' dd (conv=sparse), not busybox's; util-linux's fallocate.
        ["/bin/dd", "--version"],
        ["/usr/bin/fallocate", "--version"],
    ]
    for argv in tools:
        done = subprocess.run(["chroot", str(root), *argv], capture_output=True, timeout=30)
        assert done.returncode == 0, (argv, done.stderr)
    assert (
        b"coreutils"
        in subprocess.run(
            ["chroot", str(root), "/bin/dd", "--version"], capture_output=True, check=True
        ).stdout
    )
    assert (root / "lib/modules" / manifest["kernel"]["version"] / "modules.alias").is_file()


@pytest.mark.slow
def test_rebuild_from_the_cache_is_byte_identical(discovery_image: Path, tmp_path: Path) -> None:
    cache = (discovery_image.parent / "cache" / discovery.SUBDIR).resolve()
    debs = sorted(cache.glob("*.deb"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / discovery.SUBDIR).symlink_to(cache)
    again = discovery.build(tmp_path).to_dict()
    first = json.loads((discovery_image / discovery.MANIFEST).read_text())
    assert again["files"] == first["files"]
    assert sorted(cache.glob("*.deb")) == debs  # nothing downloaded: the re-run works offline


def test_module_firmware_reads_the_modinfo_strings() -> None:
    ko = b"\x7fELF...\0license=GPL\0firmware=rtl_nic/rtl8168d-1.fw\0author=x\0firmware=a.bin\0"
    assert discovery.module_firmware(ko) == ["a.bin", "rtl_nic/rtl8168d-1.fw"]
    assert discovery.module_firmware(b"\0xfirmware=no.bin\0") == []


HOST_SOURCES = """Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://other.example/x
Suites: stable
Components: contrib
"""


def test_firmware_sources_follow_the_hosts_main_mirrors() -> None:
    assert discovery.firmware_sources(
        HOST_SOURCES, "deb [arch=amd64] http://m.example/d sid main\n"
    ) == (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: non-free-firmware\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\nURIs: http://m.example/d\nSuites: sid\nComponents: non-free-firmware\n"
    )
    with pytest.raises(ZtpdError, match="no Debian `main`"):
        discovery.firmware_sources("Types: deb\nURIs: u\nSuites: s\nComponents: contrib\n")


@pytest.mark.slow
def test_firmware_flag_fetches_with_its_own_sources_and_copies_what_modules_name(
    tmp_path: Path,
) -> None:
    """The --firmware plumbing against the real Debian archive, with the smallest package."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs root and apt-get to fetch firmware packages")
    host_lists = sorted(Path("/var/lib/apt/lists").glob("*"))
    apt = discovery.firmware_apt(tmp_path)
    deb = discovery._deb(tmp_path, "firmware-realtek", False, apt)
    assert deb.version and deb.path.parent == tmp_path
    assert sorted(Path("/var/lib/apt/lists").glob("*")) == host_lists  # the host's apt untouched
    unpacked, root = tmp_path / "x", tmp_path / "root"
    subprocess.run(["dpkg", "-x", str(deb.path), str(unpacked)], check=True)
    included, missing = discovery.copy_firmware(
        unpacked, root, ["rtl_nic/rtl8168d-1.fw", "bnx2/not-here.fw"]
    )
    assert (included, missing) == (["rtl_nic/rtl8168d-1.fw"], ["bnx2/not-here.fw"])
    assert (root / "lib/firmware/rtl_nic/rtl8168d-1.fw").stat().st_size > 0
