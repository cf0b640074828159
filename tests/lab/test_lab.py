"""``ztpd lab`` for real: namespaces, a bridge, ztpd serving DHCP/TFTP/HTTP, a TCG VM.

One BIOS VM boots until it has a DHCP lease and has fetched its iPXE script (recorded on its
node); the page answers on the forwarded 127.0.0.1 port; ``status`` shows the lab; a second
``up`` changes nothing; ``down`` leaves nothing (checked by the ``lab_run`` teardown too). And
``down`` cleans up after an ``up`` killed with SIGKILL halfway.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.lab.conftest import LabRun, alive, vm_pids
from tests.netns import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.vm, pytest.mark.slow]

BOOT_DEADLINE = 300.0  # ~25 s under TCG on an idle host; a CI run beside VM tests took over 75


def test_up_boots_a_vm_to_its_boot_script_then_status_up_again_and_down(lab_run: LabRun) -> None:
    started = time.monotonic()
    up = lab_run.up(nodes=1, firmware="bios")
    wait_for(
        lambda: "vm1" in lab_run.recorded().get("procs", {}) or up.poll() is not None,
        "vm1 powered on",
        60,
        0.2,
    )
    assert up.poll() is None, up.communicate()[0]
    assert lab_run.page("/healthz") == 200
    assert lab_run.page("/") == 200
    lease = wait_for(lambda: lab_run.lease("vm1"), "vm1's DHCP lease", BOOT_DEADLINE, 0.5)
    assert lease["ip"].startswith("10.231.0.")
    record = wait_for(lambda: lab_run.boot_record("vm1"), "vm1's iPXE script", BOOT_DEADLINE, 0.5)
    assert record.detail.get("platform") == "pcbios"
    print(f"vm1 fetched its boot script {time.monotonic() - started:.1f}s after `lab up`")

    rc, out = lab_run.stop_following(up)
    assert rc == 0, out
    assert f"status page: {lab_run.url}/" in out and "stopped following" in out

    pids = vm_pids(lab_run)
    assert set(pids) == {"ztpd", "forward", "dnsmasq", "vm1"} and all(
        alive(p) for p in pids.values()
    )
    status = lab_run.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"lab {lab_run.name}: up" in status.stdout
    assert "zl1n1" in status.stdout and "vm1" in status.stdout

    again = lab_run.cli("up", "--nodes", "1", "--firmware", "bios", "--timeout", "1")
    assert "already up" in again.stdout, again.stdout + again.stderr
    assert vm_pids(lab_run) == pids and all(alive(p) for p in pids.values())

    down = lab_run.cli("down")
    assert down.returncode == 0, down.stderr
    assert f"removed namespace {lab_run.name}-br" in down.stdout
    assert lab_run.leftovers() == []
    assert [k for k, p in pids.items() if alive(p)] == []
    assert lab_run.page("/healthz") == 0  # the forward is gone with the rest


def test_down_after_a_killed_up_removes_everything(lab_run: LabRun) -> None:
    up = lab_run.up(nodes=2, firmware="mixed")
    wait_for(lambda: "ztpd" in lab_run.recorded().get("procs", {}), "ztpd started", 60, 0.1)
    up.send_signal(signal.SIGKILL)
    up.communicate(timeout=10)
    pids = vm_pids(lab_run)
    down = lab_run.cli("down")
    assert down.returncode == 0, down.stderr
    assert lab_run.leftovers() == []
    wait_for(lambda: not any(alive(p) for p in pids.values()), "the lab's processes to end", 10)
