"""A real Debian network install through ztpd (``make e2e-preseed``; root; not part of CI).

One BIOS VM in a ``ztpd lab`` of its own PXE-boots, is inspected, matches a preseed profile
(``debian-12``), boots Debian's netboot installer from ``images/installers/debian-12/``
(``ztpd images fetch``), installs from the Debian mirror, calls back ``finished``, reboots from
its disk and calls back ``firstboot``: the node is ``deployed``. Exit 0 only then.

The lab's VMs reach nothing but the lab. The installer gets the mirror through an HTTP proxy
(``install.proxy``) that this script runs: its listening socket lives in the lab's server
namespace (10.231.0.1:3142), its upstream connections in this host's namespace, so nothing on
the host changes (no NAT, no forwarding, no route). It needs the mirror (deb.debian.org by
default, ``install.mirrors.debian`` otherwise) reachable from this host. A request for ztpd
itself (d-i's wget may use the proxy too) goes to the lab's forwarded port on 127.0.0.1.

    sudo .venv/bin/python -m tests.install.e2e_preseed [--timeout 7200] [--keep]

A Debian install under TCG takes a long while (tens of minutes); ``--keep`` leaves the lab up
(``ztpd lab --name ztpd-e2e-preseed --state state/e2e-preseed down`` removes it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from ztpd.images import installers
from ztpd.lab import Lab, Settings
from ztpd.lab import lab as lab_module
from ztpd.lab.forward import _pipe
from ztpd.lab.lab import HTTP_PORT, SERVER_IP
from ztpd.lab.net import Netns
from ztpd.lab.vm import VmSpec, plan
from ztpd.profiles.model import Os

ROOT = Path(__file__).resolve().parents[2]
NAME = "ztpd-e2e-preseed"
PROXY_PORT = 3142
# Below about 780 MB the installer enters its low memory mode, which stops at a question.
MEMORY_MB = 1024
CLONE_NEWNET = 0x40000000
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk2Zb6o1Xj3QX0bq1Vx3m9XG6Xo1m8k5G3o4xqz1K2P ops@e2e"
PROFILE = {
    "name": "e2e-preseed",
    "description": "every x86_64 machine: a Debian 12 network install",
    "match": [{"field": "cpu.architecture", "op": "eq", "value": "x86_64"}],
    "os": {
        "method": "preseed",
        "release": "debian-12",
        "hostname": "e2e-{{ boot.pxe_interface | replace(':', '') }}",
        "root_disk": {"prefer": "smallest"},
        "users": [
            {
                "name": "ops",
                "sudo": True,
                "ssh_keys": [SSH_KEY],
            }
        ],
        "packages": [],
    },
}


def made_in(netns: str, make: Callable[[], socket.socket]) -> socket.socket:
    """A socket made inside ``netns`` (a socket keeps the namespace it was made in); setns()
    is per thread, so a short-lived thread does it and this thread never moves."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def inside() -> None:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {netns}")
            made.append(make())
        except BaseException as e:
            failed.append(e)
        finally:
            os.close(target)

    thread = threading.Thread(target=inside)  # ends with the thread: the host keeps its namespace
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


async def _proxy_one(
    down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter, lab_port: int
) -> None:
    """One request per connection (``Connection: close``): the absolute URL's host from here,
    ztpd's own address through the lab's forwarded port. Plain HTTP only, no CONNECT."""
    try:
        head = await asyncio.wait_for(down_r.readuntil(b"\r\n\r\n"), 30)
        line, *fields = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ")
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"not an absolute http URL: {target[:80]}")
        host, port = url.hostname, url.port or 80
        if (host, port) == (SERVER_IP, HTTP_PORT):
            host, port = "127.0.0.1", lab_port
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        keep = [
            f
            for f in fields
            if f and f.split(":", 1)[0].strip().lower() not in ("connection", "proxy-connection")
        ]
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError) as e:
        print(f"proxy: refused a request: {e}", file=sys.stderr)
        down_w.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        down_w.close()
        return
    lines = [f"{method} {path} {version}", *keep, "Connection: close", "", ""]
    up_w.write("\r\n".join(lines).encode("latin-1"))
    try:
        status = await asyncio.wait_for(up_r.readline(), 60)
        print(f"proxy: {method} {target} {status.decode('latin-1').strip()}", file=sys.stderr)
        down_w.write(status)
        await asyncio.gather(_pipe(down_r, up_w), _pipe(up_r, down_w))
    except (OSError, TimeoutError) as e:
        print(f"proxy: {method} {target} failed: {e!r}", file=sys.stderr)
    finally:
        for w in (up_w, down_w):
            w.close()


