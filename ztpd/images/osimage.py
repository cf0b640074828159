"""Bootable OS disk images for ``os.method: image``, built from Debian packages.

``build(images_dir, "debian-12")`` makes ``<images>/os/debian-12/``:

    debian-12.raw        GPT disk: 1 MiB BIOS boot, 64 MiB ESP, ext4 root (last, so it can grow)
    debian-12.raw.zst    the same, compressed (what the agent streams)
    manifest.json        sha256 and size of both, the recipe and the root filesystem's UUID

The root filesystem comes from ``debootstrap`` (a minimal bookworm with the stock kernel,
openssh-server and cloud-init) against the Debian mirror apt on this machine already uses; it is
packed with ``mkfs.ext4 -d`` and the ESP with mtools: no loop device, and nothing mounted but
/proc inside the tree while apt runs. Both firmwares end in the same ``/boot/grub/grub.cfg`` on
the root filesystem, found by its UUID, which boots the ``/vmlinuz`` and ``/initrd.img`` links
Debian keeps current, so a kernel upgrade on the node takes effect:

- UEFI boots a standalone GRUB, ``EFI/BOOT/BOOTX64.EFI`` on the ESP.
- BIOS boots GRUB's ``boot.img`` in the MBR, which loads a ``core.img`` (``grub-mkimage -O
  i386-pc`` with every module it needs built in) from the BIOS boot partition. The image file
  is patched the way ``grub-bios-setup`` patches a disk (see ``bios_boot``), because that tool
  will not target a file: it resolves the host's devices and would need a loop device.

GRUB comes from the build machine's ``grub-efi-amd64-bin`` and ``grub-pc-bin`` packages (the
Makefile's apt step installs them), so ``grub-mkimage`` and its modules are the same version.

The installed system learns who it is from a cloud-init NoCloud seed (the agent writes
``/var/lib/cloud/seed/nocloud/{user-data,meta-data}``, rendered by ``ztpd.install`` for method
``image``): hostname, users, keys, network, growpart, and ``phone_home`` to ztpd with the SSH
host keys, which cloud-init generates on first boot (the image carries none).

A build needs root (debootstrap, chroot) and a few minutes; the result is cached: a second call
with the same recipe returns the manifest without building. Images are never committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ztpd.errors import NotFound, ZtpdError
from ztpd.images import run, sha256

log = logging.getLogger("ztpd.images.osimage")

OS_DIR = "os"
MANIFEST = "manifest.json"
MIB = 1 << 20
BIOS_BOOT_MIB = 1
ESP_MIB = 64
ROOT_LABEL = "ztpd-root"
ESP_LABEL = "ZTPD-ESP"
ROOT_SLACK_MIB = 48  # journal (16) + first-boot writes before the root grows
# quiet: under emulation every console byte costs a trap; errors still reach the console.
KERNEL_ARGS = "ro quiet console=tty0 console=ttyS0,115200n8"
GRUB_ENTRY = "Debian GNU/Linux"  # the image's one menu entry
# What GRUB prints, on the serial console too, as it loads that entry: a console that shows it
# is a machine booting the installed system from its disk.
GRUB_BOOTING = f"Booting `{GRUB_ENTRY}'"
BUILD_TIMEOUT = 1800
CHROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Kernel module trees a headless server or VM does without.
# Kept: net/ethernet, block, scsi, nvme, ata, md, dm, fs, virtio, usb storage and HID,
# infiniband, ipmi, and the small DRM drivers behind BMC and VM consoles (ast, mgag200,
# bochs, simpledrm, virtio-gpu); only the big desktop GPU drivers go.
UNNEEDED_MODULES = (
    *("sound", "net/wireless", "net/mac80211", "net/bluetooth", "net/nfc", "net/can"),
    *("net/ieee802154", "net/atm", "drivers/net/wireless", "drivers/net/wwan"),
    *("drivers/net/can", "drivers/net/ieee802154", "drivers/net/hamradio", "drivers/bluetooth"),
    *("drivers/media", "drivers/staging", "drivers/iio", "drivers/isdn", "drivers/nfc"),
    *("drivers/atm", "drivers/pcmcia", "drivers/input/joystick", "drivers/input/touchscreen"),
    *("drivers/input/tablet", "drivers/platform/chrome", "drivers/platform/surface"),
    *("drivers/comedi", "drivers/mtd", "drivers/w1", "drivers/soundwire", "drivers/accessibility"),
    *("drivers/net/fddi", "drivers/net/arcnet", "drivers/net/appletalk", "drivers/net/hippi"),
    *("drivers/gpu/drm/amd", "drivers/gpu/drm/i915", "drivers/gpu/drm/nouveau"),
    *("drivers/gpu/drm/radeon", "drivers/gpu/drm/vmwgfx", "drivers/gpu/drm/gma500"),
)
# Written before the recipe's packages are installed, so dpkg never unpacks these; what
# debootstrap itself unpacked first is removed by the recipe's trim.
DPKG_EXCLUDES = "\n".join(
    (
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/lintian/*",
        "path-exclude=/usr/share/locale/*",
        "path-include=/usr/share/locale/locale.alias",
        "path-include=/usr/share/locale/en*",
        "path-exclude=/boot/System.map-*",
        *(
            f"path-exclude={lib}/modules/*/kernel/{tree}/*"
            for lib in ("/lib", "/usr/lib")  # bookworm's kernel packages ship /lib, later /usr/lib
            for tree in UNNEEDED_MODULES
        ),
        "",
    )
)
# The initramfs only has to find a local ext4 root: MODULES=most (any disk controller, for
# hardware the image has never seen) without what it adds for network, SAN and other file
# system roots, which is two thirds of its modules. Under emulation every byte is read by the
# firmware and unpacked by the kernel on each boot.
INITRAMFS_UNNEEDED = (
    *("drivers/net", "drivers/infiniband", "drivers/target", "drivers/nvme/target"),
    *("drivers/nvme/host/nvme-rdma.ko", "drivers/nvme/host/nvme-tcp.ko"),
    *("drivers/nvme/host/nvme-fc.ko", "drivers/block/rbd.ko", "drivers/block/nbd.ko"),
    "drivers/block/drbd",
    *(f"net/{tree}" for tree in ("ceph", "core", "dns_resolver", "ipv4", "ipv6", "psample")),
    *(f"net/{tree}" for tree in ("sunrpc", "tls", "vmw_vsock", "xfrm")),
    *(
        f"drivers/scsi/{hba}"
        for hba in (
            *("qla2xxx", "qla4xxx", "lpfc", "bfa", "bnx2fc", "bnx2i", "qedf", "qedi", "fcoe"),
            *("libfc", "cxgbi", "be2iscsi", "csiostor", "fnic", "snic", "iscsi_tcp.ko"),
            *("libiscsi.ko", "libiscsi_tcp.ko", "scsi_transport_iscsi.ko"),
            *("iscsi_boot_sysfs.ko", "scsi_debug.ko"),
        )
    ),
    *(
        f"fs/{fs}"
        for fs in (
            *("btrfs", "f2fs", "fscache", "isofs", "jfs", "lockd", "netfs", "nfs"),
            *("nfs_common", "reiserfs", "udf", "xfs"),
        )
    ),
)
# A local initramfs-tools hook: they run after the modules are added, before depmod.
INITRAMFS_HOOK = (
    "#!/bin/sh\n"
    "# ztpd: the root is a local ext4 disk; drop the network, SAN and other file system drivers.\n"
    '[ "$1" = prereqs ] && exit 0\n'
    'cd "${DESTDIR}/lib/modules/${version}/kernel" || exit 0\n'
    f"rm -rf {' '.join(INITRAMFS_UNNEEDED)}\n"
)
# Host keys cloud-init makes on first boot. No RSA: under TCG one RSA-3072 key takes most of
# a minute; ECDSA and Ed25519 take a second, and every OpenSSH since 6.5 uses them.
SSH_KEY_TYPES = ("ecdsa", "ed25519")
# Trimmed cloud-init stages: the seed's needs (hostname, users, keys, growpart, files,
# commands, apt, packages, phone_home) and nothing that probes for what a node has not got.
# The config stage's modules run first thing in the final stage instead (cloud-config.service
# is masked): each stage is a Python start of ten seconds under TCG.
CLOUD_MODULES = {
    "cloud_init_modules": (
        *("seed_random", "bootcmd", "write-files", "growpart", "resizefs", "set_hostname"),
        *("update_hostname", "update_etc_hosts", "users-groups", "ssh"),
    ),
    "cloud_config_modules": (),
    "cloud_final_modules": (
        *("set-passwords", "apt-configure", "timezone", "runcmd"),
        *("package-update-upgrade-install", "write-files-deferred", "scripts-per-once"),
        *("scripts-per-boot", "scripts-per-instance", "scripts-user"),
        *("ssh-authkey-fingerprints", "phone-home", "final-message", "power-state-change"),
    ),
}
# Periodic jobs that would start on a freshly booted node and hold dpkg's lock or the disk
# while cloud-init installs packages; an operator re-enables what the site wants.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "cloud-config.service",  # its modules run in cloud-final (CLOUD_MODULES)
)
# GPT partition type GUIDs (sfdisk accepts them verbatim).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
GRUB_PC_DIR = Path("/usr/lib/grub/i386-pc")
# Built into the BIOS core.img: the image's root filesystem carries no GRUB modules to load.
GRUB_PC_MODULES = (
    *("biosdisk", "part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid", "linux"),
    *("normal", "configfile", "echo", "test", "gzio", "serial", "terminal"),
)
SECTOR = 512
# Offsets grub-bios-setup patches (grub's include/grub/i386/pc/boot.h, util/setup.c).
MBR_BPB = (0x03, 0x5A)  # the BIOS parameter block: kept from the disk's own MBR
MBR_KERNEL_SECTOR = 0x5C  # u64 LBA of core.img's first sector
MBR_BOOT_DRIVE = 0x64  # 0xff: use the drive the BIOS booted from (DL)
# A 2-byte jmp over boot.img's drive check; as NOPs (setup.c does this for hard disks), a
# BIOS that passes a floppy number in DL for a disk boot gets drive 0x80 instead.
MBR_DRIVE_CHECK = 0x66
MBR_CODE_END = 0x1B8  # disk signature and partition table start here: kept
CORE_BLOCKLIST = SECTOR - 12  # diskboot.img's first blocklist: u64 start, u16 len, u16 segment


@dataclass(frozen=True)
class Recipe:
    """What goes into one image; its fingerprint decides whether a cached image still fits."""

    name: str
    suite: str
    packages: tuple[str, ...]
    # Trimmed after install: documentation and translations nobody reads on a node.
    trim: tuple[str, ...] = (
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/doc",
        "var/cache/apt/archives",
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
        "var/lib/apt/lists",
        "var/cache/debconf/templates.dat-old",
        "var/cache/debconf/config.dat-old",
        "var/lib/dpkg/status-old",
    )
    version: int = 6  # bump when the build steps change what ends up in the image

    def fingerprint(self, mirror: str) -> str:
        text = json.dumps({**asdict(self), "mirror": mirror}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


RECIPES: dict[str, Recipe] = {
    "debian-12": Recipe(
        name="debian-12",
        suite="bookworm",
        packages=(
            "linux-image-amd64",
            "systemd-sysv",
            "udev",
            "openssh-server",
            "cloud-init",
            "cloud-guest-utils",  # growpart: cloud-init grows the root partition to the disk
            "ifupdown",  # cloud-init's network renderer on Debian
            "isc-dhcp-client",
            "iproute2",
            "netbase",
            "sudo",
            "e2fsprogs",
            "zstd",  # initramfs-tools compresses with it (faster to unpack than its gzip fallback)
        ),
    ),
}


@dataclass(frozen=True)
class ImageFile:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class OsImage:
    name: str
    fingerprint: str
    mirror: str
    suite: str
    root_uuid: str
    files: tuple[ImageFile, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "mirror": self.mirror,
            "suite": self.suite,
            "root_uuid": self.root_uuid,
            "files": {f.name: {"sha256": f.sha256, "size": f.size} for f in self.files},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OsImage:
        return cls(
            name=d["name"],
            fingerprint=d["fingerprint"],
            mirror=d["mirror"],
            suite=d["suite"],
            root_uuid=d["root_uuid"],
            files=tuple(
                ImageFile(n, f["sha256"], int(f["size"])) for n, f in sorted(d["files"].items())
            ),
        )

    def file(self, suffix: str) -> ImageFile:
        """The file ending in ``suffix`` (".raw", ".raw.zst")."""
        for f in self.files:
            if f.name == f"{self.name}{suffix}":
                return f
        raise NotFound(f"image {self.name} has no {suffix} file")


# --- the mirror apt already uses ------------------------------------------------------------


def _sources(apt_dir: Path) -> list[tuple[list[str], list[str], list[str]]]:
    """(uris, suites, components) of every enabled ``deb`` source, deb822 and one-line."""
    found: list[tuple[list[str], list[str], list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append(([words[1]], [words[2]], words[3:]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                found.append(
                    (
                        fields.get("uris", "").split(),
                        fields.get("suites", "").split(),
                        fields.get("components", "").split(),
                    )
                )
    return found


def apt_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The URL apt on this machine uses for ``suite`` main (debootstrap takes the same)."""
    for uris, suites, components in _sources(apt_dir):
        if suite in suites and "main" in components and uris:
            return uris[0].rstrip("/")
    raise ZtpdError(
        f"images: no apt source for {suite} main in {apt_dir}/sources.list*; "
        "pass the mirror explicitly"
    )


