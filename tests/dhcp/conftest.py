"""Helpers for the DHCP real-peer tests: ztpd's DHCP service run inside a test namespace."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.netns import Lan, Netns, lan, wait_for

__all__ = ["lan"]

HERE = Path(__file__).parent
SERVE = HERE / "serve.py"
CLIENTS = HERE / "clients.py"


class Ztpd:
    """One ztpd DHCP process in ``ns`` with its own state dir; restartable (for kill -9)."""

    def __init__(
        self,
        ns: Netns,
        state: Path,
        dhcp: dict[str, Any],
        *,
        http_url: str = "http://10.9.0.1:8080",
        args: tuple[str, ...] = (),
    ) -> None:
        self.ns = ns
        self.args = args
        self.state = state
        self.config = state / "ztpd.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(state),
                    "log": {"level": "debug"},  # per-packet lines are DEBUG
                    "http": {"public_url": http_url},
                    "dhcp": dhcp,
                }
            )
        )
        self.log = state / "ztpd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Ztpd:
        out = self.log.open("ab")
        self.proc = self.ns.popen(
            [sys.executable, str(SERVE), str(self.config), *self.args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        wait_for(
            lambda: "ready" in self.log.read_text() or self.proc.poll() is not None,
            "ztpd dhcp to start",
        )
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None:
            self.ns.stop(self.proc, sig)
            self.proc = None

    def text(self) -> str:
        return self.log.read_text()

    def db(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        conn = sqlite3.connect(self.state / "ztpd.db")
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()


def client_script(ns: Netns, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Run tests/dhcp/clients.py inside ``ns``; its JSON lines."""
    r = ns.run([sys.executable, str(CLIENTS), *args], timeout=timeout)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


# Full mode on 10.9.0.1/24 (pool .100-.199), plus a relayed 10.20.0.0/24.
FULL: dict[str, Any] = {
    "mode": "full",
    "interfaces": ["eth0"],
    "lease_time": 600,
    "subnets": [
        {
            "subnet": "10.9.0.0/24",
            "pools": [{"start": "10.9.0.100", "end": "10.9.0.199"}],
            "router": "10.9.0.1",
            "dns": ["10.9.0.1"],
            "domain": "edge.test",
        },
        {
            "subnet": "10.20.0.0/24",
            "pools": [{"start": "10.20.0.50", "end": "10.20.0.99"}],
            "router": "10.20.0.1",
        },
    ],
}


@pytest.fixture
def full_lan(lan: Lan, tmp_path: Path) -> tuple[Lan, Ztpd]:
    """ztpd in full mode (``FULL``) on a fresh LAN, started."""
    return lan, Ztpd(lan.host("srv", "10.9.0.1/24"), tmp_path, FULL).start()
