"""The lab as a test harness: a running ``ztpd lab`` with its own name, state and port, and helpers
that read its store to wait for a VM's node to get somewhere (generous deadlines, TCG is slow).

    def test_x(lab_run: LabRun) -> None:
        up = lab_run.up(nodes=2, firmware="mixed")
        lab_run.wait_state("vm1", {"deployed"}, timeout=600)

A test that wants several labs side by side (to keep both cores busy) takes ``labs`` and calls
it once per lab with a distinct tag. Each run is named ``ztpd-lab-t<pid><tag>`` (a user's own
``ztpd-lab`` is never touched) and is taken down at the end, even when the test fails; the
teardown checks nothing of it is left. Before that, the seconds from power-on to each step of
every VM (the lab's own ``watch.Progress``) are appended to ``test-artifacts/e2e-timings.json``
under the test's name, so regressions show.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import REPO, free_port, ztpd_cmd
from tests.netns import require, wait_for
from ztpd.identity import normalize_mac
from ztpd.lab import LabState
from ztpd.lab.lab import Proc, proc_start
from ztpd.lab.net import namespaces, stop_group
from ztpd.lab.vm import VmFiles
from ztpd.lab.watch import Progress, ready
from ztpd.lifecycle import State
from ztpd.model import Event, Node
from ztpd.store import Events, Nodes, Store

TIMINGS = REPO / "test-artifacts" / "e2e-timings.json"
KEEP_RUNS = 200  # the timings file keeps the latest runs only


class LabRun:
    def __init__(self, state: Path, tag: str = "") -> None:
        self.state = state
        # The tag comes before the lab's own "-srv"/"-br" suffixes: no name prefixes another's.
        self.name = f"ztpd-lab-t{os.getpid()}{tag}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[str]] = []
        self.config: Path | None = None  # a ztpd config naming other profiles, say

    def argv(self, *args: str) -> list[str]:
        common = ["--state", str(self.state), "--name", self.name, "--port", str(self.port)]
        common += ["--config", str(self.config)] if self.config else []
        return ztpd_cmd("lab", *common, *args)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
        )

    def up(
        self, nodes: int = 1, firmware: str = "bios", timeout: float = 600, dhcp: str = "full"
    ) -> subprocess.Popen[str]:
        """``lab up`` in the background (it follows the nodes); stop it with ``stop_following``."""
        proc = subprocess.Popen(
            self.argv(
                "up",
                "--nodes",
                str(nodes),
                "--firmware",
                firmware,
                "--timeout",
                str(timeout),
                "--dhcp",
                dhcp,
                "--no-discovery-build",
            ),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def stop_following(
        self, proc: subprocess.Popen[str], sig: int = signal.SIGINT
    ) -> tuple[int, str]:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        return proc.returncode, out

    def ok(self, *args: str, timeout: float = 120) -> str:
        """A ``ztpd lab`` command that must succeed; its output."""
        done = self.cli(*args, timeout=timeout)
        assert done.returncode == 0, f"lab {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def recorded(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state / "lab.json").read_text()))
        except (OSError, ValueError):
            return {}

    def page(self, path: str = "/") -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return int(r.status)
        except OSError:
            return 0

    def _store(self) -> Store | None:
        db = self.state / "ztpd" / "ztpd.db"
        if not db.exists():
            return None
        store = Store(db, read_only=True)
        if not ready(store):
            store.close()
            return None
        return store

    def macs(self, vm: str) -> set[str]:
        spec = next(v for v in self.recorded().get("vms", []) if v["name"] == vm)
        return {normalize_mac(m) for m in spec["macs"]}

    def node(self, vm: str) -> Node | None:
        store = self._store()
        if store is None:
            return None
        try:
            macs = self.macs(vm)
            return next((n for n in Nodes(store).list() if macs & set(n.macs)), None)
        finally:
            store.close()

    def events(self, vm: str) -> list[Event]:
        node = self.node(vm)
        store = self._store()
        if node is None or store is None:
            return []
        try:
            return Events(store).list(node_id=node.id, limit=10_000)
        finally:
            store.close()

    def rows(self, sql: str) -> list[dict[str, Any]]:
        store = self._store()
        if store is None:
            return []
        try:
            return store.query(sql)
        finally:
            store.close()

    def lease(self, vm: str) -> dict[str, Any] | None:
        store = self._store()
        if store is None:
            return None
        try:
            rows = store.query("SELECT * FROM leases WHERE state = 'bound'")
            return next((r for r in rows if normalize_mac(r["mac"]) in self.macs(vm)), None)
        finally:
            store.close()

    def boot_record(self, vm: str) -> Event | None:
        """The VM's request for its second-stage iPXE script, as recorded on its node."""
        return next(
            (e for e in self.events(vm) if e.kind == "boot" and e.detail.get("asked") == "/ipxe"),
            None,
        )

    def wait_state(self, vm: str, states: Iterable[str], timeout: float = 600) -> Node:
        """Poll until ``vm``'s node is in one of ``states``; a node that fails instead ends the
        wait at once, with its reason and the end of ztpd's log."""
        wanted = set(states)

        def reached() -> Node | None:
            node = self.node(vm)
            if node is not None and node.state == State.FAILED and State.FAILED not in wanted:
                log = (self.state / "ztpd.log").read_text(errors="replace")[-3000:]
                raise AssertionError(
                    f"{vm} failed in {node.failed_from}: {node.reason}\nztpd.log ends:\n{log}"
                )
            return node if node is not None and node.state in wanted else None

        node: Node = wait_for(reached, f"{vm} to reach {sorted(wanted)}", timeout, step=1.0)
        return node

    def timings(self) -> dict[str, Any]:
        """Per VM, seconds from power-on to each step, read as ``lab up`` reads them."""
        recorded = self.recorded()
        db = self.state / "ztpd" / "ztpd.db"
        if not recorded or not db.exists():
            return {}
        lab = LabState.from_dict(recorded)
        return Progress(db, lab.vms, lab.powered_on, lambda _: None).timings()

    def vm_files(self, vm: str) -> VmFiles:
        """Where ``vm``'s disks and console are (as ``Lab.vm_files`` places them)."""
        return VmFiles(self.state / "vms" / vm)

    def _qemu(self, vm: str) -> Proc:
        recorded = self.recorded()["procs"][vm]
        return Proc(int(recorded["pid"]), recorded["start"])

    def power_off(self, vm: str) -> None:
        """Stop ``vm``'s QEMU with SIGTERM, which writes its disk caches out, so the host can
        read the disks; ``down`` then finds it gone."""
        proc = self._qemu(vm)
        if proc.alive():
            stop_group(proc.pid, signal.SIGTERM)
        self.wait_powered_off(vm, 60)

    def wait_powered_off(self, vm: str, timeout: float) -> None:
        """Until ``vm``'s QEMU has exited (the guest powered itself off, or was stopped)."""
        proc = self._qemu(vm)
        wait_for(lambda: not proc.alive(), f"{vm}'s QEMU to exit", timeout, 0.2)

    def leftovers(self) -> list[str]:
        """Anything of this lab still present: namespaces, live recorded processes, files."""
        left = [f"namespace {n}" for n in namespaces(self.name) if n.startswith(self.name + "-")]
        left += [f"file {p}" for p in self.state.glob("*")] if self.state.exists() else []
        return left

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # `up` stops following and writes its timings
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        self.cli("down")


