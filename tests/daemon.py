"""Run a real ``ztpd serve`` subprocess for tests: a config file, a free port, readiness by polling
/healthz (never a fixed sleep), and a stop that reports how the daemon exited.

``serve_on_lan`` runs it instead as a test LAN's PXE server, for the VM tests: in its own
namespace on the LAN, full DHCP, TFTP and HTTP on the LAN's first address, with IPv6 router
advertisements beside it (iPXE otherwise waits ~15 s for them at every network boot).
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.netns import Lan, Netns, require, wait_for

REPO = Path(__file__).resolve().parent.parent
LAN_HTTP_PORT = 8080


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merged(base: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``sections`` over it; a dict section merges into a dict one key by key."""
    cfg = dict(base)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, state_dir: Path, **sections: Any) -> Path:
    cfg: dict[str, Any] = {
        "state_dir": str(state_dir),
        "profiles_dir": str(REPO / "profiles"),
        "templates_dir": str(REPO / "boot-templates"),
        "images_dir": str(state_dir / "images"),
        "http": {"listen": ["127.0.0.1"], "port": free_port()},
        "lifecycle": {"sweep_interval": 0.2},
    }
    path.write_text(yaml.safe_dump(merged(cfg, sections)))
    return path


def ztpd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ztpd", *args]


def ztpd_env(**extra: str) -> dict[str, str]:
    """This environment without its ZTPD_ variables (a developer's shell may set them), plus
    ``extra``: a ztpd command sees only what its test gives it."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ZTPD_")}, **extra}


def ztpd_run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``ztpd args`` run to its end in the checkout, its output captured as text."""
    return subprocess.run(
        ztpd_cmd(*args),
        env=ztpd_env(**(env or {})),
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


class Daemon:
    """A ``ztpd serve`` process; use as a context manager, or start()/stop() by hand."""

    def __init__(self, config: Path) -> None:
        self.config = config
        cfg = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{cfg['http']['port']}"
        self.proc: subprocess.Popen[str] | None = None
        self.stderr = ""

    def start(self, timeout: float = 30.0) -> Daemon:
        self.proc = subprocess.Popen(
            ztpd_cmd("serve", "--config", str(self.config)),
            env=ztpd_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"ztpd exited {self.proc.returncode}: {self.stderr}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"ztpd did not answer /healthz within {timeout}s")

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stderr = err or ""
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def router_advertisements(ns: Netns, prefix: str = "fd00::") -> None:
    """Stateless IPv6 router advertisements of ``prefix`` (a /64) from ``ns``'s eth0, like a LAN
    with an IPv6 router: dnsmasq with no DNS, no DHCP."""
    require("dnsmasq")
    ns.run(["ip", "addr", "add", f"{prefix}1/64", "dev", "eth0", "nodad"])
    ns.popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=eth0",
            "--bind-interfaces",
            "--enable-ra",
            f"--dhcp-range={prefix},ra-only",
            "--pid-file=",
            "--log-facility=-",
        ],
        stdout=subprocess.DEVNULL,
    )


@dataclass
class LanServer:
    """A ``ztpd serve`` in ``ns``, the server namespace of a test LAN."""

    ns: Netns
    ip: str
    state: Path
    config: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{LAN_HTTP_PORT}"

    def log(self) -> str:
        return (self.state / "ztpd.log").read_text(errors="replace")


@contextmanager
def serve_on_lan(lan: Lan, state: Path, subnet: str, **sections: Any) -> Iterator[LanServer]:
    """``ztpd serve`` in ``lan``'s new namespace ``srv``, at ``subnet``'s first address: full
    DHCP on eth0 (pool .100-.150, itself the router), TFTP, HTTP on port 8080, state, config
    and ``ztpd.log`` in ``state``. ``sections`` go over that config (as write_config's do).
    Ready once its log says so; stopped at the end, even on failure."""
    net = ipaddress.ip_network(subnet)
    ip = str(net[1])
    srv = lan.host("srv", f"{ip}/{net.prefixlen}")
    router_advertisements(srv, f"fd{net[0].packed[1]:02x}::")
    lan_sections: dict[str, Any] = {
        "http": {"listen": [ip], "port": LAN_HTTP_PORT},
        "tftp": {"enabled": True, "listen": [ip], "port": 69},
        "dhcp": {
            "mode": "full",
            "interfaces": ["eth0"],
            "subnets": [
                {
                    "subnet": subnet,
                    "pools": [{"start": str(net[100]), "end": str(net[150])}],
                    "router": ip,
                }
            ],
        },
    }
    config = write_config(state / "ztpd.yaml", state, **merged(lan_sections, sections))
    with (state / "ztpd.log").open("wb") as out:
        proc = srv.popen(
            ztpd_cmd("serve", "--config", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    server = LanServer(srv, ip, state, config, proc)
    try:
        wait_for(
            lambda: "logger=ztpd.app ready" in server.log() or proc.poll() is not None,
            "ztpd to start",
            timeout=60,
            step=0.1,
        )
        assert proc.poll() is None, f"ztpd exited {proc.returncode}:\n{server.log()[-4000:]}"
        yield server
    finally:
        srv.stop(proc)
