"""Image deploy's phases over a real store and the agent's side of the protocol: the image write
has its own deadline that each report moves, "written" starts the first boot's, and each fails
the node with its own reason. The installer's phases are in test_endpoints.py."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, write_config
from tests.netns import wait_for
from ztpd import config
from ztpd.config import InstallPhases
from ztpd.errors import SourceError
from ztpd.identity import Identity
from ztpd.install.backend import StoreInstallBackend
from ztpd.install.deploy import ImageDeploy
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.model import Node
from ztpd.profiles.model import Os
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

from ..boot.conftest import FakeClock
from .conftest import inventory

PHASES = InstallPhases(image_write=120, installer=600, first_boot=300)
SILENT = "image write: no report from the agent for 120 s"
NO_CALL = "no first-boot callback within 300 s after the image was written"


class Site:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.store = Store(tmp / "ztpd.db", clock=self.clock)
        self.lifecycle = Lifecycle(
            self.store, {"inspecting": 60, "deploying": 3600, "configuring": 60}
        )
        self.nodes = Nodes(self.store)
        os_ = Os(method="image", image="deb")
        backend = StoreInstallBackend(
            self.lifecycle, Tokens(self.store), {"p": os_}.get, phases=PHASES
        )
        self.deploy = ImageDeploy(backend, images(tmp / "images"), "http://z:8080", 3600)
        node = self.nodes.observe(Identity.of(["52:54:00:12:34:56"]), cause="test")
        self.node_id = node.id
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO inventories (node_id, version, ts, source, data) "
                "VALUES (?, 1, 0, 'agent', ?)",
                (node.id, inventory("qemu-vm").model_dump_json(exclude_none=True)),
            )
        for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
            self.lifecycle.fire(node.id, trigger, cause="test")
        self.lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile="p")

    def node(self) -> Node:
        return self.nodes.get(self.node_id)

    def deadline(self) -> tuple[float | None, str | None]:
        row = self.store.query_one(
            "SELECT deadline, deadline_reason FROM nodes WHERE id = ?", (self.node_id,)
        )
        assert row is not None
        return row["deadline"], row["deadline_reason"]

    def report(self, **doc: object) -> None:
        self.deploy.report(self.node_id, doc)


def images(root: Path) -> Path:
    """A registered image ``deb`` (files of the recorded sizes; deploy only reads the manifest)."""
    out = root / "os" / "deb"
    out.mkdir(parents=True)
    files = {"deb.raw": 4096, "deb.raw.zst": 100}
    for name, size in files.items():
        with (out / name).open("wb") as f:
            f.truncate(size)
    doc = {
        **{"name": "deb", "fingerprint": "f", "mirror": "", "suite": "", "root_uuid": ""},
        "files": {n: {"sha256": f"sha-{n}", "size": size} for n, size in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(doc))
    return root


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.store.close()


def test_reports_move_the_image_write_deadline_and_written_starts_the_first_boot(
    site: Site,
) -> None:
    node = site.deploy.start(site.node())  # the fast track: the agent of a matched node asks
    assert node is not None and node.state == "deploying"
    assert site.deadline() == (site.clock.now + 120, SILENT)
    assert site.deploy.action(node)["action"] == "write-image"

    for percent in (10, 40, 70, 100):
        site.clock.now += 100
        site.report(status="progress", bytes=percent * 40, percent=percent, rate=1000)
        assert site.deadline() == (site.clock.now + 120, SILENT)
        assert site.lifecycle.expire_due() == []
    assert site.clock.now > node.state_since + 120  # past the first deadline, still deploying

    site.report(status="written")
    written = site.clock.now
    assert site.deadline() == (written + 300, NO_CALL)
    phase = site.node().facts["deploy_phase"]
    assert (phase["name"], phase["since"]) == ("first-boot", node.state_since)
    site.clock.now += 299
    assert site.lifecycle.expire_due() == []
    site.clock.now += 1
    site.lifecycle.expire_due()
    failed = site.node()
    assert (failed.state, failed.failed_from, failed.reason) == ("failed", "deploying", NO_CALL)


def test_an_agent_that_stops_reporting_fails_the_image_write(site: Site) -> None:
    site.lifecycle.fire(site.node_id, Trigger.DEPLOY, cause="test")  # the PXE boot's path
    site.report(status="progress", bytes=4000, percent=10, rate=1000)
    site.clock.now += 121
    site.lifecycle.expire_due()
    assert (site.node().state, site.node().reason) == ("failed", SILENT)

    # retry is a new stay in deploying: its image write starts afresh.
    site.lifecycle.fire(site.node_id, Trigger.RETRY, cause="test")
    assert site.deadline() == (site.clock.now + 120, SILENT)
    assert site.node().facts["deploy_phase"]["since"] == site.node().state_since


def test_each_phase_limit_is_its_own_config_key() -> None:
    cfg = config.parse("install:\n  phases:\n    first_boot: 90\n", "site.yaml", {}, Path("/"))
    assert cfg.install.phases == InstallPhases(first_boot=90)
    assert cfg.lifecycle.timeouts.deploying == 3 * 3600  # the cap over all phases
    with pytest.raises(
        SourceError, match=r"site.yaml:3:17: install.phases.first_boot: Input should"
    ):
        config.parse("install:\n  phases:\n    first_boot: 0\n", "site.yaml", {}, Path("/"))


def test_the_daemon_fails_a_silent_image_write_with_its_configured_limit(tmp_path: Path) -> None:
    """``ztpd serve`` reads install.phases: the node's PXE boot starts the image write, and no
    agent report within image_write seconds fails it with that phase's reason."""
    state = tmp_path / "state"
    store = Store(state / "ztpd.db")
    lifecycle = Lifecycle(store, {"inspecting": 60, "deploying": 3600, "configuring": 60})
    node = Nodes(store).observe(Identity.of(["52:54:00:00:03:01"]), cause="test")
    for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
        lifecycle.fire(node.id, trigger, cause="test")
    lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile="kubeedge-edge")  # image
    store.close()
    cfg = write_config(tmp_path / "ztpd.yaml", state, install={"phases": {"image_write": 1}})
    with Daemon(cfg) as daemon:
        url = f"{daemon.url}/ipxe?mac=52:54:00:00:03:01&platform=efi&buildarch=x86_64"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and "ztpd.mode=deploy" in r.read().decode()
        reader = Store(state / "ztpd.db")
        try:
            got = wait_for(
                lambda: (n := Nodes(reader).get(node.id)).state == "failed" and n,
                "the image write's deadline",
                timeout=30,
            )
        finally:
            reader.close()
    assert (got.failed_from, got.reason) == (
        "deploying",
        "image write: no report from the agent for 1 s",
    )
    assert "Traceback" not in daemon.stderr
