"""Throwaway network namespaces for tests that need real peers on a real (virtual) LAN.

The namespaces, bridge and hosts are ``ztpd.lab.net``'s (see its docstring); this adds what
tests need: ``require()`` skips a test naming the missing prerequisite, the ``lan`` fixture gives
a fresh LAN named ``zt<pid>-<test>`` removed at the end even on failure, and ``wait_for`` polls.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ztpd.lab.net import CMD_TIMEOUT, Lan, Netns

__all__ = ["CMD_TIMEOUT", "Lan", "Netns", "lan", "require", "wait_for"]


def require(*tools: str) -> None:
    """Skip (naming what is missing) unless we are root with ``ip`` and every tool in PATH."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}: not in PATH")


def wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float = 20.0,
    step: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline,
    with ``detail()`` (what was seen: a console, a log) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(step)


@pytest.fixture
def lan(request: pytest.FixtureRequest) -> Iterator[Lan]:
    """A fresh LAN per test, named after the test; skips unless root with iproute2."""
    require()
    tag = request.node.name[-8:].replace("[", "").replace("]", "")
    with Lan(f"zt{os.getpid()}-{tag}") as it:
        yield it
