"""Image deploy's decisions: which file of a registered image the agent gets, which disk it goes
on (table-driven over fixture inventories), and the agent's side over a real store: write-image
once per stay in deploying, refusals fail the node with the reason, reports become progress."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ztpd.errors import BadRequest, Conflict, NotFound
from ztpd.http.agent import AgentService
from ztpd.identity import Identity
from ztpd.install.backend import StoreInstallBackend
from ztpd.install.deploy import ImageDeploy, ImageSource, find_image, write_image_action
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.profiles.model import Os, RootDisk
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

from .conftest import inventory

GIB = 1 << 30
BASE = "http://10.0.0.1:8080"
SEED = f"{BASE}/install/7/tok/"
IMAGE = ImageSource("deb", "os/deb/deb.raw.zst", "raw.zst", "ab" * 32, 200 << 20, GIB)


def manifest(images: Path, name: str, files: dict[str, int]) -> None:
    out = images / "os" / name
    out.mkdir(parents=True)
    for f, size in files.items():
        with (out / f).open("wb") as fh:
            fh.truncate(size)
    doc = {
        "name": name,
        "fingerprint": "f",
        "mirror": "m",
        "suite": "bookworm",
        "root_uuid": "u",
        "files": {f: {"sha256": f"sha-{f}", "size": size} for f, size in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("files", "path", "fmt"),
    [
        ({"deb.raw": 4096, "deb.raw.zst": 100, "deb.raw.gz": 200}, "os/deb/deb.raw.zst", "raw.zst"),
        ({"deb.raw": 4096, "deb.raw.gz": 200}, "os/deb/deb.raw.gz", "raw.gz"),
        ({"deb.raw": 4096}, "os/deb/deb.raw", "raw"),
    ],
)
def test_the_most_compact_registered_format_is_written(
    tmp_path: Path, files: dict[str, int], path: str, fmt: str
) -> None:
    manifest(tmp_path, "deb", files)
    image = find_image(tmp_path, "deb")
    assert (image.path, image.format, image.disk_bytes) == (path, fmt, 4096)
    assert (image.sha256, image.size) == (f"sha-{path.rsplit('/', 1)[1]}", files[image.path[7:]])


def test_unregistered_and_sizeless_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="image nope is not registered"):
        find_image(tmp_path, "nope")
    manifest(tmp_path, "deb", {"deb.raw.zst": 100})
    with pytest.raises(NotFound, match=r"lists no deb\.raw"):
        find_image(tmp_path, "deb")


@pytest.mark.parametrize(
    ("machine", "hints", "disk", "serial"),
    [
        ("qemu-vm", {}, "/dev/vda", ""),
        ("supermicro-storage", {}, "/dev/sda", "S47MNA0M100001"),
        ("supermicro-storage", {"serial": "S47MNA0M100002"}, "/dev/sdb", "S47MNA0M100002"),
        ("supermicro-storage", {"prefer": "largest", "rotational": True}, "/dev/sdc", "ZL200000"),
    ],
)
def test_the_payload_names_the_disk_the_hints_pick(
    machine: str, hints: dict[str, Any], disk: str, serial: str
) -> None:
    action = write_image_action(
        7, RootDisk(**hints), inventory(machine), IMAGE, base_url=BASE, seed_url=SEED
    )
    assert action == {
        "action": "write-image",
        "image": "deb",
        "url": f"{BASE}/files/os/deb/deb.raw.zst?node=7",
        "format": "raw.zst",
        "sha256": "ab" * 32,
        "size": 200 << 20,
        "disk_bytes": GIB,
        "disk": disk,
        "disk_serial": serial,
        "disk_wwn": "0x5000c500d0000000" if disk == "/dev/sdc" else "",
        "seed_url": SEED,
    }


@pytest.mark.parametrize(
    ("machine", "hints", "image_bytes", "why"),
    [
        ("qemu-vm", {"serial": "NOPE"}, GIB, "serial is None, not 'NOPE'"),
        ("qemu-vm", {}, 32 * GIB, "21474836480 bytes is less than min_size 34359738368"),
        ("qemu-vm", {"min_size": 64 * GIB}, GIB, "less than min_size 68719476736"),
        ("supermicro-storage", {"name": "/dev/nvme9n1"}, GIB, "/dev/sda: name is '/dev/sda'"),
    ],
)
def test_no_fitting_disk_is_refused_with_every_reason(
    machine: str, hints: dict[str, Any], image_bytes: int, why: str
) -> None:
    image = ImageSource("deb", "os/deb/deb.raw", "raw", "00", image_bytes, image_bytes)
    with pytest.raises(NotFound, match=f"image deb needs {image_bytes} bytes") as e:
        write_image_action(
            7, RootDisk(**hints), inventory(machine), image, base_url=BASE, seed_url=SEED
        )
    assert why in e.value.message


def test_no_inventory_is_no_disk() -> None:
    with pytest.raises(NotFound, match="no disks reported"):
        write_image_action(7, RootDisk(), None, IMAGE, base_url=BASE, seed_url=SEED)


# --- over a real store ---------------------------------------------------------------------------


class Site:
    def __init__(self, tmp: Path, os_: Os, *, deploying: bool = True) -> None:
        self.store = Store(tmp / "ztpd.db")
        self.lifecycle = Lifecycle(
            self.store, {"inspecting": 60, "deploying": 60, "configuring": 60}
        )
        self.nodes = Nodes(self.store)
        backend = StoreInstallBackend(self.lifecycle, Tokens(self.store), {"p": os_}.get)
        self.deploy = ImageDeploy(backend, tmp / "images", BASE, 3600)
        node = self.nodes.observe(Identity.of(["52:54:00:12:34:56"]), cause="test")
        self.node_id = node.id
        inv = inventory("qemu-vm").model_dump_json(exclude_none=True)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO inventories (node_id, version, ts, source, data) "
                "VALUES (?, 1, 0, 'agent', ?)",
                (node.id, inv),
            )
        for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
            self.lifecycle.fire(node.id, trigger, cause="test")
        self.lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile="p")
        if deploying:
            self.lifecycle.fire(node.id, Trigger.DEPLOY, cause="test")

    def events(self, kind: str) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT cause, detail FROM events WHERE node_id = ? AND kind = ? ORDER BY id",
            (self.node_id, kind),
        )
        return [{"cause": r["cause"], **json.loads(r["detail"])} for r in rows]


def image_os(image: str = "deb", **hints: Any) -> Os:
    return Os(method="image", image=image, root_disk=RootDisk(**hints))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    manifest(tmp_path / "images", "deb", {"deb.raw": 4096, "deb.raw.zst": 100})
    s = Site(tmp_path, image_os())
    yield s
    s.store.close()


def test_write_image_once_per_stay_in_deploying(site: Site) -> None:
    node = site.nodes.get(site.node_id)
    action = site.deploy.action(node)
    assert action["action"] == "write-image" and action["disk"] == "/dev/vda"
    token = action["seed_url"].rstrip("/").rsplit("/", 1)[1]
    assert Tokens(site.store).verify(token, "install", node_id=site.node_id) == site.node_id
    assert site.deploy.action(site.nodes.get(site.node_id)) == {"action": "wait"}
    [ordered] = site.events("install")
    assert ordered["cause"] == "write-image" and token not in json.dumps(ordered)
    assert site.nodes.get(site.node_id).facts["image_deploy"]["format"] == "raw.zst"


def test_reports_become_progress_and_failure(site: Site) -> None:
    for percent in (50, 55, 61):  # an event per tenth of the way: 50 and 61, not 55
        report = {"status": "progress", "bytes": 40 * percent, "percent": percent, "rate": 1000}
        site.deploy.report(site.node_id, report)
    progress = site.nodes.get(site.node_id).facts["install_progress"]
    assert (progress["bytes"], progress["percent"], progress["rate"]) == (2440, 61, 1000)
    site.deploy.report(site.node_id, {"status": "written"})
    node = site.nodes.get(site.node_id)
    assert node.state == "deploying" and node.facts["install_progress"]["stage"] == "written"
    bad_reports: list[dict[str, Any]] = [
        {"status": "done"},
        {"status": "progress", "bytes": -1},
        {"status": "progress", "rate": "fast"},
    ]
    for bad in bad_reports:
        with pytest.raises(BadRequest):
            site.deploy.report(site.node_id, bad)
    site.deploy.report(site.node_id, {"status": "failed", "message": "sha256 mismatch: got 1"})
    node = site.nodes.get(site.node_id)
    assert (node.state, node.reason) == ("failed", "image write failed: sha256 mismatch: got 1")
    with pytest.raises(Conflict, match="not deploying"):
        site.deploy.report(site.node_id, {"status": "written"})
    progress_events = [e for e in site.events("install") if e["cause"] == "progress"]
    assert [e["percent"] for e in progress_events] == [50, 61, 100]


@pytest.mark.parametrize(
    ("os_", "why"),
    [
        (image_os("missing"), "image deploy: image missing is not registered"),
        (image_os(serial="NOPE"), "image deploy: image deb needs 4096 bytes: no disk fits"),
        (Os(method="preseed", release="debian-12"), "image deploy: profile p deploys no image"),
    ],
)
def test_refusals_fail_the_node_and_tell_the_agent_to_wait(
    tmp_path: Path, os_: Os, why: str
) -> None:
    manifest(tmp_path / "images", "deb", {"deb.raw": 4096, "deb.raw.zst": 100})
    site = Site(tmp_path, os_)
    try:
        assert site.deploy.action(site.nodes.get(site.node_id)) == {"action": "wait"}
        node = site.nodes.get(site.node_id)
        assert node.state == "failed" and node.reason is not None
        assert node.reason.startswith(why), node.reason
        assert site.store.query("SELECT 1 FROM tokens WHERE purpose = 'install'") == []
    finally:
        site.store.close()


@pytest.mark.parametrize(
    ("os_", "state", "action"),
    [
        (image_os(), "deploying", "write-image"),
        (Os(method="preseed", release="debian-12"), "matched", "reboot"),
    ],
)
def test_fast_track_a_polling_agent_of_a_matched_node_writes_without_a_reboot(
    tmp_path: Path, os_: Os, state: str, action: str
) -> None:
    manifest(tmp_path / "images", "deb", {"deb.raw": 4096, "deb.raw.zst": 100})
    site = Site(tmp_path, os_, deploying=False)
    agent = AgentService(site.store, site.lifecycle, silence=60, deploy=site.deploy)
    try:
        got = agent.next_action(site.node_id)
        node = site.nodes.get(site.node_id)
        assert (got["action"], node.state) == (action, state)
        if state == "deploying":
            # As after the deploy-mode boot: the transition (here from the agent), the deadline,
            # the seed's install token, the write-image event; and only once per stay.
            [moved] = site.store.query(
                "SELECT cause, detail FROM events WHERE node_id = ? AND to_state = 'deploying'",
                (site.node_id,),
            )
            assert (moved["cause"], json.loads(moved["detail"])) == ("agent", {"fast_track": True})
            assert node.deadline == node.state_since + 60
            token = got["seed_url"].rstrip("/").rsplit("/", 1)[1]
            assert Tokens(site.store).verify(token, "install", node_id=site.node_id)
            assert [e["cause"] for e in site.events("install")] == ["write-image"]
            assert agent.next_action(site.node_id)["action"] == "wait"
    finally:
        site.store.close()