# --- building -------------------------------------------------------------------------------


def _unmount_below(path: Path) -> None:
    """debootstrap mounts /proc and /sys inside the target; a killed build may leave them."""
    resolved = str(path.resolve())
    mounts = Path("/proc/mounts").read_text().splitlines()
    targets = [m.split()[1] for m in mounts if len(m.split()) > 1]
    for target in sorted((t for t in targets if t.startswith(resolved + "/")), reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def _chroot(root: Path, *argv: str) -> None:
    run(
        ["chroot", str(root), *argv],
        timeout=BUILD_TIMEOUT,
        env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "PATH": CHROOT_PATH},
    )


def _install(root: Path, recipe: Recipe, mirror: str, cache: Path) -> None:
    """A minbase tree from debootstrap, then the recipe's packages with apt inside it: apt
    orders the configuration of a large set (cloud-init's Python stack) where debootstrap's
    --include does not."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--components=main",
                f"--cache-dir={cache.resolve()}",
                recipe.suite,
                str(root),
                mirror,
            ],
            timeout=BUILD_TIMEOUT,
            env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )
    except ZtpdError as e:
        log_file = root / "debootstrap/debootstrap.log"
        tail = log_file.read_text(errors="replace")[-1500:] if log_file.is_file() else ""
        raise ZtpdError(f"{e.message}\n{tail}") from None
    _unmount_below(root)
    dpkg_cfg = root / "etc/dpkg/dpkg.cfg.d"
    dpkg_cfg.mkdir(parents=True, exist_ok=True)
    (dpkg_cfg / "ztpd-excludes").write_text(DPKG_EXCLUDES)
    # In place before the kernel's package makes the initramfs.
    hook = root / "etc/initramfs-tools/hooks/ztpd-local-root"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(INITRAMFS_HOOK)
    hook.chmod(0o755)
    # No daemon starts inside the build; name resolution as on this machine.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    try:
        _chroot(root, "apt-get", "update", "-q")
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *recipe.packages)
        _chroot(root, "apt-get", "clean")
    finally:
        _unmount_below(root)
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)


def _configure(root: Path, root_uuid: str) -> None:
    """Make the debootstrapped tree a system that boots anywhere and is made unique later."""
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n")
    (root / "etc/fstab").write_text(
        f"UUID={root_uuid}\t/\text4\terrors=remount-ro\t0\t1\n"
        f"LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n"
    )
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    grub = root / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    # Read by both loaders; edit it on the node to change kernel arguments.
    (grub / "grub.cfg").write_text(
        "set timeout=0\n"
        f'menuentry "{GRUB_ENTRY}" {{\n'
        f"  search --no-floppy --fs-uuid {root_uuid} --set=root\n"
        f"  linux /vmlinuz root=UUID={root_uuid} {KERNEL_ARGS}\n"
        "  initrd /initrd.img\n"
        "}\n"
    )
    cloud = root / "etc/cloud/cloud.cfg.d"
    cloud.mkdir(parents=True, exist_ok=True)
    # Only the seed ztpd's agent writes (or a CIDATA volume); never probe cloud metadata services.
    modules = "".join(f"{stage}: [{', '.join(names)}]\n" for stage, names in CLOUD_MODULES.items())
    (cloud / "90-ztpd.cfg").write_text(
        f"datasource_list: [NoCloud, None]\nssh_genkeytypes: [{', '.join(SSH_KEY_TYPES)}]\n"
        f"{modules}"
    )
    for unit in MASKED_UNITS:
        masked = root / "etc/systemd/system" / unit
        masked.unlink(missing_ok=True)
        masked.symlink_to("/dev/null")
    # What the seed's ssh_pwauth: false asks for, already in place: cloud-init finds nothing
    # to change and does not restart sshd (seconds under TCG).
    sshd = root / "etc/ssh/sshd_config"
    sshd.write_text(
        re.sub(r"(?m)^#?PasswordAuthentication .*$", "PasswordAuthentication no", sshd.read_text())
    )
    # Every node gets its own SSH host keys and machine id on first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    # Without cloud-init's keys (no seed), sshd still starts: the same types, made here.
    keygen = "; ".join(
        f"test -e /etc/ssh/ssh_host_{t}_key || ssh-keygen -q -t {t} -N '' "
        f"-f /etc/ssh/ssh_host_{t}_key"
        for t in SSH_KEY_TYPES
    )
    (dropin / "ztpd-hostkeys.conf").write_text(f'[Service]\nExecStartPre=/bin/sh -c "{keygen}"\n')
    # The tree is as up to date as /usr: no hwdb, ldconfig or sysusers rebuild on first boot
    # (ConditionNeedsUpdate= compares these stamps with /usr's mtime).
    for stamp in (root / "etc/.updated", root / "var/.updated"):
        stamp.write_text("")
    for log_file in (root / "var/log").rglob("*"):
        if log_file.is_file():
            log_file.unlink()


def _trim(root: Path, recipe: Recipe) -> None:
    for rel in recipe.trim:
        target = root / rel
        if target.is_file():
            target.unlink()
        if not target.is_dir():
            continue
        for child in target.iterdir():
            # Licences stay: usr/share/doc/*/copyright.
            if rel == "usr/share/doc" and child.is_dir() and not child.is_symlink():
                for f in child.iterdir():
                    if f.name != "copyright":
                        shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()
            elif child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def _tree_bytes(root: Path) -> int:
    """Bytes the tree takes in 4 KiB blocks (as on ext4), not the sum of file sizes."""
    return int(run(["du", "-s", "--block-size=1", str(root)]).split()[0])


def _early_cfg(work: Path, root_uuid: str) -> Path:
    """GRUB's built-in first config (both firmwares): GRUB on the serial console too (before
    the prefix moves, so the module still loads from where GRUB started), then the root
    filesystem's grub.cfg. No ``if``: BIOS core.img runs this with GRUB's rescue parser, which
    has none (a failing line is reported and the next one runs)."""
    early = work / "early.cfg"
    early.write_text(
        "serial --unit=0 --speed=115200\n"
        "terminal_input --append serial\n"
        "terminal_output --append serial\n"
        f"search --no-floppy --fs-uuid {root_uuid} --set=root\n"
        "set prefix=($root)/boot/grub\n"
        "configfile ($root)/boot/grub/grub.cfg\n"
    )
    return early


def _esp(work: Path, early: Path) -> Path:
    """A FAT ESP with a standalone GRUB that hands over to the root filesystem's grub.cfg."""
    efi = work / "BOOTX64.EFI"
    run(
        [
            "grub-mkstandalone",
            "-O",
            "x86_64-efi",
            "-o",
            str(efi),
            "--modules=part_gpt part_msdos ext2 fat search search_fs_uuid linux normal "
            "configfile echo all_video gzio",
            "--locales=",
            "--themes=",
            "--fonts=",
            f"boot/grub/grub.cfg={early}",
        ]
    )
    esp = work / "esp.img"
    esp.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-F", "32", "-n", ESP_LABEL, str(esp), str(ESP_MIB * 1024)])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], env=env)
    run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    return esp