def vm_pids(run: LabRun) -> dict[str, int]:
    return {k: int(v["pid"]) for k, v in run.recorded().get("procs", {}).items()}


def alive(pid: int) -> bool:
    """Running, not a zombie: orphans of a finished `lab up` are reaped by PID 1 when it
    does, and some container init processes never do."""
    return proc_start(pid) is not None


def record_timings(test: str, run: LabRun) -> None:
    """Append this run's timings to TIMINGS (a failed run's too: slowness is a finding)."""
    nodes = run.timings()
    if not nodes:
        return
    try:
        runs = list(json.loads(TIMINGS.read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError):
        runs = []
    runs.append(
        {
            "test": test,
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "lab": run.name,
            "accel": run.recorded().get("accel"),
            "dhcp": run.recorded().get("dhcp"),
            "nodes": nodes,
        }
    )
    TIMINGS.parent.mkdir(exist_ok=True)
    part = TIMINGS.with_suffix(".part")
    part.write_text(json.dumps({"runs": runs[-KEEP_RUNS:]}, indent=2) + "\n")
    os.replace(part, TIMINGS)


def take_down(test: str, run: LabRun) -> list[str]:
    """Record the run's timings, take it down; whatever of it is left (nothing, normally)."""
    pids = vm_pids(run)
    record_timings(test, run)
    run.close()
    # Recorded pids may be reused by now only in theory; a short poll covers exit races.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    return run.leftovers() + [f"process {k}" for k, p in pids.items() if alive(p)]


@pytest.fixture
def labs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], LabRun]]:
    """Makes labs (``labs("p")``): each with its own tag, state and port; all taken down."""
    require("qemu-system-x86_64", "qemu-img", "dnsmasq")
    made: list[LabRun] = []

    def make(tag: str) -> LabRun:
        run = LabRun(tmp_path / f"lab{tag}", tag)
        assert run.name not in {r.name for r in made}, f"lab tag {tag!r} used twice"
        made.append(run)
        return run

    try:
        yield make
    finally:
        # Every lab comes down before anything is asserted about any of them.
        left = [
            f"{run.name}: {what}" for run in made for what in take_down(request.node.nodeid, run)
        ]
        assert left == []


@pytest.fixture
def lab_run(labs: Callable[[str], LabRun]) -> LabRun:
    return labs("")
