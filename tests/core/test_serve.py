"""`ztpd serve` as a real process: readiness, clean SIGTERM, SIGHUP, resume after restart."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.daemon import REPO, Daemon, write_config
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.store import Events, Nodes, Store


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_serves_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ztpd.yaml", tmp_path / "state")
    d = Daemon(cfg).start()
    with urllib.request.urlopen(d.url + "/healthz", timeout=5) as r:
        assert json.load(r)["status"] == "ok"
    assert d.stop(signal.SIGTERM) == 0
    assert "Traceback" not in d.stderr
    assert "logger=ztpd.app stopped" in d.stderr
    # One key=value line per event.
    assert all(
        line.startswith("ts=") and " level=" in line for line in d.stderr.splitlines() if line
    )


def test_sigint_is_a_clean_stop_too(tmp_path: Path) -> None:
    d = Daemon(write_config(tmp_path / "ztpd.yaml", tmp_path / "state")).start()
    assert d.stop(signal.SIGINT) == 0
    assert "Traceback" not in d.stderr


def test_sighup_reloads_without_stopping(tmp_path: Path) -> None:
    d = Daemon(write_config(tmp_path / "ztpd.yaml", tmp_path / "state")).start()
    try:
        d.send(signal.SIGHUP)
        assert d.proc is not None
        # Still serving after the reload.
        with urllib.request.urlopen(d.url + "/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        assert d.stop() == 0
    assert "reload requested" in d.stderr


def test_timeouts_resume_after_restart(tmp_path: Path) -> None:
    """A node left inspecting when ztpd went down fails with the reason once ztpd is back and
    the deadline has passed; a node whose deadline is still ahead is left alone."""
    state = tmp_path / "state"
    store = Store(state / "ztpd.db")
    nodes = Nodes(store)
    lc = Lifecycle(store, {"inspecting": 1.0, "deploying": 3600.0, "configuring": 3600.0})
    late = nodes.observe(Identity.of(["52:54:00:00:00:01"]), cause="dhcp")
    lc.fire(late.id, Trigger.INSPECT, cause="boot")
    fine = nodes.observe(Identity.of(["52:54:00:00:00:02"]), cause="dhcp")
    for t in (Trigger.INSPECT, Trigger.INSPECTED, Trigger.MATCH, Trigger.DEPLOY):
        lc.fire(fine.id, t, cause="test")
    store.close()
    cfg = write_config(tmp_path / "ztpd.yaml", state)
    with Daemon(cfg):
        reader = Store(state / "ztpd.db")
        node = wait_for(
            lambda: (n := Nodes(reader).get(late.id)).state == "failed" and n,
            what="the late node to fail",
        )
        assert node.reason == "timed out in inspecting"
        assert Nodes(reader).get(fine.id).state == "deploying"
        reader.close()


def test_kill_9_loses_no_committed_event(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "ztpd.yaml", state)
    d = Daemon(cfg).start()
    writer = Store(state / "ztpd.db")
    ids = [writer.add_event(node_id=None, kind="test", cause=f"e{i}") for i in range(20)]
    writer.close()
    d.stop(signal.SIGKILL)
    with Daemon(cfg):
        stored = {e.id for e in Events(Store(state / "ztpd.db")).list(limit=1000)}
        assert set(ids) <= stored


def test_ztpd_check_on_the_shipped_tree(tmp_path: Path) -> None:
    r = subprocess.run(
        ["make", "-s", "check"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok: config" in r.stdout


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_boots_tftp_and_heartbeats_are_counted_on_metrics(tmp_path: Path) -> None:
    """The sources feed /metrics: a served boot script, a TFTP transfer by a real client,
    and an agent heartbeat, all through one real ztpd."""
    import shutil
    import urllib.request as rq

    from tests.daemon import free_port
    from ztpd.tokens import Tokens

    tftp = shutil.which("tftp")
    if tftp is None:
        import pytest

        pytest.skip("needs tftp (Debian package tftp-hpa)")
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (state / "images" / "undionly.kpxe").write_bytes(b"\x55" * 3000)
    port = free_port()
    cfg = write_config(
        tmp_path / "ztpd.yaml",
        state,
        tftp={"enabled": True, "listen": ["127.0.0.1"], "port": port},
    )
    with Daemon(cfg) as d:
        with rq.urlopen(d.url + "/ipxe?mac=52:54:00:00:00:42&platform=pcbios&buildarch=i386") as r:
            assert r.status == 200
        got = tmp_path / "got.kpxe"
        subprocess.run(
            [tftp, "127.0.0.1", str(port), "-m", "binary", "-c", "get", "undionly.kpxe", str(got)],
            check=True,
            timeout=60,
            capture_output=True,
        )
        assert got.read_bytes() == b"\x55" * 3000
        store = Store(state / "ztpd.db")
        node = Nodes(store).find("52:54:00:00:00:42")
        token = Tokens(store).issue(node.id, "agent", 600)
        store.close()
        beat = rq.Request(
            d.url + "/agent/v1/heartbeat",
            data=json.dumps({"boot": "b1", "stage": "collecting"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with rq.urlopen(beat) as r:
            assert r.status == 200
        with rq.urlopen(d.url + "/metrics") as r:
            text = r.read().decode()
    assert _metric(text, 'ztpd_boots_total{arch="pcbios-i386"}') == 1
    assert _metric(text, 'ztpd_tftp_requests_total{outcome="sent"}') == 1
    assert _metric(text, "ztpd_tftp_sent_bytes_total") == 3000
    assert _metric(text, "ztpd_agent_heartbeats_total") == 1
    assert token not in d.stderr
