"""Image deploy through the discovery agent (``os.method: image``).

Two ways in, one protocol after:

- fast track: the agent of the discovery boot is still polling ``GET /agent/v1/next`` when the
  node becomes ``matched`` with an image profile; that poll moves the node to ``deploying``
  (``start``: the transition's cause is ``agent``) and gets ``write-image`` at once, with no
  reboot and no second PXE boot;
- deploy mode: a matched node that PXE boots (power cycled, reprovisioned, its agent gone with a
  restart) gets ``install/image.ipxe.j2``: the discovery kernel and initrd with
  ``ztpd.mode=deploy`` and an agent token; the node is now ``deploying``. The agent skips the
  inventory and polls ``GET /agent/v1/next``.

The first poll of a stay in ``deploying`` gets (once: a lost answer ends in the ``deploying``
timeout, never in a second write)::

    {"action": "write-image", "image": "debian-12", "url": "<base>/files/os/debian-12/...",
     "format": "raw.zst", "sha256": "<of the file served>", "size": <bytes served>,
     "disk_bytes": <bytes it needs on disk>, "disk": "/dev/vda", "disk_serial": "...",
     "disk_wwn": "...", "seed_url": "<base>/install/<node>/<token>/", "interval": 10}

``disk`` is what ``rootdisk.choose`` picks from the node's latest inventory with the profile's
``os.root_disk`` hints and ``min_size`` raised to ``disk_bytes``; the agent finds it by serial,
else WWN, else kernel name. It zeroes ``[0, disk_bytes)`` of that disk in one request
(``fallocate --zero-range``: the kernel's zero-out, as BLKZEROOUT; offloaded on QEMU and NVMe)
and writes the image with ``dd conv=sparse``, which skips the image's all-zero blocks; the
sha256 is of the stream served. No fitting disk, or an image that is not registered, fails the
node with the reason instead (the agent is told ``wait``). The seed URL carries a fresh ``install``
token: the agent fetches ``user-data``, ``meta-data`` and ``network-config`` from it into the
image's ``/var/lib/cloud/seed/nocloud/``, and the installed system's first boot posts its SSH
host keys to ``<seed_url>firstboot`` (``ztpd.http.install``): only then is the node deployed.

The agent reports on ``POST /agent/v1/deploy`` (JSON)::

    {"status": "progress", "bytes": <written>, "percent": 0-100, "rate": <bytes/s>}
    {"status": "written"}                  verified, seed written; the agent reboots
    {"status": "failed", "message": "..."} the node fails with it; the agent does not reboot

Progress lands in the node's ``facts.install_progress`` (every report) and in ``install``
events (each tenth of the way, and the end).

Images are registered by their manifest, ``<images>/os/<name>/manifest.json`` (what
``ztpd.images.osimage`` writes: sha256 and size per file). Of the files it lists, the agent gets
``<name>.raw.zst``, else ``<name>.raw.gz``, else ``<name>.raw``; ``<name>.raw`` must be listed
for its size (the bytes the disk needs). ``ztpd images import`` (``ztpd.images.importer``)
registers raw, raw.gz, raw.zst and qcow2 files the same way, as raw and raw.zst.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztpd.errors import BadRequest, Conflict, IllegalTransition, NotFound
from ztpd.images import osimage
from ztpd.install.backend import PURPOSE, StoreInstallBackend
from ztpd.install.rootdisk import choose
from ztpd.inventory.schema import Inventory
from ztpd.lifecycle import State, Trigger
from ztpd.model import Node
from ztpd.profiles.model import RootDisk

log = logging.getLogger("ztpd.install.deploy")

# What the agent can write, most compact first: (file suffix, format name).
FORMATS = ((".raw.zst", "raw.zst"), (".raw.gz", "raw.gz"), (".raw", "raw"))
STATUSES = ("progress", "written", "failed")
MAX_MESSAGE = 500


@dataclass(frozen=True)
class ImageSource:
    name: str
    path: str  # relative to images_dir: what /files/ serves
    format: str
    sha256: str
    size: int  # of the file served
    disk_bytes: int  # of the raw image: what the disk must hold


def find_image(images_dir: Path, name: str) -> ImageSource:
    """The registered image ``name`` in its most compact format; NotFound if not registered."""
    image = osimage.cached(images_dir, name)
    if image is None:
        raise NotFound(
            f"image {name} is not registered (no complete {osimage.OS_DIR}/{name}/"
            f"{osimage.MANIFEST} in {images_dir})"
        )
    try:
        raw = image.file(".raw")
    except NotFound:
        raise NotFound(f"image {name}: its manifest lists no {name}.raw (its size)") from None
    for suffix, fmt in FORMATS:
        try:
            f = image.file(suffix)
        except NotFound:
            continue
        path = f"{osimage.OS_DIR}/{name}/{f.name}"
        return ImageSource(name, path, fmt, f.sha256, f.size, raw.size)
    raise NotFound(f"image {name} has no file the agent can write")  # pragma: no cover


def write_image_action(
    node_id: int,
    hints: RootDisk,
    inventory: Inventory | None,
    image: ImageSource,
    *,
    base_url: str,
    seed_url: str,
) -> dict[str, Any]:
    """The write-image payload (pure): the root disk the hints pick among the disks that hold
    the image. NotFound with every disk and why it was ruled out when none fits."""
    if hints.min_size is None or hints.min_size < image.disk_bytes:
        hints = hints.model_copy(update={"min_size": image.disk_bytes})
    try:
        disk = choose(hints, inventory.disks if inventory is not None else [])
    except NotFound as e:
        raise NotFound(f"image {image.name} needs {image.disk_bytes} bytes: {e.message}") from None
    return {
        "action": "write-image",
        "image": image.name,
        "url": f"{base_url.rstrip('/')}/files/{image.path}?node={node_id}",
        "format": image.format,
        "sha256": image.sha256,
        "size": image.size,
        "disk_bytes": image.disk_bytes,
        "disk": disk.name,
        "disk_serial": disk.serial or "",
        "disk_wwn": disk.wwn or "",
        "seed_url": seed_url,
    }


def _int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"deploy report: {key} must be a non-negative integer")
    return value


class ImageDeploy:
    """The agent's side of image deploy, over the store-backed install backend; blocking."""

    def __init__(
        self, backend: StoreInstallBackend, images_dir: Path, base_url: str, token_ttl: float
    ) -> None:
        self.backend = backend
        self.images_dir = images_dir
        self.base_url = base_url.rstrip("/")
        self.token_ttl = token_ttl

    def start(self, node: Node) -> Node | None:
        """Fast track: a matched node whose profile writes an image moves to deploying now, for
        the agent that asked; the node as it is then (another request may have moved it
        first). None when the profile deploys no image (the agent reboots into its installer)."""
        os_ = self.backend.os_for(node)
        if os_ is None or os_.method != "image":
            return None
        with contextlib.suppress(IllegalTransition):
            self.backend.lifecycle.fire(
                node.id,
                Trigger.DEPLOY,
                cause="agent",
                detail={"fast_track": True},
                expect=State.MATCHED,
            )
            log.info("image deploy fast track node=%s profile=%s", node.id, node.profile)
        return self.backend.nodes.get(node.id)

    def action(self, node: Node) -> dict[str, Any]:
        """What a deploying node's agent does next: write-image once per stay, else wait."""
        started = node.facts.get("image_deploy")
        if isinstance(started, dict) and started.get("since") == node.state_since:
            return {"action": "wait"}
        token = self.backend.tokens.issue(node.id, PURPOSE, self.token_ttl)
        seed_url = f"{self.base_url}/install/{node.id}/{token}/"
        try:
            os_ = self.backend.os_for(node)
            if os_ is None or os_.method != "image" or not os_.image:
                raise NotFound(f"profile {node.profile or '(none)'} deploys no image")
            image = find_image(self.images_dir, os_.image)
            inventory = self.backend.inventory(node)
            action = write_image_action(
                node.id, os_.root_disk, inventory, image, base_url=self.base_url, seed_url=seed_url
            )
        except NotFound as e:
            self.backend.tokens.revoke(node.id, PURPOSE)
            log.warning("image deploy refused node=%s reason=%s", node.id, e.message)
            self._fail(node.id, f"image deploy: {e.message}", {})
            return {"action": "wait"}
        record = {k: action[k] for k in ("image", "format", "disk", "disk_bytes", "sha256")}
        with self.backend.store.transaction():
            self.backend.nodes.update_facts(
                node.id, {"image_deploy": {**record, "since": node.state_since}}
            )
            self.backend.event(node.id, "write-image", record)
        log.info(
            "image deploy ordered node=%s image=%s format=%s disk=%s",
            node.id,
            action["image"],
            action["format"],
            action["disk"],
        )
        return action

    def report(self, node_id: int, doc: dict[str, Any]) -> None:
        """One report from the agent; Conflict unless the node is deploying."""
        status = doc.get("status")
        if status not in STATUSES:
            raise BadRequest(f"deploy report: status must be one of {', '.join(STATUSES)}")
        node = self.backend.node(node_id)
        if node is None or node.state != State.DEPLOYING:
            state = node.state if node is not None else "gone"
            raise Conflict(f"node {node_id} is {state}, not deploying")
        message = str(doc.get("message") or "")[:MAX_MESSAGE]
        now = time.time()
        if status == "failed":
            log.warning("image deploy failed node=%s message=%r", node_id, message)
            self._fail(node_id, f"image write failed: {message or 'no message'}", {})
            return
        if status == "written":
            progress: dict[str, Any] = {
                "stage": "written",
                "message": "image written and verified; rebooting into it",
                "percent": 100,
                "at": now,
            }
        else:
            written, rate, percent = _int(doc, "bytes"), _int(doc, "rate"), _int(doc, "percent")
            progress = {
                "stage": "write-image",
                "message": f"written {written or 0} bytes ({percent or 0}%)",
                "bytes": written,
                "percent": min(percent, 100) if percent is not None else None,
                "rate": rate,
                "at": now,
            }
        log.info("image deploy node=%s stage=%s percent=%s", node_id, status, progress["percent"])
        # The node always has the latest; an event only per tenth of the way (and the end).
        last = node.facts.get("install_progress")
        before = last.get("percent") if isinstance(last, dict) else None
        now_at = progress["percent"]
        worth = (
            not isinstance(before, int)
            or not isinstance(now_at, int)
            or (now_at // 10 != before // 10)
        )
        self.backend.progress(node_id, progress, status == "written" or worth)

    def _fail(self, node_id: int, reason: str, detail: dict[str, Any]) -> None:
        try:
            self.backend.fail(node_id, "image", reason, detail)
        except Conflict as e:  # it moved on meanwhile (timeout, operator)
            log.info("image deploy fail skipped node=%s reason=%s", node_id, e.message)
