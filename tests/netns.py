"""Throwaway network namespaces for tests that need real peers on a real (virtual) LAN.

    with Lan("dhcp") as lan:                       # a bridge in its own namespace
        server = lan.host("srv", "10.9.0.1/24")    # a namespace with eth0 on the bridge
        client = lan.host("cli")                   # no address: a DHCP client
        proc = server.popen(["dnsmasq", ...])      # runs inside; stopped at exit
        client.run(["udhcpc", "-i", "eth0", "-n", "-q"])

Everything is named ``zt<pid>-<tag>-...`` so parallel runs never collide, and everything a
``Lan`` made — processes, namespaces and the links in them — is removed when the block ends,
even on failure. Nothing touches the host's own interfaces. ``require()`` skips a test with the
missing prerequisite named; ``lan`` (a pytest fixture) wraps all of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import pytest

CMD_TIMEOUT = 30.0


def require(*tools: str) -> None:
    """Skip (naming what is missing) unless we are root with ``ip`` and every tool in PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}: not in PATH")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=CMD_TIMEOUT)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0, step: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


class Netns:
    """One namespace; ``run``/``popen`` execute commands inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")

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
        """Start a background process inside; it is stopped when the namespace goes."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(self.argv(argv), start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                self.stop(proc)
        # Anything still inside was started by this test (e.g. a daemonised client).
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=CMD_TIMEOUT
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=CMD_TIMEOUT)


class Lan:
    """A bridge (in its own namespace) and hosts plugged into it."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"zt{os.getpid()}-{tag}"
        self.hosts: list[Netns] = []
        self.switch: Netns | None = None

    def __enter__(self) -> Lan:
        try:
            self.switch = Netns(f"{self.prefix}-br")
            _ip("-n", self.switch.name, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch.name, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def host(self, name: str, *addresses: str, mac: str | None = None) -> Netns:
        """A namespace with ``eth0`` on the bridge, up, with these CIDR addresses."""
        assert self.switch is not None
        ns = Netns(f"{self.prefix}-{name}")
        self.hosts.append(ns)
        port = f"p{len(self.hosts)}"
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            ns.name,
            *(["address", mac] if mac else []),
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.switch.name,
        )
        _ip("-n", self.switch.name, "link", "set", port, "master", "br0", "up")
        for addr in addresses:
            _ip("-n", ns.name, "addr", "add", addr, "dev", "eth0")
        _ip("-n", ns.name, "link", "set", "eth0", "up")
        return ns

    def close(self) -> None:
        for ns in reversed(self.hosts):
            ns.close()
        self.hosts.clear()
        if self.switch is not None:
            self.switch.close()
            self.switch = None


@pytest.fixture
def lan(request: pytest.FixtureRequest) -> Iterator[Lan]:
    """A fresh LAN per test, named after the test; skips unless root with iproute2."""
    require()
    with Lan(request.node.name[-8:].replace("[", "").replace("]", "")) as it:
        yield it
