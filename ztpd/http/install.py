"""Per-node install files and the installer's callbacks, under one URL per node and install:

    GET  /install/<node>/<token>/<file>    boot.ipxe, user-data, meta-data, vendor-data,
                                           network-config, preseed.cfg, ks.cfg, post.sh
    POST /install/<node>/<token>/progress  installer progress (subiquity's webhook reporter
                                           posts JSON events; others post message=...)
    POST /install/<node>/<token>/finished  the installer is done; the node reboots into its disk
    POST /install/<node>/<token>/failed    the installer's own message; the node fails with it
    POST /install/<node>/<token>/firstboot the installed system is up (cloud-init phone_home
                                           form, or JSON {"ssh_host_keys": [...]}): deployed

The token (purpose ``install``) sits in the path because cloud-init's NoCloud source appends
file names to a base URL; it is checked against the node in the same path, so another node's
token, an expired one or none is a 403 and an ``install`` event on the node named. Everything
but a valid token for a node in ``deploying`` is refused before any file is rendered: password
hashes and keys leave only with the token. A callback for a node that is not deploying is a 409
and an event. These handlers answer every request themselves and log only the node and the
file, never the path: the token must not reach a log line or an event.

A file that cannot be rendered or fails its check is not served: the node fails with the reason
(``RenderError``) and the installer gets a 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import web

from ztpd.errors import Conflict, Forbidden, RenderError
from ztpd.http.server import error_response
from ztpd.install.render import Renderer, Target
from ztpd.inventory.schema import Inventory
from ztpd.model import Node
from ztpd.profiles.model import Os

log = logging.getLogger("ztpd.http.install")

CALLBACKS = ("progress", "finished", "failed", "firstboot")
MAX_BODY = 64 * 1024
MAX_MESSAGE = 2000
_SSH_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/]+={0,3}$")
CONTENT_TYPES = {"boot.ipxe": "text/plain", "post.sh": "text/x-shellscript"}


class InstallBackend(Protocol):
    """What the install endpoints need; called from worker threads."""

    def verify(self, token: str, node_id: int) -> None:
        """Forbidden unless ``token`` is a live install token of ``node_id``."""
        ...

    def node(self, node_id: int) -> Node | None: ...

    def os_for(self, node: Node) -> Os | None: ...

    def inventory(self, node: Node) -> Inventory | None: ...

    def event(self, node_id: int | None, cause: str, detail: dict[str, Any]) -> None: ...

    def progress(self, node_id: int, progress: dict[str, Any], event: bool) -> None:
        """Keep the latest progress on the node; also an event when ``event``. Each report moves
        the deadline of the node's deploying phase; ``stage`` "finished" (or the agent's
        "written") starts the first-boot phase."""
        ...

    def fail(self, node_id: int, cause: str, reason: str, detail: dict[str, Any]) -> None:
        """deploying → failed (Conflict when the node is not deploying)."""
        ...

    def deployed(self, node_id: int, facts: dict[str, Any]) -> None:
        """deploying → deployed with ``facts`` merged (Conflict when not deploying)."""
        ...


@dataclass(frozen=True)
class Reply:
    status: int
    body: str = ""
    content_type: str = "text/plain"
    code: str = ""  # for errors: the error body's code


def _form_or_json(body: bytes, content_type: str) -> dict[str, Any]:
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return {"message": text}
        return data if isinstance(data, dict) else {"message": text}
    if "x-www-form-urlencoded" in content_type:
        return dict(parse_qsl(text, keep_blank_values=True))
    return {"message": text}


def _clip(value: object, limit: int = 200) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(value)).strip()[:limit]


def _host_keys(data: Mapping[str, Any]) -> list[str]:
    """SSH host public keys from cloud-init's phone_home form or a JSON list, comments cut."""
    raw: list[Any] = [v for k, v in data.items() if k.startswith("pub_key_")]
    listed = data.get("ssh_host_keys")
    if isinstance(listed, list):
        raw.extend(listed)
    keys = []
    for value in raw:
        # phone_home posts "N/A" for a listed key type the image does not make (ztpd's Debian
        # image has no RSA or DSA host key).
        if not isinstance(value, str) or value.strip() in ("", "N/A"):
            continue
        key = " ".join(value.split()[:2])
        if not _SSH_KEY.match(key):
            raise ValueError(f"not an SSH public key: {_clip(value, 40)!r}")
        keys.append(key)
    return sorted(set(keys))


