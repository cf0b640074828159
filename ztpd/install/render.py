"""Renders a node's install files from ``boot-templates/install/`` and checks them.

Input: the profile's ``os`` section, the node (hostname, MACs), its latest inventory (root
disk, PXE interface), the node's install URL (with its token) and the package mirrors. Output:
one file's complete, checked text, or ``RenderError`` — never half a file.

    method       files (under <base>/install/<node>/<token>/)
    autoinstall  boot.ipxe, user-data, meta-data, vendor-data   (Ubuntu, NoCloud over HTTP)
    preseed      boot.ipxe, preseed.cfg, post.sh                (Debian installer)
    kickstart    boot.ipxe, ks.cfg, post.sh                     (Rocky / Alma / RHEL)
    image        user-data, meta-data        (the NoCloud seed the agent writes into the image)

Everything a template needs is computed here (disk paths, network, quoted strings), so the
templates only place values and use jinja2's built-in filters; they render in a sandbox with
StrictUndefined. ``boot.ipxe`` loads the installer's kernel and initrd from
``<images>/installers/<release>/`` (served under /files/).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ztpd.errors import NotFound, Problem, RenderError, SourceError
from ztpd.install import checks
from ztpd.install.rootdisk import choose, stable_path
from ztpd.inventory.schema import Inventory
from ztpd.model import Node
from ztpd.profiles.model import Os

log = logging.getLogger("ztpd.install")

INSTALL_DIR = "install"


@dataclass(frozen=True)
class Release:
    name: str
    distro: str
    version: str
    codename: str
    method: str
    kickstart_syntax: str | None = None


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("debian-11", "debian", "11", "bullseye", "preseed"),
        Release("debian-12", "debian", "12", "bookworm", "preseed"),
        Release("debian-13", "debian", "13", "trixie", "preseed"),
        Release("ubuntu-22.04", "ubuntu", "22.04", "jammy", "autoinstall"),
        Release("ubuntu-24.04", "ubuntu", "24.04", "noble", "autoinstall"),
        Release("rocky-8", "rocky", "8", "", "kickstart", "RHEL8"),
        Release("rocky-9", "rocky", "9", "", "kickstart", "RHEL9"),
        Release("almalinux-8", "almalinux", "8", "", "kickstart", "RHEL8"),
        Release("almalinux-9", "almalinux", "9", "", "kickstart", "RHEL9"),
    )
}


def _check_ipxe(name: str, text: str) -> None:
    if not text.startswith("#!ipxe\n"):
        raise RenderError(f"{name}: output does not start with #!ipxe")


def _check_shell(name: str, text: str) -> None:
    done = subprocess.run(
        ["sh", "-n"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"{name}: shell syntax: {done.stderr.strip()[:300]}")


def _check_cloud_config(name: str, text: str) -> None:
    checks.check_cloud_config(name, text)


def _check_kickstart(name: str, text: str, release: Release | None) -> None:
    syntax = release.kickstart_syntax if release is not None else None
    if syntax is None:
        raise RenderError(f"{name}: no kickstart syntax known for this release")
    checks.check_kickstart(name, text, syntax)


def _plain(check: Callable[[str, str], None]) -> Callable[[str, str, Release | None], None]:
    return lambda name, text, release: check(name, text)


Check = Callable[[str, str, Release | None], None]
# method -> file -> the check it must pass before it is served.
FILES: dict[str, dict[str, Check]] = {
    "autoinstall": {
        "boot.ipxe": _plain(_check_ipxe),
        "user-data": _plain(checks.check_autoinstall),
        "meta-data": _plain(checks.check_yaml),
        "vendor-data": _plain(_check_cloud_config),
    },
    "preseed": {
        "boot.ipxe": _plain(_check_ipxe),
        "preseed.cfg": _plain(checks.check_preseed),
        "post.sh": _plain(_check_shell),
    },
    "kickstart": {
        "boot.ipxe": _plain(_check_ipxe),
        "ks.cfg": _check_kickstart,
        "post.sh": _plain(_check_shell),
    },
    "image": {
        "user-data": _plain(_check_cloud_config),
        "meta-data": _plain(checks.check_yaml),
        "network-config": _plain(checks.check_yaml),
    },
}
# Where the node URL goes unquoted (kernel command lines, preseed, kickstart): no shell or
# iPXE metacharacters. Tokens are URL-safe base64; base URLs are host:port/path.
_SAFE_URL = re.compile(r"^https?://[A-Za-z0-9.:\[\]_/-]+/$")


@dataclass(frozen=True)
class Mirrors:
    """Package sources the installers are told to use, per distribution, and an HTTP proxy."""

    urls: Mapping[str, str]
    proxy: str | None = None

    def url(self, distro: str) -> str:
        try:
            return self.urls[distro].rstrip("/")
        except KeyError:
            raise RenderError(f"no package mirror configured for {distro}") from None


@dataclass(frozen=True)
class Target:
    """What one node's install files are rendered for."""

    os: Os
    node: Node
    inventory: Inventory | None
    base_url: str  # ztpd, as nodes reach it
    node_url: str  # <base>/install/<node>/<token>/ : the files and the callbacks


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.netloc, parts.path or "/"


