"""The discovery agent's endpoints. Every request carries the node's ``agent`` token
(``Authorization: Bearer <token>``, issued into the discovery boot script); the token alone says
which node is speaking.

    POST /agent/v1/inventory   the agent's raw bundle (a tar.gz made by the agent, as
                               application/gzip or base64 as application/x-ztpd-bundle+base64;
                               ztpd runs the collectors, ztpd/inventory/collect.py) or a finished
                               v1 inventory (application/json). Stored as the next version.
    POST /agent/v1/log         a chunk of the agent's console log (text/plain, X-Log-Offset)
    POST /agent/v1/heartbeat   {"boot", "stage"}; keeps an inspecting node's silence deadline off
    GET  /agent/v1/next        {"action": wait|reboot|poweroff|write-image, "interval": seconds}
                               a matched node with an image profile becomes deploying and its
                               agent gets write-image with what to write where (fast track,
                               ztpd/install/deploy.py), as does a deploying one's; a matched
                               node of an installer profile is told to reboot (its PXE boot
                               then serves the install)
    POST /agent/v1/deploy      {"status": progress|written|failed, ...}: the image write's
                               progress and outcome (ztpd/install/deploy.py); 409 unless deploying
    POST /agent/v1/wipe        {"status": wiped|failed, "message", "disks"}: a retiring node's
                               agent was told {"action": "wipe", "level": metadata|full} and
                               erased every disk; wiped → retired, failed → failed; 409 otherwise
    GET  /api/v1/nodes/{id}/agent-log   the console log (operator-facing, behind ``guard``)

Bad input gets a 4xx naming what was wrong and an event on the node; a rejected inventory
fails an inspecting node with the reason, so the node says why. Bodies are read against a limit
before anything is parsed; heartbeats faster than one a second are refused (429), and rejections
are recorded at most once a second per node or address, so a flood cannot flood the event log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pydantic
from aiohttp import web

from ztpd.errors import BadRequest, Forbidden, IllegalTransition, NotFound
from ztpd.identity import Identity
from ztpd.inventory.collect import Bundle, collect, identity
from ztpd.inventory.schema import Inventory
from ztpd.lifecycle import WIPE_LEVELS, Lifecycle, State, Trigger
from ztpd.model import Node
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

log = logging.getLogger("ztpd.http.agent")

PURPOSE = "agent"  # the token purpose the discovery boot script issues
PREFIX = "/agent/v1"
MAX_INVENTORY_BYTES = 8 << 20
MAX_LOG_CHUNK = 256 << 10
MAX_LOG_PER_BOOT = 8 << 20
MIN_HEARTBEAT_GAP = 1.0  # seconds
SILENT = "agent silent in inspecting"
# busybox wget cannot post binary files, so the agent posts its bundle base64-encoded.
BUNDLE_BASE64 = "application/x-ztpd-bundle+base64"
ACTIONS = frozenset({"wait", "reboot", "poweroff"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DeployHook(Protocol):
    """Image deploy's agent side (``ztpd.install.deploy.ImageDeploy``)."""

    def start(self, node: Node) -> Node | None: ...

    def action(self, node: Node) -> dict[str, Any]: ...

    def report(self, node_id: int, doc: dict[str, Any]) -> None: ...


class TooMany(Exception):
    """A heartbeat came sooner than MIN_HEARTBEAT_GAP after the last accepted one."""


@dataclass
class _Limiter:
    """At most one event per ``gap`` seconds per key (monotonic clock; memory per key)."""

    gap: float
    last: dict[str, float]

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self.last.get(key, -self.gap) < self.gap:
            return False
        self.last[key] = now
        return True


def validation_problems(e: pydantic.ValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as [{field: "interfaces.0.mac", message}], the field path first."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in e.errors(include_url=False)
    ]


