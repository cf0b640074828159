"""Network namespaces, a bridge inside one, and the ports plugged into it.

    with Lan("zt123-dhcp") as lan:                 # a bridge in its own namespace
        server = lan.host("srv", "10.9.0.1/24")    # a namespace with eth0 on the bridge
        client = lan.host("cli")                   # no address: a DHCP client
        proc = server.popen(["dnsmasq", ...])      # runs inside; stopped at close
        client.run(["udhcpc", "-i", "eth0", "-n", "-q"])

Every name starts with the ``Lan``'s prefix, so parallel users never collide and
``namespaces(prefix)`` finds what a crashed run left behind. ``Lan.close`` removes every
process, namespace and link it made, even after a failure. Nothing here touches the host's own
interfaces: links are created directly inside their namespaces.

The lab uses the same classes with ``attach``: namespaces that outlive the process that made
them, found again by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from types import TracebackType
from typing import Any

CMD_TIMEOUT = 30.0
BRIDGE = "br0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=CMD_TIMEOUT)


def namespaces(prefix: str) -> list[str]:
    """Names of the existing network namespaces that start with ``prefix``."""
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=CMD_TIMEOUT, check=True
    ).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))


def ns_pids(name: str) -> list[int]:
    out = subprocess.run(
        ["ip", "netns", "pids", name],
        check=False,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
    ).stdout
    return [int(p) for p in out.split()]


def stop_group(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal a process group (every process here starts its own session); gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def delete_namespace(name: str) -> None:
    """Kill whatever still runs inside, then remove the namespace (and the links in it)."""
    for pid in ns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(
        ["ip", "netns", "del", name], check=False, capture_output=True, timeout=CMD_TIMEOUT
    )


class Netns:
    """One namespace; ``run``/``popen`` execute commands inside it."""

    def __init__(self, name: str, *, create: bool = True) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        if create:
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")

    @classmethod
    def attach(cls, name: str) -> Netns:
        """A namespace that already exists (made by an earlier process)."""
        return cls(name, create=False)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = CMD_TIMEOUT,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(argv),
            check=check,
            timeout=timeout,
            text=True,
            capture_output=True,
            input=input and input.decode(),
        )

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a background process inside, in its own session; stopped at ``close``."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(self.argv(argv), start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            stop_group(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        # Anything still inside was started by our user (e.g. a daemonised client).
        delete_namespace(self.name)


class Lan:
    """A bridge (in its own namespace, ``<prefix>-br``) and hosts plugged into it.

    The bridge forwards at once (STP off, forward delay 0) and bypasses iptables: the
    namespace's bridge-nf-call-* are turned off, so a host's br_netfilter rules never drop
    the LAN's DHCP broadcasts.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.hosts: list[Netns] = []
        self.switch: Netns | None = None

    def __enter__(self) -> Lan:
        return self.start()

    def start(self) -> Lan:
        """Make the switch namespace and its bridge (undone, on failure, before raising)."""
        try:
            self.switch = Netns(f"{self.prefix}-br")
            self._bridge(self.switch)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _bridge(ns: Netns) -> None:
        ip("-n", ns.name, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0")
        ip("-n", ns.name, "link", "set", BRIDGE, "type", "bridge", "forward_delay", "0")
        # Per namespace since Linux 5.3; absent when br_netfilter is not loaded (nothing to do).
        ns.run(
            [
                "sh",
                "-c",
                "for f in /proc/sys/net/bridge/bridge-nf-call-*; do "
                '[ -e "$f" ] && echo 0 > "$f"; done; true',
            ]
        )
        ip("-n", ns.name, "link", "set", BRIDGE, "up")

    def host(self, name: str, *addresses: str, mac: str | None = None) -> Netns:
        """A namespace ``<prefix>-<name>`` with ``eth0`` on the bridge, up, with these CIDRs."""
        assert self.switch is not None
        ns = Netns(f"{self.prefix}-{name}")
        self.hosts.append(ns)
        self.plug(ns, f"p{len(self.hosts)}", mac=mac)
        for addr in addresses:
            ip("-n", ns.name, "addr", "add", addr, "dev", "eth0")
        ip("-n", ns.name, "link", "set", "eth0", "up")
        return ns

    def plug(self, ns: Netns, port: str, *, mac: str | None = None) -> None:
        """A veth pair: ``eth0`` in ``ns``, ``port`` on the bridge (both made in place)."""
        assert self.switch is not None
        ip(
            "-n",
            self.switch.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            *(["address", mac] if mac else []),
            "netns",
            ns.name,
        )
        ip("-n", self.switch.name, "link", "set", port, "master", BRIDGE, "up")

    def tap(self, name: str) -> None:
        """A tap device on the bridge, for a QEMU started in the switch namespace."""
        assert self.switch is not None
        ip("-n", self.switch.name, "tuntap", "add", "dev", name, "mode", "tap")
        ip("-n", self.switch.name, "link", "set", name, "master", BRIDGE, "up")

    def close(self) -> None:
        for ns in reversed(self.hosts):
            ns.close()
        self.hosts.clear()
        if self.switch is not None:
            self.switch.close()
            self.switch = None