def _pxe_mac(target: Target) -> str | None:
    inv = target.inventory
    if inv is not None and inv.boot is not None and inv.boot.pxe_interface:
        return str(inv.boot.pxe_interface)
    boot = target.node.facts.get("boot", {})
    bootif = boot.get("bootif") if isinstance(boot, dict) else None
    return str(bootif) if bootif else (target.node.macs[0] if target.node.macs else None)


def _network(target: Target) -> dict[str, Any]:
    net = target.os.network
    iface = net.interface
    mac: str | None = None
    name: str | None = None
    if iface == "pxe":
        mac = _pxe_mac(target)
        if mac is None:
            raise RenderError("os.network.interface is pxe but the node's boot MAC is unknown")
    elif re.fullmatch(r"([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}", iface):
        mac = iface.lower().replace("-", ":")
    else:
        name = iface
    static = net.mode == "static"
    address = net.address
    return {
        "mode": net.mode,
        "mac": mac,
        "name": name,
        # Kickstart and netplan accept a MAC where a device name goes.
        "device": mac or name,
        "static": static,
        "address": str(address.ip) if address else None,
        "cidr": str(address) if address else None,
        "netmask": str(address.netmask) if address else None,
        "gateway": str(net.gateway) if net.gateway else None,
        "dns": [str(d) for d in net.dns],
        "vlan": net.vlan,
        "mtu": net.mtu,
    }


def _hostname(target: Target) -> str:
    name = target.node.hostname
    if not name:
        raise RenderError(f"node {target.node.id} has no hostname (the profile sets none)")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise RenderError(f"node {target.node.id}: {name!r} is not a valid host name")
    return name


def _users(target: Target) -> list[dict[str, Any]]:
    users = []
    for u in target.os.users:
        groups = sorted(set(u.groups) | ({"sudo"} if u.sudo else set()))
        users.append(
            {
                "name": u.name,
                "sudo": u.sudo,
                "shell": u.shell,
                "groups": u.groups,
                "password_hash": u.password_hash,
                "ssh_keys": [k.strip() for k in u.ssh_keys],
                # For post.sh: every value already quoted for sh.
                "q": {
                    "name": shlex.quote(u.name),
                    "shell": shlex.quote(u.shell),
                    "groups": [shlex.quote(g) for g in groups if g != "sudo"],
                    "hash": shlex.quote(u.password_hash or ""),
                    "authorized_keys": shlex.quote("".join(k.strip() + "\n" for k in u.ssh_keys)),
                },
            }
        )
    return users