class Install:
    """The decisions behind the routes; blocking (call from a thread)."""

    def __init__(self, base_url: str, renderer: Renderer, backend: InstallBackend) -> None:
        self.base_url = base_url.rstrip("/")
        self.renderer = renderer
        self.backend = backend

    def node_url(self, node_id: int, token: str) -> str:
        return f"{self.base_url}/install/{node_id}/{token}/"

    def _admit(self, node_ref: str, token: str, what: str, remote: str | None) -> Node | Reply:
        """The node, if the token is its live install token and it is deploying."""
        node_id = int(node_ref) if node_ref.isdigit() and len(node_ref) < 12 else None
        node = self.backend.node(node_id) if node_id is not None else None
        try:
            if node is None:
                raise Forbidden("no such node")
            self.backend.verify(token, node.id)
        except Forbidden as e:
            detail = {"asked": what, "status": 403, "reason": e.message, "remote": remote}
            self.backend.event(node.id if node else None, "forbidden", detail)
            log.warning(
                "install refused node=%s asked=%s status=403 reason=%s remote=%s",
                node.id if node else "-",
                what,
                e.message,
                remote,
            )
            return Reply(403, e.message, code=Forbidden.code)
        if node.state != "deploying":
            reason = f"node {node.id} is {node.state}, not deploying"
            self.backend.event(
                node.id, "conflict", {"asked": what, "status": 409, "reason": reason}
            )
            log.warning(
                "install refused node=%s asked=%s status=409 state=%s", node.id, what, node.state
            )
            return Reply(409, reason, code=Conflict.code)
        return node

    def _fail(self, node: Node, cause: str, reason: str, detail: dict[str, Any]) -> None:
        try:
            self.backend.fail(node.id, cause, reason, detail)
        except Conflict as e:  # it moved on meanwhile (timeout, operator)
            log.info("install fail skipped node=%s reason=%s", node.id, e.message)

    def serve(self, node_ref: str, token: str, name: str, remote: str | None) -> Reply:
        admitted = self._admit(node_ref, token, name, remote)
        if isinstance(admitted, Reply):
            return admitted
        node = admitted
        os_ = self.backend.os_for(node)
        if os_ is None:
            reason = f"profile {node.profile or '(none)'} has no os section"
            self._fail(node, "install", reason, {"file": name})
            return Reply(409, reason, code=Conflict.code)
        if name not in self.renderer.files(os_.method):
            return Reply(404, f"method {os_.method} has no file {name}", code="not-found")
        target = Target(
            os_, node, self.backend.inventory(node), self.base_url, self.node_url(node.id, token)
        )
        try:
            text = self.renderer.render(target, name)
        except RenderError as e:
            log.error(
                "install render failed node=%s profile=%s file=%s error=%r",
                node.id,
                node.profile,
                name,
                e.message,
            )
            self._fail(node, "render", f"cannot render {name}: {e.message}", {"file": name})
            return Reply(500, f"cannot render {name}", code=RenderError.code)
        self.backend.event(node.id, "served", {"file": name, "method": os_.method})
        log.info("install served node=%s method=%s file=%s", node.id, os_.method, name)
        return Reply(200, text, CONTENT_TYPES.get(name, "text/plain"))

    def callback(
        self,
        node_ref: str,
        token: str,
        kind: str,
        *,
        body: bytes,
        content_type: str,
        remote: str | None,
    ) -> Reply:
        admitted = self._admit(node_ref, token, kind, remote)
        if isinstance(admitted, Reply):
            return admitted
        node = admitted
        data = _form_or_json(body, content_type)
        now = time.time()
        if kind == "progress":
            event_type = data.get("event_type")
            name = _clip(data.get("name", ""), 100)
            progress = {
                "message": _clip(data.get("description") or data.get("message") or name),
                "stage": name or None,
                "result": data.get("result") if isinstance(data.get("result"), str) else None,
                "at": now,
            }
            # subiquity reports hundreds of events: only a top-level stage ending is an event.
            worth = event_type is None or (event_type == "finish" and name.count("/") <= 1)
            self.backend.progress(node.id, progress, worth)
        elif kind == "finished":
            # stage "finished" starts the first-boot phase and its deadline (install.phases).
            done = {"stage": "finished", "message": "installer finished", "percent": 100}
            self.backend.progress(node.id, {**done, "at": now}, True)
        elif kind == "failed":
            message = body.decode("utf-8", "replace")
            if "json" in content_type or "form" in content_type:
                message = str(data.get("message", message))
            lines = [ln for ln in message.splitlines() if ln.strip()]
            last = _clip(lines[-1] if lines else "no message", 300)
            self._fail(
                node,
                "installer",
                f"installer failed: {last}",
                {"message": message[-MAX_MESSAGE:]},
            )
        else:
            try:
                keys = _host_keys(data)
            except ValueError as e:
                return Reply(400, str(e), code="bad-request")
            if not keys:
                return Reply(400, "no SSH host key in the first-boot callback", code="bad-request")
            facts: dict[str, Any] = {"ssh_host_keys": keys, "first_boot_at": now}
            if data.get("hostname"):
                facts["installed_hostname"] = _clip(data["hostname"], 253)
            try:
                self.backend.deployed(node.id, facts)
            except Conflict as e:
                return Reply(409, e.message, code=Conflict.code)
        log.info("install callback node=%s kind=%s", node.id, kind)
        return Reply(200, "ok\n")


