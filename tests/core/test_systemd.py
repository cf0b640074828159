"""The shipped unit passes systemd-analyze verify and keeps its hardening."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon import REPO

UNIT = REPO / "systemd" / "ztpd.service"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    return cp


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    # Point ExecStart at this checkout's ztpd so verify can check that the command exists.
    ztpd = Path(sys.executable).parent / "ztpd"
    text = UNIT.read_text().replace("/usr/local/bin/ztpd", str(ztpd))
    (tmp_path / "ztpd.service").write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "ztpd.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_runs_unprivileged_with_only_the_capabilities_it_needs() -> None:
    svc = unit()["Service"]
    assert svc["User"] == "ztpd"
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert set(svc["AmbientCapabilities"].split()) == {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ReadWritePaths": "/var/lib/ztpd",
        "RestartPreventExitStatus": "2",
    }.items():
        assert svc[key] == value, key
    assert "HUP" in svc["ExecReload"]