def _core_img(work: Path, early: Path) -> bytes:
    """GRUB's BIOS core.img: diskboot.img, then the kernel with its modules and ``early``."""
    core = work / "core.img"
    run(
        [
            *("grub-mkimage", "-O", "i386-pc", "-d", str(GRUB_PC_DIR)),
            *("-o", str(core), "-c", str(early), "-p", "/boot/grub", *GRUB_PC_MODULES),
        ]
    )
    return core.read_bytes()


def bios_boot(mbr: bytes, boot: bytes, core: bytes, core_lba: int) -> tuple[bytes, bytes]:
    """The disk's first sector and core.img, patched as ``grub-bios-setup`` patches them for
    a core.img embedded at ``core_lba`` (a BIOS boot partition).

    ``mbr`` keeps its BPB area, disk signature and (protective) partition table; the rest is
    ``boot``'s code, told where core.img starts, to use the drive the BIOS names, and with
    its hard-disk drive check enabled. core.img's first blocklist names the sectors after its
    first one.
    """
    if len(mbr) != SECTOR or len(boot) != SECTOR or mbr[510:] != b"\x55\xaa":
        raise ZtpdError("images: BIOS boot needs a 512-byte MBR with its 55aa signature")
    if len(core) <= SECTOR:
        raise ZtpdError(f"images: core.img of {len(core)} bytes is no GRUB core image")
    first = bytearray(mbr)
    first[: MBR_BPB[0]] = boot[: MBR_BPB[0]]
    first[MBR_BPB[1] : MBR_CODE_END] = boot[MBR_BPB[1] : MBR_CODE_END]
    struct.pack_into("<Q", first, MBR_KERNEL_SECTOR, core_lba)
    first[MBR_BOOT_DRIVE] = 0xFF
    first[MBR_DRIVE_CHECK : MBR_DRIVE_CHECK + 2] = b"\x90\x90"
    patched = bytearray(core)
    sectors = -(-len(core) // SECTOR)
    _, _, segment = struct.unpack_from("<QHH", patched, CORE_BLOCKLIST)
    struct.pack_into("<QHH", patched, CORE_BLOCKLIST, core_lba + 1, sectors - 1, segment)
    # The entry below is the list's terminator: zero.
    struct.pack_into("<QHH", patched, CORE_BLOCKLIST - 12, 0, 0, 0)
    return bytes(first), bytes(patched)


def _disk(work: Path, name: str, esp: Path, rootfs: Path, core: bytes) -> Path:
    disk = work / f"{name}.raw"
    disk.unlink(missing_ok=True)
    if len(core) > BIOS_BOOT_MIB * MIB:
        raise ZtpdError(f"images: core.img ({len(core)} bytes) does not fit the BIOS boot part")
    bios_start = 1
    esp_start = bios_start + BIOS_BOOT_MIB
    root_start = esp_start + ESP_MIB
    root_mib = rootfs.stat().st_size // MIB
    total_mib = root_start + root_mib + 1  # + the backup GPT
    with disk.open("wb") as f:
        f.truncate(total_mib * MIB)
    layout = (
        "label: gpt\n"
        f"start={bios_start * MIB // 512}, size={BIOS_BOOT_MIB * MIB // 512}, type={BIOS_BOOT}, "
        'name="bios"\n'
        f'start={esp_start * MIB // 512}, size={ESP_MIB * MIB // 512}, type={ESP}, name="esp"\n'
        f"start={root_start * MIB // 512}, size={root_mib * MIB // 512}, type={LINUX}, "
        'name="root"\n'
    )
    sfdisk = ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)]
    run(sfdisk, input=layout, timeout=60)
    for part, start in ((esp, esp_start), (rootfs, root_start)):
        run(
            [
                "dd",
                f"if={part}",
                f"of={disk}",
                "bs=1M",
                f"seek={start}",
                "conv=notrunc,sparse",
                "status=none",
            ]
        )
    core_lba = bios_start * MIB // SECTOR
    with disk.open("r+b") as f:
        first, patched = bios_boot(
            f.read(SECTOR), (GRUB_PC_DIR / "boot.img").read_bytes(), core, core_lba
        )
        f.seek(0)
        f.write(first)
        f.seek(core_lba * SECTOR)
        f.write(patched)
    return disk


