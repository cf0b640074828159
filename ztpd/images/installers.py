"""Installer kernels and initrds for the install methods, in ``<images>/installers/<release>/``.

Each method's ``boot.ipxe`` (``boot-templates/install/<method>/boot.ipxe.j2``) loads fixed
names from ``/files/installers/<release>/``; ``FILES`` lists them per method.

``fetch`` takes the installers a Debian package carries, as the iPXE loaders are taken
(``apt-get download`` once into ``<images>/cache/``, ``dpkg -x``, a ``manifest.json`` with the
package version and each file's sha256): Debian's netboot installer is in
``debian-installer-12-netboot-amd64``. Ubuntu's live-server installer and Rocky/Alma's
``images/pxeboot/`` are published only on their own mirrors, which an appliance may not reach:
an operator places them by hand (images/README.md says which file goes where).

``problems`` is what ``ztpd check`` reports: which installer files each profile's method and
release needs, and which of them are missing or no longer match their manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ztpd.errors import NotFound
from ztpd.images import CACHE, Manifest, download, missing, unpack
from ztpd.profiles.model import Os

log = logging.getLogger("ztpd.images.installers")

INSTALLERS = "installers"
# What each method's boot.ipxe loads from installers/<release>/ (keep in step with the
# templates; a test compares them).
FILES: dict[str, tuple[str, ...]] = {
    "preseed": ("linux", "initrd.gz"),
    "autoinstall": ("vmlinuz", "initrd", "installer.iso"),
    "kickstart": ("vmlinuz", "initrd.img"),
}
# Where a release's files come from when no package carries them (shown by `ztpd check`).
BY_HAND = {
    "autoinstall": "the live-server ISO's casper/vmlinuz and casper/initrd, and the ISO itself "
    "as installer.iso",
    "kickstart": "images/pxeboot/vmlinuz and initrd.img from the release's BaseOS tree",
}


@dataclass(frozen=True)
class Package:
    """A Debian package that carries a release's installer files in ``directory``."""

    name: str
    directory: str


PACKAGES: dict[str, Package] = {
    "debian-12": Package(
        "debian-installer-12-netboot-amd64",
        "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64",
    ),
}
PACKAGE_METHOD = {"debian-12": "preseed"}


def release_dir(images_dir: Path, release: str) -> Path:
    return images_dir / INSTALLERS / release


def fetch(
    images_dir: Path, releases: Iterable[str] | None = None, *, refresh: bool = False
) -> dict[str, Manifest]:
    """Each release's installer files from its package (all packaged releases by default)."""
    done = {}
    for release in sorted(PACKAGES) if releases is None else releases:
        package = PACKAGES.get(release)
        if package is None:
            raise NotFound(
                f"no package carries the {release} installer (packaged: "
                f"{', '.join(sorted(PACKAGES))}); place its files by hand, see images/README.md"
            )
        deb = download(images_dir / CACHE, package.name, refresh=refresh)
        files = {n: f"{package.directory}/{n}" for n in FILES[PACKAGE_METHOD[release]]}
        done[release] = unpack(deb, files, release_dir(images_dir, release))
        log.info("installer ready release=%s version=%s", release, done[release].version)
    return done


def needs(profiles: Mapping[str, Os | None]) -> dict[tuple[str, str], list[str]]:
    """(method, release) → the profiles installing with it, for every installer method."""
    found: dict[tuple[str, str], list[str]] = {}
    for name, os_ in sorted(profiles.items()):
        if os_ is not None and os_.method in FILES and os_.release:
            found.setdefault((os_.method, os_.release), []).append(name)
    return dict(sorted(found.items()))


def needed(profiles: Mapping[str, Os | None]) -> list[str]:
    """What ``ztpd check`` says each installer method and release needs, and for whom."""
    return [
        f"installer {release} ({method}) needs installers/{release}/"
        f"{{{','.join(FILES[method])}}} for profiles {', '.join(names)}"
        for (method, release), names in needs(profiles).items()
    ]


def problems(images_dir: Path, profiles: Mapping[str, Os | None]) -> list[str]:
    """One line per installer file a profile needs that is missing or changed, naming the
    profiles that need it and how to get it."""
    found = []
    for (method, release), names in needs(profiles).items():
        hint = (
            "run `ztpd images fetch`"
            if release in PACKAGES
            else f"place {BY_HAND[method]}; see images/README.md"
        )
        for line in missing(release_dir(images_dir, release), FILES[method], hint):
            found.append(f"installer for {release} ({method}; profiles {', '.join(names)}): {line}")
    return found
