"""The discovery image: a Debian kernel and a small initrd that runs the ztpd agent.

``build`` assembles it from Debian packages only: ``apt-get download`` into ``<images>/cache/
discovery/`` (a second run reuses the cached ``.deb`` files and works offline), ``dpkg -x``, then

- the kernel from ``linux-image-amd64``'s current image package, and from its modules only the
  NIC and storage drivers in ``MODULES`` plus their dependencies (from ``modules.dep``);
- busybox-static (the shell, udhcpc, wget, modprobe ...), and the tools the agent runs
  (dmidecode, ipmitool, tcpdump for LLDP; zstd, coreutils' dd and util-linux's fallocate for
  the image write) with exactly the shared libraries they need, found by
  following each ELF file's DT_NEEDED entries through the unpacked packages;
- ``init``, the agent and the udhcpc hook from ``ztpd/data/discovery/`` (text, in git).

The initrd is a newc cpio with sorted entries, owner 0 and a fixed mtime, gzip'ed with a fixed
header, so the same packages give the same bytes. ``manifest.json`` records package versions,
the sha256 of every input .deb and output file, and the modules included.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ztpd.errors import ZtpdError
from ztpd.images import run, sha256

log = logging.getLogger("ztpd.images.discovery")

SUBDIR = "discovery"  # <images>/discovery/{vmlinuz,initrd.img,manifest.json}
KERNEL = "vmlinuz"
INITRD = "initrd.img"
MANIFEST = "manifest.json"
KERNEL_META = "linux-image-amd64"
# Everything the ramdisk's binaries need; a missing library fails the build with its name.
PACKAGES = (
    "busybox-static",
    "dmidecode",
    "ipmitool",
    "tcpdump",
    "libc6",
    "libfreeipmi17",
    "libgcrypt20",
    "libgpg-error0",
    "libreadline8",
    "libtinfo6",
    "libssl3",
    "libpcap0.8",
    "libdbus-1-3",
    "libsystemd0",
    "libcap2",
    "liblzma5",
    "liblz4-1",
    "libzstd1",
    "zstd",  # the agent decompresses raw.zst images
    # The image writer zeroes the image's range in one request (fallocate --zero-range) and
    # then skips all-zero blocks (dd conv=sparse): busybox has neither.
    "coreutils",
    "util-linux",
    "zlib1g",
    "libstdc++6",
    "libgcc-s1",
)
# Copied before busybox's applets are linked, so a path here is the real tool (busybox's shell
# still runs its own applet for a bare name: the agent calls /bin/dd and /usr/bin/fallocate).
TOOLS = (
    "usr/sbin/dmidecode",
    "usr/bin/ipmitool",
    "usr/bin/tcpdump",
    "usr/bin/zstd",
    "bin/dd",
    "usr/bin/fallocate",
)
# Drivers for the NICs and storage controllers found in servers, VMs and clouds; the init loads
# whichever the hardware's modalias asks for. Dependencies are added from modules.dep.
MODULES = (
    # NICs: virtual, Intel, Broadcom, Mellanox/NVIDIA, Realtek, and common others
    "virtio_net", "virtio_pci", "vmxnet3", "hv_netvsc", "ena", "gve",
    "e1000", "e1000e", "igb", "igc", "ixgbe", "ixgbevf", "i40e", "iavf", "ice",
    "tg3", "bnx2", "bnx2x", "bnxt_en", "mlx4_en", "mlx5_core", "r8169",
    "be2net", "qede", "sfc", "cxgb4", "atlantic", "nfp",
    # storage: virtual, SATA/AHCI, NVMe, SAS/RAID HBAs, USB disks
    "virtio_blk", "virtio_scsi", "vmw_pvscsi", "hv_storvsc", "sd_mod",
    "ahci", "ata_piix", "nvme", "megaraid_sas", "mpt3sas", "smartpqi", "hpsa", "aacraid",
    "xhci_pci", "ehci_pci", "usb_storage", "uas",
    # the BMC (ipmitool) and UEFI variables (secure boot state)
    "ipmi_si", "ipmi_devintf", "ipmi_ssif", "efivarfs",
    # the image writer mounts the written root filesystem to put the cloud-init seed in
    "ext4", "crc32c_generic",
)  # fmt: skip
# Firmware the NIC drivers ask for at probe time is in Debian's non-free-firmware component,
# which Debian hosts' apt sources usually leave out. ``build(firmware=True)`` fetches these
# packages with its own apt sources (the host's mirrors and suites, that component only) and
# puts in the initrd only the files the included modules name (their ``modinfo -F firmware``).
FIRMWARE_PACKAGES = (
    "firmware-bnx2", "firmware-bnx2x", "firmware-misc-nonfree", "firmware-realtek",
    "firmware-qlogic",
)  # fmt: skip
FIRMWARE_COMPONENT = "non-free-firmware"
SOURCES = {"init": 0o755, "bin/ztpd-agent": 0o755, "etc/udhcpc.script": 0o755}
_SOURCE_FILES = {"init": "init", "bin/ztpd-agent": "agent", "etc/udhcpc.script": "udhcpc.script"}
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
EPOCH = 0  # every mtime in the initrd


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    path: Path

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "deb": self.path.name, "sha256": sha256(self.path)}


def _run(argv: list[str], cwd: Path | None = None) -> str:
    return run(argv, what="discovery image", cwd=cwd, timeout=900)


def _cached(cache: Path, package: str) -> Path | None:
    debs = sorted(cache.glob(f"{package}_*.deb"), key=lambda p: (p.stat().st_mtime, p.name))
    return debs[-1] if debs else None


def _deb(cache: Path, package: str, refresh: bool, apt: tuple[str, ...] = ()) -> Deb:
    path = None if refresh else _cached(cache, package)
    if path is None:
        log.info("discovery download package=%s", package)
        _run(["apt-get", *apt, "download", package], cwd=cache)
        path = _cached(cache, package)
        if path is None:
            raise ZtpdError(f"discovery image: apt-get download {package} left no .deb")
    version = _run(["dpkg-deb", "--field", str(path), "Version"]).strip()
    return Deb(package, version, path)


def kernel_package(meta: Path) -> str:
    """``linux-image-amd64`` only depends on the versioned image package; that one is the kernel."""
    depends = _run(["dpkg-deb", "--field", str(meta), "Depends"])
    m = re.match(r"\s*(linux-image-[0-9][^\s,(]*)", depends)
    if m is None:
        raise ZtpdError(f"discovery image: {meta.name} depends on no linux-image: {depends!r}")
    return m.group(1)


# --- ELF: which shared libraries a binary needs --------------------------------------------------


def elf_needs(data: bytes) -> tuple[str | None, list[str]]:
    """(interpreter, DT_NEEDED sonames) of a 64-bit little-endian ELF file; (None, []) if static
    or not ELF. Reads program headers only, which is what the dynamic loader itself uses."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None, []
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 0x20)[0],
        *struct.unpack_from("<HH", data, 0x36),
    )
    interp, dynamic, loads = None, None, []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            interp = data[off : off + filesz].rstrip(b"\0").decode()
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (off, filesz)
        elif p_type == 1:  # PT_LOAD: maps DT_STRTAB's address back to a file offset
            loads.append((vaddr, off, filesz))
    if dynamic is None:
        return interp, []
    entries = [struct.unpack_from("<qQ", data, dynamic[0] + i) for i in range(0, dynamic[1], 16)]
    strtab = next((v for tag, v in entries if tag == 5), None)  # DT_STRTAB
    if strtab is None:
        return interp, []
    base = next((off + strtab - va for va, off, size in loads if va <= strtab < va + size), None)
    if base is None:
        raise ZtpdError("discovery image: ELF string table outside any loaded segment")
    needed = []
    for tag, value in entries:
        if tag == 1:  # DT_NEEDED
            end = data.index(b"\0", base + value)
            needed.append(data[base + value : end].decode())
    return interp, needed