def cached(images_dir: Path, name: str) -> OsImage | None:
    """The manifest of a built image whose files are all present with their recorded size."""
    out = images_dir / OS_DIR / name
    try:
        image = OsImage.from_dict(json.loads((out / MANIFEST).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for f in image.files:
        path = out / f.name
        if not path.is_file() or path.stat().st_size != f.size:
            return None
    return image


def write_manifest(out: Path, image: OsImage) -> None:
    """``out/manifest.json`` for ``image``, replaced in one step: what registers it."""
    part = out / f".{MANIFEST}.part"
    part.write_text(json.dumps(image.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(part, out / MANIFEST)


def build(
    images_dir: Path,
    name: str,
    *,
    mirror: str | None = None,
    apt_dir: Path = Path("/etc/apt"),
    refresh: bool = False,
) -> OsImage:
    """Build (or reuse) image ``name``; returns its manifest. Needs root."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise NotFound(f"no image recipe {name!r} (known: {', '.join(sorted(RECIPES))})")
    mirror = (mirror or apt_mirror(recipe.suite, apt_dir)).rstrip("/")
    fingerprint = recipe.fingerprint(mirror)
    have = None if refresh else cached(images_dir, name)
    if have is not None and have.fingerprint == fingerprint:
        log.info("os image reuse name=%s fingerprint=%s", name, fingerprint)
        return have
    if os.geteuid() != 0:
        raise ZtpdError(f"images: building {name} needs root (debootstrap and chroot)")
    out = images_dir / OS_DIR / name
    work = images_dir / OS_DIR / f".build-{name}"
    _unmount_below(work)
    shutil.rmtree(work, ignore_errors=True)
    root = work / "root"
    root.mkdir(parents=True)
    root_uuid = str(uuid.uuid4())
    log.info("os image build name=%s suite=%s mirror=%s", name, recipe.suite, mirror)
    try:
        _install(root, recipe, mirror, images_dir / OS_DIR / "cache")
        _configure(root, root_uuid)
        _trim(root, recipe)
        rootfs = work / "root.ext4"
        # The tree, ext4's inode tables (1/32 of the size at -i 8192) and journal, and room
        # for what the first boot writes before cloud-init's growpart and resize2fs take the
        # rest of the node's disk: every MiB here is written to each node under emulation.
        used = _tree_bytes(root)
        with rootfs.open("wb") as f:
            f.truncate(((used + used // 16) // MIB + ROOT_SLACK_MIB) * MIB)
        early = _early_cfg(work, root_uuid)
        esp = _esp(work, early)
        core = _core_img(work, early)
        run(
            [
                *(
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-L",
                    ROOT_LABEL,
                    "-U",
                    root_uuid,
                    "-m",
                    "1",
                    "-J",
                    "size=16",
                    # Under 512 MiB mke2fs would pick its "small" type (1 KiB blocks).
                    *("-T", "default", "-b", "4096", "-i", "8192"),
                ),
                *("-E", "root_owner=0:0", "-d", str(root), str(rootfs)),
            ],
            timeout=BUILD_TIMEOUT,
        )
        disk = _disk(work, name, esp, rootfs, core)
        run(["zstd", "-q", "-f", "-T0", "-6", str(disk), "-o", f"{disk}.zst"], timeout=900)
        out.mkdir(parents=True, exist_ok=True)
        files = []
        for path in (disk, Path(f"{disk}.zst")):
            dest = out / path.name
            os.replace(path, dest)
            files.append(ImageFile(dest.name, sha256(dest), dest.stat().st_size))
        image = OsImage(name, fingerprint, mirror, recipe.suite, root_uuid, tuple(files))
        write_manifest(out, image)
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "os image ready name=%s raw_bytes=%s sha256=%s",
        name,
        image.file(".raw").size,
        image.file(".raw").sha256,
    )
    return image
