"""The CLI as a person and a script use it: help, listings, events --follow, actions."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon import REPO, ztpd_cmd, ztpd_env, ztpd_run
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.store import Nodes, Store

from .conftest import TIMEOUTS


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ztpd_run(*args, env={"ZTPD_STATE_DIR": str(state)})


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    store = Store(state / "ztpd.db")
    nodes = Nodes(store)
    lc = Lifecycle(store, TIMEOUTS)
    a = nodes.observe(Identity.of(["52:54:00:00:00:0a"], serial="SER-A"), cause="dhcp")
    b = nodes.observe(Identity.of(["52:54:00:00:00:0b"]), cause="dhcp")
    lc.fire(a.id, Trigger.INSPECT, cause="boot")
    lc.fire(b.id, Trigger.INSPECT, cause="boot")
    lc.fire(b.id, Trigger.FAIL, cause="agent", reason="agent silent in inspecting")
    store.close()
    return state


@pytest.mark.parametrize(
    "cmd", [[], ["serve"], ["check"], ["nodes"], ["nodes", "show"], ["events"], ["node"]]
)
def test_every_command_explains_itself(cmd: list[str], tmp_path: Path) -> None:
    r = run(tmp_path, *cmd, "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: ztpd")
    assert len(r.stdout.splitlines()) > 5


def test_version(tmp_path: Path) -> None:
    r = run(tmp_path, "--version")
    assert r.stdout.strip().startswith("ztpd 0.")


def test_nodes_list_for_people_and_scripts(seeded: Path) -> None:
    r = run(seeded, "nodes")
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert any("inspecting" in row and "52:54:00:00:00:0a" in row for row in rows)
    assert any("failed" in row and "agent silent in inspecting" in row for row in rows)
    data = json.loads(run(seeded, "nodes", "list", "--json").stdout)
    assert sorted(n["state"] for n in data) == ["failed", "inspecting"]
    only = json.loads(run(seeded, "nodes", "list", "--state", "failed", "--json").stdout)
    assert [n["macs"] for n in only] == [["52:54:00:00:00:0b"]]


def test_nodes_show_with_events(seeded: Path) -> None:
    r = run(seeded, "nodes", "show", "SER-A")
    assert r.returncode == 0
    assert "state:     inspecting" in r.stdout
    assert "discovered -> inspecting cause=boot" in r.stdout
    data = json.loads(run(seeded, "nodes", "show", "52:54:00:00:00:0b", "--json").stdout)
    assert data["state"] == "failed"
    assert data["failed_from"] == "inspecting"
    assert [e["to_state"] for e in data["events"]] == ["discovered", "inspecting", "failed"]


def test_unknown_node_is_a_clear_error(seeded: Path) -> None:
    r = run(seeded, "nodes", "show", "nope")
    assert (r.returncode, r.stderr.strip()) == (1, "ztpd: no node matches 'nope'")


def test_actions_follow_the_lifecycle(seeded: Path) -> None:
    r = run(seeded, "node", "retry", "52:54:00:00:00:0b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("failed -> inspecting")
    r = run(seeded, "node", "reprovision", "SER-A")
    assert r.returncode == 1
    assert "'reprovision' is not allowed for a node in state inspecting" in r.stderr
    # With a wipe, the node's agent erases its disks first (retiring, then retired).
    r = run(seeded, "node", "retire", "SER-A", "--wipe", "metadata", "--json")
    assert json.loads(r.stdout)["state"] == "retiring"
    events = run(seeded, "events", "--node", "SER-A", "--json").stdout.splitlines()
    assert json.loads(events[-1])["detail"] == {
        **{"by": "cli", "wipe": "metadata", "wipe_policy": "explicit"},
        "wipe_why": "asked for wipe metadata",
    }


def test_events_follow_prints_new_events_and_stops_cleanly(seeded: Path) -> None:
    proc = subprocess.Popen(
        ztpd_cmd("events", "--follow", "--interval", "0.05"),
        env=ztpd_env(ZTPD_STATE_DIR=str(seeded)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        seen = [proc.stdout.readline() for _ in range(5)]  # the 5 seeded events
        assert "failed" in seen[-1]
        store = Store(seeded / "ztpd.db")
        store.add_event(node_id=None, kind="test", cause="written-by-another-process")
        store.close()
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and "written-by-another-process" not in line:
            line = proc.stdout.readline()
        assert "written-by-another-process" in line
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_check_lists_template_problems_with_file_and_line(tmp_path: Path) -> None:
    import shutil

    templates = tmp_path / "boot-templates"
    shutil.copytree(REPO / "boot-templates", templates)
    (templates / "install" / "preseed" / "preseed.cfg.j2").write_text("ok\n{% if %}\n")
    env = {"ZTPD_STATE_DIR": str(tmp_path / "state"), "ZTPD_TEMPLATES_DIR": str(templates)}
    r = ztpd_run("check", env=env)
    assert r.returncode == 1
    assert f"{templates}/install/preseed/preseed.cfg.j2:2:" in r.stderr
    assert "ztpd check: 1 problem(s)" in r.stderr
    assert "ok: profiles" in r.stdout