def _find_lib(tree: Path, soname: str) -> Path | None:
    for d in LIB_DIRS:
        p = tree / d / soname
        if p.exists():
            return p.resolve()
    return None


def library_closure(tree: Path, binaries: Iterable[Path]) -> dict[str, Path]:
    """Every shared library (by path in the ramdisk) the binaries need, transitively."""
    found: dict[str, Path] = {}
    todo = list(binaries)
    while todo:
        interp, needed = elf_needs(todo.pop().read_bytes())
        wanted = [interp.lstrip("/")] if interp else []
        wanted += [f"lib/x86_64-linux-gnu/{n}" for n in needed]
        for dest in wanted:
            if dest in found:
                continue
            src = _find_lib(tree, dest.rsplit("/", 1)[-1])
            if src is None:
                raise ZtpdError(
                    f"discovery image: {dest.rsplit('/', 1)[-1]} is needed but in none of "
                    "the packages; add its package to PACKAGES"
                )
            found[dest] = src
            todo.append(src)
    return found


# --- kernel modules ------------------------------------------------------------------------------


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``kernel/…/x.ko: dep.ko …`` → {module name: [paths of it and its deps]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[module_name(path)] = [path, *rest.split()]
    return deps


def module_name(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")


def select_modules(deps: dict[str, list[str]], wanted: Iterable[str]) -> list[str]:
    """Paths of the wanted modules and everything they depend on (sorted); unknown names raise."""
    unknown = sorted(w for w in wanted if w not in deps)
    if unknown:
        raise ZtpdError(f"discovery image: no such kernel modules: {', '.join(unknown)}")
    paths: set[str] = set()
    todo = [p for w in wanted for p in deps[w]]
    while todo:
        path = todo.pop()
        if path not in paths:
            paths.add(path)
            todo.extend(deps.get(module_name(path), []))
    return sorted(paths)


def _depmod(busybox: Path, root: Path, kver: str) -> None:
    _run([str(busybox), "depmod", "-b", str(root), kver])


# --- firmware (opt-in) ---------------------------------------------------------------------------


def module_firmware(ko: bytes) -> list[str]:
    """The firmware files a kernel module names: its ``.modinfo`` ``firmware=`` strings."""
    return sorted({m.decode() for m in re.findall(rb"(?<![^\0])firmware=([^\0]+)", ko)})


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            stanzas.append({})
        elif not line.startswith(("#", " ", "\t")) and ":" in line:
            key, _, value = line.partition(":")
            stanzas[-1][key.strip()] = value.strip()
    return [s for s in stanzas if s]


def firmware_sources(host_sources: str, host_list: str = "") -> str:
    """A deb822 sources file for the firmware: every host source of ``main`` packages (from
    ``*.sources`` stanzas and one-line ``sources.list`` entries), with ``non-free-firmware`` as
    its only component. No host source of ``main`` raises: there is no mirror to ask."""
    found = []
    for st in _deb822(host_sources):
        enabled = st.get("Enabled", "yes") != "no"
        if enabled and "deb" in st.get("Types", "").split() and "main" in st.get("Components", ""):
            found.append((st["URIs"], st["Suites"], st.get("Signed-By")))
    for line in host_list.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4 and words[0] == "deb" and "main" in words[3:]:
            found.append((words[1], words[2], None))
    if not found:
        raise ZtpdError("discovery image: the host's apt sources list no Debian `main` to follow")
    out = []
    for uris, suites, signed in found:
        stanza = f"Types: deb\nURIs: {uris}\nSuites: {suites}\nComponents: {FIRMWARE_COMPONENT}\n"
        out.append(stanza + (f"Signed-By: {signed}\n" if signed else ""))
    return "\n".join(out)


def firmware_apt(cache: Path, etc: Path = Path("/etc/apt")) -> tuple[str, ...]:
    """apt-get options that use the build's own sources list and package lists under
    ``<cache>/apt`` (the host's apt configuration stays as it is); runs ``apt-get update``."""
    apt = cache / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "cache").mkdir(exist_ok=True)
    host = "\n\n".join(p.read_text() for p in sorted((etc / "sources.list.d").glob("*.sources")))
    listed = (etc / "sources.list").read_text() if (etc / "sources.list").exists() else ""
    (apt / "sources.list.d").mkdir(exist_ok=True)
    (apt / "sources.list.d" / "firmware.sources").write_text(firmware_sources(host, listed))
    options = (
        "-o", f"Dir::Etc::SourceList={apt / 'none.list'}",
        "-o", f"Dir::Etc::SourceParts={apt / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    )  # fmt: skip
    _run(["apt-get", *options, "update"])
    return options


def copy_firmware(unpacked: Path, root: Path, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Copy the named files from the unpacked firmware packages' lib/firmware into the
    ramdisk's (links followed); (included, missing)."""
    src_dir = unpacked / "lib" / "firmware"
    included, missing = [], []
    for name in sorted(set(names)):
        src = src_dir / name
        if src.is_file():
            _copy(src.resolve(), root / "lib" / "firmware" / name)
            included.append(name)
        else:
            missing.append(name)
    return included, missing


# --- the cpio archive ----------------------------------------------------------------------------


def _newc(name: str, mode: int, data: bytes, ino: int, nlink: int = 1) -> bytes:
    fields = (ino, mode, 0, 0, nlink, EPOCH, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            yield Path(dirpath) / n


def cpio(root: Path) -> bytes:
    """A newc archive of ``root``: sorted, owner 0, fixed mtime — the same tree, the same bytes."""
    out = io.BytesIO()
    for ino, path in enumerate(sorted(_walk(root)), start=1):
        name = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out.write(_newc(name, stat.S_IFLNK | 0o777, os.readlink(path).encode(), ino))
        elif stat.S_ISDIR(st.st_mode):
            out.write(_newc(name, stat.S_IFDIR | 0o755, b"", ino, 2))
        else:
            perm = 0o755 if st.st_mode & 0o111 else 0o644
            out.write(_newc(name, stat.S_IFREG | perm, path.read_bytes(), ino))
    out.write(_newc("TRAILER!!!", 0, b"", 0))
    return out.getvalue()


# --- the build -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _copy(src: Path, dest: Path, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def _assemble(
    unpacked: Path, root: Path, kver: str, modules: list[str], busybox_applets: list[str]
) -> None:
    for dest, mode in SOURCES.items():
        text = resources.files("ztpd").joinpath("data/discovery", _SOURCE_FILES[dest]).read_bytes()
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        (root / dest).write_bytes(text)
        (root / dest).chmod(mode)
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    for d in ("proc", "sys", "dev", "run", "tmp", "usr/sbin", "usr/bin", "sbin"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _copy(unpacked / "bin/busybox", root / "bin/busybox", 0o755)
    tools = [unpacked / t for t in TOOLS]
    for t in TOOLS:
        _copy(unpacked / t, root / t, 0o755)
    for applet in busybox_applets:
        link = root / applet
        if applet and not link.exists() and applet != "bin/busybox":
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for dest, src in sorted(library_closure(unpacked, tools).items()):
        _copy(src, root / dest, 0o755)
    moddir = Path("lib/modules") / kver
    for rel in modules:
        _copy(unpacked / moddir / rel, root / moddir / rel)
    for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (unpacked / moddir / extra).exists():
            _copy(unpacked / moddir / extra, root / moddir / extra)
    _depmod(root / "bin/busybox", root, kver)


def build(images_dir: Path, *, refresh: bool = False, firmware: bool = False) -> Manifest:
    """Build ``<images>/discovery/{vmlinuz,initrd.img,manifest.json}``; download only what the
    cache lacks (or everything with ``refresh``). ``firmware`` adds the non-free NIC firmware
    the modules name (FIRMWARE_PACKAGES, fetched with the build's own apt sources)."""
    cache = images_dir / "cache" / SUBDIR
    out = images_dir / SUBDIR
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = _deb(cache, KERNEL_META, refresh)
    debs = [meta, _deb(cache, kernel_package(meta.path), refresh)]
    debs += [_deb(cache, p, refresh) for p in PACKAGES]
    if firmware:
        # The package lists are fetched only when a firmware .deb is not cached yet: offline
        # re-runs stay offline.
        need = refresh or any(_cached(cache, p) is None for p in FIRMWARE_PACKAGES)
        apt = firmware_apt(cache) if need else ()
        debs += [_deb(cache, p, refresh, apt) for p in FIRMWARE_PACKAGES]
    with tempfile.TemporaryDirectory(prefix="ztpd-discovery-") as tmp:
        unpacked, root = Path(tmp) / "x", Path(tmp) / "root"
        for deb in debs:
            _run(["dpkg", "-x", str(deb.path), str(unpacked)])
        kvers = sorted(p.name for p in (unpacked / "lib/modules").iterdir())
        if len(kvers) != 1:
            raise ZtpdError(f"discovery image: expected one kernel, found {kvers}")
        kver = kvers[0]
        busybox = unpacked / "bin/busybox"
        _depmod(busybox, unpacked, kver)  # Debian ships no modules.dep; depmod makes it
        deps = parse_modules_dep((unpacked / "lib/modules" / kver / "modules.dep").read_text())
        modules = select_modules(deps, MODULES)
        applets = [a.lstrip("/") for a in _run([str(busybox), "--list-full"]).split()]
        root.mkdir()
        _assemble(unpacked, root, kver, modules, applets)
        moddir = unpacked / "lib/modules" / kver
        wanted = [n for m in modules for n in module_firmware((moddir / m).read_bytes())]
        fw_in, fw_missing = copy_firmware(unpacked, root, wanted) if firmware else ([], wanted)
        archive = cpio(root)
        initrd = gzip.compress(archive, compresslevel=9, mtime=EPOCH)
        _write(out / INITRD, initrd)
        _write(out / KERNEL, (unpacked / "boot" / f"vmlinuz-{kver}").read_bytes())
    manifest: dict[str, Any] = {
        "kernel": {"version": kver, "package": debs[1].package},
        "packages": {d.package: d.to_dict() for d in debs},
        "modules": {
            "wanted": sorted(MODULES),
            "included": sorted(module_name(p) for p in modules),
        },
        # What the modules name, and which of those files the initrd has (build --firmware).
        "firmware": {"included": fw_in, "missing": sorted(set(fw_missing))},
        "initrd_uncompressed_bytes": len(archive),
        "files": {
            name: {"sha256": sha256(out / name), "size": (out / name).stat().st_size}
            for name in (KERNEL, INITRD)
        },
        "cmdline": "ztpd.url=<base url> ztpd.token=<agent token> BOOTIF=01-<mac> "
        "[ztpd.heartbeat=10] [ztpd.lldp_wait=5]",
    }
    _write(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    log.info(
        "discovery image ready kernel=%s modules=%d initrd_bytes=%d",
        kver,
        len(modules),
        (out / INITRD).stat().st_size,
    )
    return Manifest(manifest)


def _write(dest: Path, data: bytes) -> None:
    # Beside the target and renamed, so a node never downloads a half-written file.
    part = dest.with_name(f".{dest.name}.part")
    part.write_bytes(data)
    os.replace(part, dest)