def udp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    return sock


def start_dns_relay(listen: socket.socket, upstream: str) -> None:
    """Relay each DNS query on ``listen`` to ``upstream`` from this host's namespace (the
    installer asks for name servers when DHCP names none, and resolves a few names)."""

    def one(query: bytes, client: tuple[str, int]) -> None:
        print(f"dns: query from {client[0]}", file=sys.stderr)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            with contextlib.suppress(OSError):
                up.sendto(query, (upstream, 53))
                listen.sendto(up.recv(4096), client)

    def serve() -> None:
        while True:
            query, client = listen.recvfrom(4096)
            threading.Thread(target=one, args=(query, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def host_resolver() -> str:
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and "." in words[1]:
            return words[1]
    raise SystemExit("e2e-preseed: no IPv4 nameserver in /etc/resolv.conf")


def start_proxy(listen: socket.socket, lab_port: int) -> None:
    """Serve the proxy from a daemon thread for the rest of this process."""

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _proxy_one(r, w, lab_port), sock=listen)
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()


def roomy_plan(count: int, firmware: str, lab: str = NAME) -> list[VmSpec]:
    """The lab's VM plan, each VM with room for the installer."""
    return [
        dataclasses.replace(v, shape=dataclasses.replace(v.shape, memory_mb=MEMORY_MB))
        for v in plan(count, firmware, lab)
    ]


class PreseedLab(Lab):
    """The lab, with ztpd told about the proxy and given time for a slow installer."""

    def _config(self, dhcp: str) -> Path:
        path = super()._config(dhcp)
        cfg = yaml.safe_load(path.read_text())
        cfg["install"] = {"proxy": f"http://{SERVER_IP}:{PROXY_PORT}"}
        for subnet in cfg["dhcp"].get("subnets", []):
            subnet["dns"] = [SERVER_IP]  # the relay below
        cfg["lifecycle"] = {"timeouts": {"deploying": 4 * 3600}}
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _start_ztpd(self, server: Netns, dhcp: str) -> subprocess.Popen[bytes]:
        proc = super()._start_ztpd(server, dhcp)
        listen = made_in(server.name, lambda: socket.create_server((SERVER_IP, PROXY_PORT)))
        start_proxy(listen, self.s.port)
        start_dns_relay(made_in(server.name, lambda: udp(SERVER_IP, 53)), host_resolver())
        return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds (default 7200)")
    parser.add_argument("--port", type=int, default=8490, help="status page on 127.0.0.1")
    parser.add_argument("--state", type=Path, default=ROOT / "state" / "e2e-preseed")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e-preseed: needs root (network namespaces, QEMU taps)", file=sys.stderr)
        return 2
    images_dir = ROOT / "images"
    if installers.problems(images_dir, {"e2e": Os.model_validate(PROFILE["os"])}):
        print("e2e-preseed: fetching Debian's netboot installer", flush=True)
        installers.fetch(images_dir, ["debian-12"])
    # Stopped by a signal (a background job ignores SIGINT): the lab still comes down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    setattr(lab_module, "plan", roomy_plan)  # noqa: B010 (replaces the lab's own import)
    state = args.state.resolve()
    profiles = state / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "e2e-preseed.yaml").write_text(yaml.safe_dump(PROFILE, sort_keys=False))
    lab = PreseedLab(
        Settings(
            state=state,
            profiles_dir=profiles,
            templates_dir=ROOT / "boot-templates",
            images_dir=images_dir,
            port=args.port,
            python=sys.executable,
            env=dict(os.environ),
            name=NAME,
        ),
        sys.stdout,
    )
    try:
        return lab.up(1, "bios", args.timeout)
    finally:
        if not args.keep:
            with contextlib.suppress(Exception):
                lab.down()


if __name__ == "__main__":
    sys.exit(main())