def _respond(reply: Reply) -> web.Response:
    if reply.status >= 400:
        return error_response(reply.status, reply.code or "error", reply.body)
    return web.Response(status=reply.status, text=reply.body, content_type=reply.content_type)


def add_install_routes(app: web.Application, install: Install) -> None:
    async def handle(request: web.Request) -> web.Response:
        # Answer everything here: the shared error middleware logs paths, and this path holds
        # the token.
        info = request.match_info
        node_ref, token, name = info["node"], info["token"], info["name"]
        try:
            if request.method in ("GET", "HEAD") and name not in CALLBACKS:
                reply = await asyncio.to_thread(
                    install.serve, node_ref, token, name, request.remote
                )
            elif request.method == "POST" and name in CALLBACKS:
                body = await request.content.read(MAX_BODY + 1)
                if len(body) > MAX_BODY:
                    reply = Reply(413, f"body over {MAX_BODY} bytes", code="too-large")
                else:
                    reply = await asyncio.to_thread(
                        functools.partial(
                            install.callback,
                            node_ref,
                            token,
                            name,
                            body=body,
                            content_type=request.content_type,
                            remote=request.remote,
                        )
                    )
            else:
                reply = Reply(405, f"{request.method} is not allowed here", code="method")
        except Exception:
            log.exception("install internal error node=%s asked=%s", node_ref[:12], name[:40])
            reply = Reply(500, "internal error", code="internal")
        return _respond(reply)

    async def elsewhere(request: web.Request) -> web.Response:
        return _respond(Reply(404, "no such install URL", code="not-found"))

    app.router.add_route("*", "/install/{node}/{token}/{name}", handle)
    # Any other path under /install/ may hold a token too: answered here, never logged.
    app.router.add_route("*", "/install/{rest:.*}", elsewhere)