class Renderer:
    """The install templates, compiled once; ``load()`` again swaps them all or none."""

    def __init__(self, templates_dir: Path, mirrors: Mirrors) -> None:
        self.directory = templates_dir
        self.mirrors = mirrors
        self._lock = threading.Lock()
        self._compiled: dict[str, jinja2.Template] = {}
        self.load()

    def load(self) -> None:
        env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # YAML, shell and installer files, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=-1,
        )
        compiled: dict[str, jinja2.Template] = {}
        problems: list[Problem] = []
        for method, files in FILES.items():
            for name in files:
                path = f"{INSTALL_DIR}/{method}/{name}.j2"
                try:
                    compiled[path] = env.get_template(path)
                except jinja2.TemplateNotFound:
                    problems.append(Problem(str(self.directory / path), 0, 0, "missing"))
                except jinja2.TemplateSyntaxError as e:
                    problems.append(
                        Problem(str(self.directory / path), e.lineno or 0, 0, e.message or str(e))
                    )
        if problems:
            raise SourceError(problems)
        with self._lock:
            self._compiled = compiled
        log.info("install templates loaded dir=%s count=%d", self.directory, len(compiled))

    @staticmethod
    def files(method: str) -> tuple[str, ...]:
        return tuple(FILES.get(method, {}))

    def context(self, target: Target) -> dict[str, Any]:
        os_ = target.os
        method = os_.method
        if not _SAFE_URL.match(target.node_url):
            raise RenderError("the node's install URL has characters installers cannot take")
        release: Release | None = None
        if method != "image":
            release = RELEASES.get(os_.release or "")
            if release is None:
                raise RenderError(
                    f"unknown release {os_.release!r} for method {method} "
                    f"(known: {', '.join(sorted(RELEASES))})"
                )
            if release.method != method:
                raise RenderError(
                    f"release {release.name} installs with {release.method}, not {method}"
                )
        if method == "preseed" and not os_.users:
            raise RenderError("method preseed needs at least one user in os.users")
        ctx: dict[str, Any] = {
            "method": method,
            "base_url": target.base_url.rstrip("/"),
            "url": target.node_url,
            "node": {"id": target.node.id, "macs": list(target.node.macs)},
            "hostname": _hostname(target),
            "users": _users(target),
            "packages": list(os_.packages),
            "network": _network(target),
            "proxy": self.mirrors.proxy,
        }
        if release is None:
            # An image named as a release (debian-12) gets that distribution's mirror for apt.
            image = RELEASES.get(os_.image or "")
            ctx["mirror"] = {"url": self.mirrors.url(image.distro)} if image else None
            return ctx
        disks = target.inventory.disks if target.inventory is not None else []
        try:
            disk = choose(os_.root_disk, disks)
        except NotFound as e:
            raise RenderError(e.message) from None
        mirror = self.mirrors.url(release.distro)
        host, directory = _split_url(mirror)
        path = stable_path(disk)
        level = os_.wipe.on_install
        ctx.update(
            release={
                "name": release.name,
                "distro": release.distro,
                "version": release.version,
                "codename": release.codename,
            },
            disk={
                "name": disk.name,
                "path": path,
                "serial": disk.serial,
                # Anaconda names disks without /dev/ (sda, disk/by-path/...).
                "ks": path.removeprefix("/dev/"),
            },
            # The other disks, wiped at install time as os.wipe.on_install says.
            wipe=[] if level == "none" else [stable_path(d) for d in disks if d is not disk],
            wipe_level=level,
            mirror={"url": mirror, "host": host, "directory": directory},
            # Rocky/Alma layout: <mirror>/<version>/{BaseOS,AppStream}/x86_64/os/.
            repo=f"{mirror}/{release.version}/",
            installer_url=f"{ctx['base_url']}/files/installers/{release.name}",
        )
        return ctx

    def render(self, target: Target, name: str) -> str:
        """One file, complete and checked."""
        method = target.os.method
        check = FILES.get(method, {}).get(name)
        if check is None:
            raise NotFound(f"method {method} has no file {name}")
        path = f"{INSTALL_DIR}/{method}/{name}.j2"
        template = self._compiled.get(path)
        if template is None:
            raise RenderError(f"no template {path}")
        context = self.context(target)
        try:
            text = template.render(context)
        except Exception as e:  # any failure inside a template is that template's error
            raise RenderError(f"{path}: {type(e).__name__}: {e}") from None
        check(name, text, RELEASES.get(target.os.release or ""))
        return text
