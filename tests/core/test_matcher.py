"""Matching glue: decisions recorded with their explanation, max_count atomic across threads,
waiting nodes re-evaluated when profiles change, pending work resumed by the daemon."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.daemon import REPO, Daemon, write_config
from ztpd.identity import Identity
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.matcher import Matcher
from ztpd.profiles import ProfileCatalog
from ztpd.store import Events, Nodes, Store

from .conftest import TIMEOUTS, FakeClock

FIXTURES = REPO / "tests" / "fixtures" / "inventories"

ONLY_VMS = """\
name: lab-vm
priority: 10
max_count: {max_count}
approve: {approve}
match:
  - {{field: system.manufacturer, op: eq, value: QEMU}}
os:
  method: image
  image: debian-12
  hostname: "vm-{{{{ interfaces[0].mac | replace(':', '') }}}}"
"""


def inventory(mac: str, serial: str) -> str:
    data = json.loads((FIXTURES / "qemu-vm.json").read_text())
    data["interfaces"][0]["mac"] = mac
    data["system"]["serial"] = serial
    data["system"]["uuid"] = None
    return json.dumps(data)


def inspected_node(store: Store, lc: Lifecycle, n: int) -> int:
    mac = f"52:54:00:00:01:{n:02x}"
    node = Nodes(store).observe(Identity.of([mac]), cause="dhcp")
    lc.fire(node.id, Trigger.INSPECT, cause="boot")
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO inventories (node_id, version, ts, source, data) "
            "VALUES (?, 1, ?, 'agent', ?)",
            (node.id, store.clock(), inventory(mac, f"S{n}")),
        )
    lc.fire(node.id, Trigger.INSPECTED, cause="inventory")
    return node.id


def profiles_dir(tmp_path: Path, *, max_count: int = 100, approve: str = "auto") -> Path:
    d = tmp_path / "profiles"
    d.mkdir(parents=True, exist_ok=True)
    (d / "lab-vm.yaml").write_text(ONLY_VMS.format(max_count=max_count, approve=approve))
    return d


def test_match_records_profile_hostname_and_explanation(tmp_path: Path, store: Store) -> None:
    lc = Lifecycle(store, TIMEOUTS)
    catalog = ProfileCatalog(profiles_dir(tmp_path))
    assert catalog.reload()
    nid = inspected_node(store, lc, 1)
    t = Matcher(store, lc, catalog).match(nid)
    assert t is not None
    node = Nodes(store).get(nid)
    assert (node.state, node.profile, node.hostname) == ("matched", "lab-vm", "vm-525400000101")
    event = Events(store).list(node_id=nid)[-1]
    explanation = event.detail["match"]
    assert explanation["winner"] == "lab-vm"
    [verdict] = explanation["profiles"]
    assert verdict["profile"] == "lab-vm"
    assert json.dumps(verdict)  # stored as JSON, per condition


def test_manual_approval_waits_for_a_person(tmp_path: Path, store: Store) -> None:
    lc = Lifecycle(store, TIMEOUTS)
    catalog = ProfileCatalog(profiles_dir(tmp_path, approve="manual"))
    catalog.reload()
    nid = inspected_node(store, lc, 1)
    Matcher(store, lc, catalog).match(nid)
    node = Nodes(store).get(nid)
    assert (node.state, node.profile, node.reason) == (
        "awaiting-approval",
        "lab-vm",
        "awaiting approval",
    )
    lc.fire(nid, Trigger.APPROVE, cause="operator")
    assert Nodes(store).get(nid).state == "matched"


def test_no_profile_leaves_the_node_unmatched_until_one_fits(tmp_path: Path, store: Store) -> None:
    lc = Lifecycle(store, TIMEOUTS)
    empty = tmp_path / "profiles"
    empty.mkdir()
    catalog = ProfileCatalog(empty)
    catalog.reload()
    matcher = Matcher(store, lc, catalog)
    nid = inspected_node(store, lc, 1)
    matcher.match(nid)
    assert Nodes(store).get(nid).state == "unmatched"
    assert matcher.match(nid) is None  # nothing changed: no new event
    profiles_dir(tmp_path)
    assert catalog.reload()
    [t] = matcher.match_all("profiles changed")
    assert (t.to_state, t.node.profile) == ("matched", "lab-vm")


def test_max_count_holds_when_nodes_race(tmp_path: Path, clock: FakeClock) -> None:
    """Eight nodes matched at once from eight threads, each with its own SQLite connection,
    for a profile that wants three: exactly three win."""
    db = tmp_path / "ztpd.db"
    setup = Store(db, clock=clock)
    lc = Lifecycle(setup, TIMEOUTS)
    ids = [inspected_node(setup, lc, n) for n in range(8)]
    setup.close()
    pdir = profiles_dir(tmp_path, max_count=3)
    start = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def race(node_id: int) -> None:
        store = Store(db, clock=clock)
        catalog = ProfileCatalog(pdir)
        catalog.reload()
        try:
            start.wait(timeout=30)
            Matcher(store, Lifecycle(store, TIMEOUTS), catalog).match(node_id)
        except BaseException as e:
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == []
    states = [n.state for n in Nodes(Store(db)).list()]
    assert states.count("matched") == 3
    assert states.count("unmatched") == 5


def test_daemon_matches_pending_nodes_and_hot_reloads_profiles(tmp_path: Path) -> None:
    """A node left `inspected` before a restart is matched at start-up; an unmatched node
    proceeds when an admin adds a fitting profile file, without restarting ztpd."""
    state = tmp_path / "state"
    store = Store(state / "ztpd.db")
    lc = Lifecycle(store, TIMEOUTS)
    first = inspected_node(store, lc, 1)
    store.close()
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "broken.yaml").write_text("name: [unclosed\n")
    cfg = write_config(
        tmp_path / "ztpd.yaml", state, profiles_dir=str(pdir), profiles_poll_interval=0.2
    )
    with Daemon(cfg) as daemon:
        reader = Store(state / "ztpd.db")

        def state_of(nid: int) -> str:
            return Nodes(reader).get(nid).state

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and state_of(first) == "inspected":
            time.sleep(0.05)
        # A broken set is refused as a whole; with no set serving, nothing matches.
        assert state_of(first) == "unmatched"
        (pdir / "broken.yaml").unlink()
        shutil.copy(profiles_dir(tmp_path / "new") / "lab-vm.yaml", pdir / "lab-vm.yaml")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and state_of(first) != "matched":
            time.sleep(0.05)
        assert state_of(first) == "matched"
        reader.close()
    assert "profiles refused" in daemon.stderr
    assert "Traceback" not in daemon.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_shipped_profiles_take_every_fixture(name: str, tmp_path: Path, store: Store) -> None:
    """Every realistic inventory gets a decision from the shipped profiles (never an error)."""
    catalog = ProfileCatalog(REPO / "profiles")
    assert catalog.reload(), catalog.problems
    lc = Lifecycle(store, TIMEOUTS)
    node = Nodes(store).observe(Identity.of(["52:54:00:aa:bb:cc"]), cause="dhcp")
    lc.fire(node.id, Trigger.INSPECT, cause="boot")
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO inventories (node_id, version, ts, source, data) "
            "VALUES (?, 1, 0, 'agent', ?)",
            (node.id, (FIXTURES / name).read_text()),
        )
    lc.fire(node.id, Trigger.INSPECTED, cause="inventory")
    t = Matcher(store, lc, catalog).match(node.id)
    assert t is not None and t.to_state in ("matched", "awaiting-approval")