class AgentService:
    """What the endpoints do, synchronously (they call it in a worker thread)."""

    def __init__(
        self,
        store: Store,
        lifecycle: Lifecycle,
        *,
        silence: float,
        heartbeat: float = 10.0,
        on_heartbeat: Callable[[], None] | None = None,
        deploy: DeployHook | None = None,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.nodes = Nodes(store)
        self.tokens = Tokens(store)
        self.silence = silence
        self.heartbeat_interval = heartbeat
        self._on_heartbeat = on_heartbeat
        self.deploy = deploy
        self._beats = _Limiter(MIN_HEARTBEAT_GAP, {})
        self._noted = _Limiter(1.0, {})

    # --- rejections ------------------------------------------------------------------------------

    def note_rejection(
        self, node_id: int | None, key: str, path: str, message: str, detail: Any = None
    ) -> None:
        """An event for a refused request (rate limited per node or address)."""
        if self._noted.allow(f"{node_id}:{key}"):
            self.store.add_event(
                node_id=node_id,
                kind="agent-rejected",
                cause=path,
                detail={"message": message, "from": key, "detail": detail},
            )

    def reject_inventory(self, node_id: int, message: str, problems: list[dict[str, str]]) -> None:
        """A bad inventory is an event, and fails an inspecting node with the first problem."""
        self.store.add_event(
            node_id=node_id,
            kind="inventory-rejected",
            cause="inventory",
            detail={"message": message, "problems": problems[:20]},
        )
        first = problems[0] if problems else {"field": "body", "message": message}
        with contextlib.suppress(IllegalTransition):  # not inspecting: the event says it all
            self.lifecycle.fire(
                node_id,
                Trigger.FAIL,
                cause="inventory",
                reason=f"inventory rejected: {first['field']}: {first['message']}"[:500],
                expect=State.INSPECTING,
            )

    # --- the agent's requests -----------------------------------------------------------------

    def authenticate(self, token: str | None) -> int:
        return self.tokens.verify(token, PURPOSE)

    def seen(self, node_id: int, address: str | None, **fields: str | None) -> None:
        """Record the agent's last word and keep an inspecting node's silence deadline away."""
        now = self.store.clock()
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO agents (node_id, last_seen, address) VALUES (?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen, "
                "address = excluded.address",
                (node_id, now, address),
            )
            for column in ("boot", "stage"):
                if fields.get(column) is not None:
                    conn.execute(
                        f"UPDATE agents SET {column} = ? WHERE node_id = ?",
                        (fields[column], node_id),
                    )
            self.lifecycle.touch(node_id, State.INSPECTING, self.silence, SILENT)

    def heartbeat(
        self, node_id: int, address: str | None, boot: str | None, stage: str | None
    ) -> None:
        if not self._beats.allow(str(node_id)):
            raise TooMany
        self.seen(node_id, address, boot=boot, stage=stage)
        if self._on_heartbeat is not None:
            self._on_heartbeat()

    def accept_inventory(self, node_id: int, inventory: Inventory) -> dict[str, Any]:
        """Link the machine's identity to the node, store the next version and move the node
        from inspecting to inspected. Forbidden if the inventory describes another machine."""
        ident = identity(inventory)
        self._check_same_machine(node_id, ident)
        data = inventory.model_dump_json(exclude_none=True)
        with self.store.transaction() as conn:
            node = self.nodes.observe(ident, cause="inventory", node_id=node_id)
            row = self.store.query_one(
                "SELECT COALESCE(MAX(version), 0) AS v FROM inventories WHERE node_id = ?",
                (node_id,),
            )
            version = (int(row["v"]) if row else 0) + 1
            conn.execute(
                "INSERT INTO inventories (node_id, version, ts, source, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (node_id, version, self.store.clock(), "agent", data),
            )
            self.store.add_event(
                node_id=node_id,
                kind="inventory",
                cause="agent",
                detail={
                    "version": version,
                    "errors": [f"{e.collector}: {e.message}"[:300] for e in inventory.errors],
                },
            )
        moved = node.state == State.INSPECTING
        if moved:
            try:
                self.lifecycle.fire(
                    node_id, Trigger.INSPECTED, cause="inventory", expect=State.INSPECTING
                )
            except IllegalTransition:
                moved = False  # it moved on (timed out) meanwhile
        log.info(
            "inventory stored node=%s version=%s errors=%d inspected=%s",
            node_id,
            version,
            len(inventory.errors),
            moved,
        )
        return {"node": node_id, "version": version, "errors": len(inventory.errors)}

    def _check_same_machine(self, node_id: int, ident: Identity) -> None:
        """A token is for one node; an inventory that shares neither its UUID nor any of its
        MACs but matches another node's is that other machine's, and is refused."""
        node = self.nodes.get(node_id)
        if node.uuid and ident.uuid:
            if node.uuid != ident.uuid:
                raise Forbidden("token belongs to another node: the inventory's UUID differs")
            return
        if node.macs and ident.macs and not set(node.macs) & set(ident.macs):
            owners = {n.id for m in ident.macs if (n := self.nodes.by_mac(m)) is not None}
            if owners - {node_id}:
                raise Forbidden("token belongs to another node: the inventory's MACs are known")

    def append_log(self, node_id: int, boot: str, offset: int, text: str) -> int:
        """Store a chunk at ``offset`` of this boot's log; a resent chunk is stored once.
        Returns the log's length afterwards."""
        with self.store.transaction() as conn:
            row = self.store.query_one(
                "SELECT COALESCE(MAX(offset + LENGTH(CAST(text AS BLOB))), 0) AS n "
                "FROM agent_logs WHERE node_id = ? AND boot = ?",
                (node_id, boot),
            )
            have = int(row["n"]) if row else 0
            data = text.encode()
            if offset < have:  # partly or wholly seen already
                data = data[have - offset :]
                offset = have
            elif offset > have:  # a chunk got lost: say so in the log itself
                data = f"[ztpd: {offset - have} bytes of log lost]\n".encode() + data
                offset = have
            if data and have + len(data) <= MAX_LOG_PER_BOOT:
                conn.execute(
                    "INSERT INTO agent_logs (node_id, boot, offset, ts, text) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (node_id, boot, offset, self.store.clock(), data.decode(errors="replace")),
                )
                have += len(data)
        return have

    def next_action(self, node_id: int) -> dict[str, Any]:
        """The action ordered for the agent (delivered once), else what the node's state asks
        for: poweroff when retired, the image write when deploying or when matched with an image
        profile (fast track: no reboot), reboot when matched otherwise (to PXE boot its
        installer), the disk wipe when retiring; else wait."""
        with self.store.transaction() as conn:
            row = self.store.query_one("SELECT action FROM agents WHERE node_id = ?", (node_id,))
            action = row["action"] if row and row["action"] else None
            if action:
                conn.execute("UPDATE agents SET action = NULL WHERE node_id = ?", (node_id,))
        interval = {"interval": self.heartbeat_interval}
        if action is not None:
            return {"action": action, **interval}
        node = self.nodes.get(node_id)
        if node.state == State.MATCHED and self.deploy is not None:
            node = self.deploy.start(node) or node
        if node.state == State.DEPLOYING and self.deploy is not None:
            return {**self.deploy.action(node), **interval}
        if node.state == State.RETIRING:
            return {"action": "wipe", "level": self.wipe_level(node_id), **interval}
        action = {State.RETIRED: "poweroff", State.MATCHED: "reboot"}.get(State(node.state))
        return {"action": action or "wait", **interval}

    def wipe_level(self, node_id: int) -> str:
        """The level the retire that made the node retiring asked for (metadata if unknown)."""
        row = self.store.query_one(
            "SELECT detail FROM events WHERE node_id = ? AND kind = 'transition' "
            "AND to_state = ? ORDER BY id DESC LIMIT 1",
            (node_id, State.RETIRING.value),
        )
        level = json.loads(row["detail"] or "{}").get("wipe") if row else None
        return level if level in WIPE_LEVELS else "metadata"

    def wiped(self, node_id: int, doc: dict[str, Any]) -> None:
        """The agent's wipe report: retiring → retired, or failed with its message."""
        status, disks = doc.get("status"), str(doc.get("disks") or "")[:500]
        if status not in ("wiped", "failed"):
            raise BadRequest("wipe report: status must be wiped or failed")
        level = self.wipe_level(node_id)
        if status == "wiped":
            self.lifecycle.fire(
                node_id,
                Trigger.RETIRE,
                cause="wiped",
                detail={"wipe": level, "disks": disks},
                expect=State.RETIRING,
            )
        else:
            message = str(doc.get("message") or "no message")[:500]
            self.lifecycle.fire(
                node_id,
                Trigger.FAIL,
                cause="wipe",
                reason=f"disk wipe failed: {message}",
                detail={"wipe": level, "disks": disks},
                expect=State.RETIRING,
            )
        log.info("wipe reported node=%s status=%s level=%s disks=%s", node_id, status, level, disks)

    def order(self, node_id: int, action: str) -> None:
        """Queue ``action`` for the node's agent (its next poll gets it)."""
        if action not in ACTIONS:
            raise BadRequest(
                f"unknown agent action {action!r} (known: {', '.join(sorted(ACTIONS))})"
            )
        self.nodes.get(node_id)
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO agents (node_id, last_seen, action) VALUES (?, 0, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET action = excluded.action",
                (node_id, action),
            )
        self.store.add_event(
            node_id=node_id, kind="agent", cause="order", detail={"action": action}
        )

    # --- reading ----------------------------------------------------------------------------------

    def read_log(self, node_id: int, boot: str | None = None) -> dict[str, Any]:
        """One boot's console log (default: the latest boot) and the boots there are."""
        self.nodes.get(node_id)
        boots = [
            r["boot"]
            for r in self.store.query(
                "SELECT boot, MIN(ts) AS first FROM agent_logs WHERE node_id = ? "
                "GROUP BY boot ORDER BY first",
                (node_id,),
            )
        ]
        if boot is None and boots:
            boot = boots[-1]
        if boot is not None and boot not in boots:
            raise NotFound(f"node {node_id} has no agent log for boot {boot!r}")
        rows = self.store.query(
            "SELECT text FROM agent_logs WHERE node_id = ? AND boot = ? ORDER BY offset",
            (node_id, boot),
        )
        agent = self.store.query_one("SELECT * FROM agents WHERE node_id = ?", (node_id,))
        return {
            "node": node_id,
            "boot": boot,
            "boots": boots,
            "text": "".join(r["text"] for r in rows),
            "agent": agent,
        }


# --- HTTP ----------------------------------------------------------------------------------------

SERVICE: web.AppKey[AgentService] = web.AppKey("agent_service", AgentService)


def _token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _authenticate(request: web.Request) -> int:
    service = request.app[SERVICE]
    try:
        return await asyncio.to_thread(service.authenticate, _token(request))
    except Forbidden as e:
        await asyncio.to_thread(
            service.note_rejection, None, request.remote or "-", request.path, e.message
        )
        raise


async def _body(request: web.Request, node_id: int, limit: int) -> bytes:
    """The body, refused with 413 (and an event) beyond ``limit`` before it is all read."""
    service = request.app[SERVICE]
    size = request.content_length
    data = b""
    if size is None or size <= limit:
        chunks, total = [], 0
        async for chunk in request.content.iter_chunked(64 << 10):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                break
        data = b"".join(chunks)
        size = len(data)
    if size > limit:
        message = f"body of {size} bytes is over the limit of {limit}"
        await asyncio.to_thread(
            service.note_rejection, node_id, request.remote or "-", request.path, message
        )
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size, text=message)
    return data


