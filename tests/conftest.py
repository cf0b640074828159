"""Fixtures shared across test packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ztpd.images import discovery

CHECKOUT_CACHE = Path(__file__).resolve().parents[1] / "images" / "cache" / discovery.SUBDIR


@pytest.fixture(scope="session")
def discovery_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The discovery image with this checkout's init and agent, built once per session like
    `make discovery-image` does; the .debs are cached in the checkout (images/cache/discovery)
    so later runs are offline."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("needs apt-get and dpkg (Debian) to build the discovery image")
    images = tmp_path_factory.mktemp("images")
    CHECKOUT_CACHE.mkdir(parents=True, exist_ok=True)
    (images / "cache").mkdir()
    (images / "cache" / discovery.SUBDIR).symlink_to(CHECKOUT_CACHE)
    discovery.build(images)
    return images / discovery.SUBDIR