def _parse_inventory(content_type: str, body: bytes) -> Inventory:
    if content_type == "application/json":
        try:
            return Inventory.model_validate_json(body)
        except pydantic.ValidationError as e:
            problems = validation_problems(e)
            raise BadRequest(
                "inventory rejected: "
                + "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5]),
                detail=problems,
            ) from None
    if content_type in ("application/gzip", "application/x-gzip", "application/x-tar"):
        return collect(Bundle.from_tar(body))
    if content_type == BUNDLE_BASE64:
        try:
            raw = base64.b64decode(body, validate=False)
        except binascii.Error as e:
            raise BadRequest(f"bundle is not base64: {e}") from None
        return collect(Bundle.from_tar(raw))
    raise web.HTTPUnsupportedMediaType(
        text="inventory must be application/json (v1 inventory) or application/gzip or "
        f"{BUNDLE_BASE64} (agent bundle)"
    )


async def post_inventory(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    body = await _body(request, node_id, MAX_INVENTORY_BYTES)
    try:
        inventory = await asyncio.to_thread(_parse_inventory, request.content_type, body)
    except BadRequest as e:
        problems = e.detail if isinstance(e.detail, list) else []
        await asyncio.to_thread(service.reject_inventory, node_id, e.message, problems)
        raise
    try:
        result = await asyncio.to_thread(service.accept_inventory, node_id, inventory)
    except Forbidden as e:
        await asyncio.to_thread(
            service.note_rejection, node_id, request.remote or "-", request.path, e.message
        )
        raise
    await asyncio.to_thread(service.seen, node_id, request.remote)
    return web.json_response(result, status=201)


async def post_log(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    raw = request.headers.get("X-Log-Offset", "0")
    boot = request.headers.get("X-Agent-Boot", "-")[:64]
    if not raw.isdigit():
        raise BadRequest(f"X-Log-Offset must be a byte offset, not {raw[:40]!r}")
    body = await _body(request, node_id, MAX_LOG_CHUNK)
    length = await asyncio.to_thread(
        service.append_log, node_id, boot, int(raw), body.decode(errors="replace")
    )
    await asyncio.to_thread(service.seen, node_id, request.remote, boot=boot)
    return web.json_response({"length": length})


async def post_heartbeat(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    doc = _json_object(await _body(request, node_id, 4096), "heartbeat body")
    boot, stage = doc.get("boot"), doc.get("stage")
    if not all(v is None or (isinstance(v, str) and len(v) <= 64) for v in (boot, stage)):
        raise BadRequest("heartbeat boot and stage must be strings of at most 64 characters")
    try:
        await asyncio.to_thread(service.heartbeat, node_id, request.remote, boot, stage)
    except TooMany:
        await asyncio.to_thread(
            service.note_rejection, node_id, "heartbeat-flood", request.path, "too many"
        )
        raise web.HTTPTooManyRequests(
            text=f"at most one heartbeat per {MIN_HEARTBEAT_GAP:g}s",
            headers={"Retry-After": str(int(MIN_HEARTBEAT_GAP))},
        ) from None
    return web.json_response({"ok": True, "interval": service.heartbeat_interval})


async def get_next(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    return web.json_response(await asyncio.to_thread(service.next_action, node_id))


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as e:
        raise BadRequest(f"{what} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return doc


async def post_deploy(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    doc = _json_object(await _body(request, node_id, 4096), "deploy report")
    if service.deploy is None:
        raise NotFound("image deploy is not enabled on this ztpd")
    await asyncio.to_thread(service.deploy.report, node_id, doc)
    await asyncio.to_thread(service.seen, node_id, request.remote)
    return web.json_response({"ok": True})


async def post_wipe(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    node_id = await _authenticate(request)
    doc = _json_object(await _body(request, node_id, 4096), "wipe report")
    await asyncio.to_thread(service.wiped, node_id, doc)
    await asyncio.to_thread(service.seen, node_id, request.remote)
    return web.json_response({"ok": True})


async def get_log(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = request.match_info["node"]
    if not raw.isdigit():
        raise BadRequest(f"node must be a node id, not {raw[:40]!r}")
    boot = request.query.get("boot")
    return web.json_response(await asyncio.to_thread(service.read_log, int(raw), boot))


def add_agent_routes(
    app: web.Application,
    service: AgentService,
    guard: Callable[[Handler], Handler],
) -> None:
    """Mount the agent endpoints; ``guard`` wraps the operator-facing log route with the
    API's authentication (``lambda h: guarded("viewer", h)``)."""
    app[SERVICE] = service
    app.router.add_post(f"{PREFIX}/inventory", post_inventory)
    app.router.add_post(f"{PREFIX}/log", post_log)
    app.router.add_post(f"{PREFIX}/heartbeat", post_heartbeat)
    app.router.add_get(f"{PREFIX}/next", get_next)
    app.router.add_post(f"{PREFIX}/deploy", post_deploy)
    app.router.add_post(f"{PREFIX}/wipe", post_wipe)
    app.router.add_get("/api/v1/nodes/{node}/agent-log", guard(get_log))
