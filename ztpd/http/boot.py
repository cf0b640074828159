"""HTTP boot: the two-stage iPXE chain, one script per lifecycle state, and the files they fetch.

    GET /boot.ipxe          first stage: chains /ipxe with the machine's own facts
    GET /ipxe?mac=&uuid=..  second stage: finds (or creates) the node, renders its state's script
    GET|HEAD /files/<path>  kernels, initrds, images from images_dir (Range, ETag, sendfile)

Which script a state gets is the table ``SCRIPT_FOR_STATE``. Templates come from
``boot-templates/`` through ``BootTemplates`` (StrictUndefined, compiled once, swapped whole on
reload). A script is rendered completely before anything is sent: a render failure is an HTTP
500 with a short iPXE ``echo`` and an event naming node, template and error. Every request is
recorded on the node that made it. What this module needs from the rest of ztpd is the small
``BootBackend`` protocol; ``boot_store.StoreBootBackend`` is the real one.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ztpd.config import BootConfig
from ztpd.errors import BadRequest, Problem, RenderError, SourceError
from ztpd.identity import Identity
from ztpd.images import paths
from ztpd.model import Node

log = logging.getLogger("ztpd.http.boot")

TEXT = "text/plain"
RETRY_SECONDS = 10
MAX_VALUE = 128  # any SMBIOS string or MAC fits; longer is not a firmware talking

# Lifecycle state → the kind of script a PXE boot gets. A deployed node (and anything after it)
# always boots its disk: only an explicit `reprovision` (back to matched) installs again.
SCRIPT_FOR_STATE: dict[str, str] = {
    "discovered": "discovery",
    "inspecting": "discovery",
    "inspected": "discovery",
    "unmatched": "discovery",
    "awaiting-approval": "discovery",
    "matched": "install",
    # The installer reboots before the installed OS calls back: its disk is what boots next.
    "deploying": "local",
    "deployed": "local",
    "configuring": "local",
    "ready": "local",
    "failed": "failed",
    # The agent wipes the disks (retire --wipe), then the node is retired.
    "retiring": "discovery",
    "retired": "retired",
}
# States whose discovery boot starts (another) inspection; `inspecting` already is one.
STARTS_INSPECTION = frozenset({"discovered", "inspected", "unmatched", "awaiting-approval"})

PLATFORMS = frozenset({"pcbios", "efi"})
_WORD = re.compile(r"^[A-Za-z0-9_.-]*$")
FACT_KEYS = ("manufacturer", "product", "asset", "bootif")


class BootBackend(Protocol):
    """What boot delivery needs to know and change; called from worker threads."""

    def identify(self, ident: Identity, facts: dict[str, Any]) -> Node:
        """The node this sighting is (created in ``discovered`` when new), facts recorded."""
        ...

    def node(self, node_id: int) -> Node | None: ...

    def node_by_ip(self, ip: str) -> Node | None: ...

    def token(self, node: Node, purpose: str, ttl: float) -> str:
        """A fresh token for ``purpose``; earlier ones for the same purpose stop working."""
        ...

    def install_method(self, node: Node) -> str | None:
        """``os.method`` of the node's profile, None when it has no profile or no os."""
        ...

    def start_inspection(self, node: Node) -> None:
        """The discovery script was served (a no-op if the node moved on meanwhile)."""
        ...

    def start_install(self, node: Node) -> None:
        """The install script was served."""
        ...

    def record(self, node_id: int, detail: dict[str, Any]) -> None:
        """One ``boot`` event on the node: what was asked and what was served."""
        ...


# --- templates -----------------------------------------------------------------------------


def _finalize(value: object) -> object:
    """Every ``{{ }}`` value stays on its line and is not expanded by iPXE a second time."""
    if isinstance(value, str):
        return re.sub(r"[\x00-\x1f\x7f]", " ", value).replace("${", "$ {")
    return value


class BootTemplates:
    """Every iPXE script template (``*.ipxe.j2``, in any subdirectory) compiled at load; other
    templates there (install configs) belong to their own renderers. ``load()`` again replaces
    them all or, on any error, none (the previous set keeps serving)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._compiled: dict[str, jinja2.Template] = {}
        self.load()

    def load(self) -> None:
        if not self.directory.is_dir():
            raise SourceError([Problem(str(self.directory), 0, 0, "templates_dir is missing")])
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - iPXE scripts, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            finalize=_finalize,
            auto_reload=False,
            cache_size=-1,
        )
        compiled: dict[str, jinja2.Template] = {}
        problems: list[Problem] = []
        for path in sorted(self.directory.rglob("*.ipxe.j2")):
            name = path.relative_to(self.directory).as_posix()
            try:
                compiled[name] = env.get_template(name)
            except jinja2.TemplateSyntaxError as e:
                problems.append(Problem(str(path), e.lineno or 0, 0, e.message or str(e)))
        if problems:
            raise SourceError(problems)
        with self._lock:
            self._compiled = compiled
        log.info("boot templates loaded dir=%s count=%d", self.directory, len(compiled))

    def has(self, name: str) -> bool:
        return name in self._compiled

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """The whole script, or RenderError; never a partial text."""
        template = self._compiled.get(name)
        if template is None:
            raise RenderError(f"no template {name}", detail={"template": name})
        try:
            text = template.render(context)
        except Exception as e:  # any failure inside a template is that template's error
            raise RenderError(
                f"{name}: {type(e).__name__}: {e}", detail={"template": name, "error": str(e)}
            ) from None
        if not text.startswith("#!ipxe"):
            raise RenderError(
                f"{name}: output does not start with #!ipxe", detail={"template": name}
            )
        return text


# --- the decisions (pure of HTTP) ----------------------------------------------------------


@dataclass(frozen=True)
class BootQuery:
    """The second stage's query string, checked."""

    ident: Identity
    platform: str
    buildarch: str
    facts: dict[str, str]

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> BootQuery:
        def value(key: str) -> str:
            v = query.get(key, "").strip()
            if len(v) > MAX_VALUE or any(ord(c) < 0x20 or ord(c) == 0x7F for c in v):
                raise BadRequest(f"query parameter {key!r} is too long or not printable")
            return v

        platform = value("platform") or "pcbios"
        if platform not in PLATFORMS:
            raise BadRequest(f"unknown platform {platform!r} (expected pcbios or efi)")
        buildarch = value("buildarch")
        if not _WORD.match(buildarch):
            raise BadRequest("buildarch is not a word")
        ident = Identity.of(
            [m for m in (value("mac"), value("bootif")) if m],
            value("uuid") or None,
            value("serial") or None,
        )
        if ident.is_empty():
            raise BadRequest("no usable mac, uuid or serial in the query")
        facts = {k: value(k) for k in FACT_KEYS if value(k)}
        facts.update(platform=platform, buildarch=buildarch)
        return cls(ident, platform, buildarch, facts)


@dataclass(frozen=True)
class Script:
    status: int
    text: str


def echo_script(message: str) -> str:
    return f"#!ipxe\necho ztpd: {_finalize(message)}\n"


class Boot:
    """Turns boot requests into scripts and records them; blocking (call it from a thread)."""

    def __init__(
        self, config: BootConfig, base_url: str, templates: BootTemplates, backend: BootBackend
    ) -> None:
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.templates = templates
        self.backend = backend

    def _common(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "retry_seconds": RETRY_SECONDS,
            "wait_seconds": self.config.wait_seconds,
        }

    def first_stage(self) -> Script:
        try:
            return Script(200, self.templates.render("boot.ipxe.j2", self._common()))
        except RenderError as e:
            log.error("boot render failed template=boot.ipxe.j2 error=%r", e.message)
            return Script(500, echo_script("cannot render the first stage script"))

    def file_url(self, name: str, node: Node) -> str:
        return f"{self.base_url}/files/{name}?node={node.id}"

    def second_stage(self, query: Mapping[str, str]) -> Script:
        try:
            q = BootQuery.parse(query)
        except BadRequest as e:
            log.info("boot rejected query=%r reason=%s", dict(query), e.message)
            return Script(400, echo_script(f"bad boot request: {e.message}"))
        node = self.backend.identify(q.ident, q.facts)
        kind = SCRIPT_FOR_STATE.get(node.state, "failed")
        context = {
            **self._common(),
            "node": node.to_dict(),
            "platform": q.platform,
            "buildarch": q.buildarch,
        }
        template, after, extra = self._choose(kind, node, context)
        asked = {
            "asked": "/ipxe",
            "state": node.state,
            "platform": q.platform,
            "buildarch": q.buildarch,
        }
        try:
            text = self.templates.render(template, context)
        except RenderError as e:
            log.error(
                "boot render failed node=%s template=%s error=%r", node.id, template, e.message
            )
            self.backend.record(
                node.id, {**asked, "status": 500, "template": template, "error": e.message}
            )
            return Script(500, echo_script(f"cannot render {template} for node {node.id}"))
        if after is not None:
            after(node)
        self.backend.record(node.id, {**asked, "status": 200, "served": template, **extra})
        log.info(
            "boot script node=%s state=%s template=%s platform=%s",
            node.id,
            node.state,
            template,
            q.platform,
        )
        return Script(200, text)

    def _choose(
        self, kind: str, node: Node, context: dict[str, Any]
    ) -> tuple[str, Any, dict[str, Any]]:
        """(template, what to do once it rendered, extra event detail); fills ``context``."""
        ttl = self.config.token_ttl
        # The discovery kernel and initrd: discovery boots them, and so does the image writer.
        agent = {
            "kernel_url": self.file_url(self.config.discovery_kernel, node),
            "initrd_url": self.file_url(self.config.discovery_initrd, node),
            "args": self.config.discovery_args,
        }
        if kind == "discovery":
            context.update(agent, token=self.backend.token(node, "agent", ttl))
            start = self.backend.start_inspection if node.state in STARTS_INSPECTION else None
            return "discovery.ipxe.j2", start, {}
        if kind == "install":
            method = self.backend.install_method(node)
            context["method"] = method
            name = f"install/{method}.ipxe.j2"
            if method is not None and self.templates.has(name):
                context["token"] = self.backend.token(node, "install", ttl)
                if method == "image":
                    context.update(agent, agent_token=self.backend.token(node, "agent", ttl))
                return name, self.backend.start_install, {"method": method}
            why = f"install method {method or '(none)'} is not available yet"
            log.warning(
                "boot install unavailable node=%s profile=%s method=%s",
                node.id,
                node.profile,
                method,
            )
            return "install-unavailable.ipxe.j2", None, {"method": method, "reason": why}
        if kind in ("failed", "retired"):
            context["action"] = (
                self.config.on_failed if kind == "failed" else (self.config.on_retired)
            )
            return f"{kind}.ipxe.j2", None, {"action": context["action"]}
        return "local.ipxe.j2", None, {}

    def file_owner(self, node_param: str | None, client_ip: str | None) -> Node | None:
        """The node a file request belongs to: ``?node=`` from our own scripts, else its IP."""
        if node_param and node_param.isdigit() and len(node_param) < 12:
            node = self.backend.node(int(node_param))
            if node is not None:
                return node
        return self.backend.node_by_ip(client_ip) if client_ip else None


# --- routes --------------------------------------------------------------------------------


def _script_response(script: Script) -> web.Response:
    return web.Response(status=script.status, text=script.text, content_type=TEXT)


class _ReportedFileResponse(web.FileResponse):
    """aiohttp's FileResponse (HEAD, Range, ETag, sendfile), reporting what went out once sent.

    aiohttp prepares the response itself after the handler returns (preparing it in the
    handler would make FileResponse run twice), so the report hooks into ``prepare``.
    """

    def __init__(
        self, path: Path, name: str, report: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        super().__init__(path)
        self._name = name
        self._report = report

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        outcome: dict[str, Any] = {"status": "aborted"}
        try:
            writer = await super().prepare(request)
            outcome = {"status": self.status, "served": self._name, "bytes": self.content_length}
            return writer
        finally:
            await self._report(outcome)


def add_boot_routes(app: web.Application, boot: Boot, images_dir: Path) -> None:
    async def first_stage(request: web.Request) -> web.Response:
        return _script_response(boot.first_stage())

    async def second_stage(request: web.Request) -> web.Response:
        return _script_response(await asyncio.to_thread(boot.second_stage, request.query))

    async def files(request: web.Request) -> web.StreamResponse:
        raw = request.match_info["name"]
        node = await asyncio.to_thread(boot.file_owner, request.query.get("node"), request.remote)
        asked = {"asked": f"{request.method} /files/{raw[: paths.MAX_NAME]}"}
        if "Range" in request.headers:
            asked["range"] = request.headers["Range"][:64]
        try:
            name = paths.clean(raw)
            path = paths.locate(images_dir, name)
            if path is None:
                raise paths.Refused(paths.MISSING, "no such file")
        except paths.Refused as r:
            status = 403 if r.kind == paths.FORBIDDEN else 404
            log.warning(
                "boot file refused path=%r status=%s reason=%s node=%s",
                raw[:80],
                status,
                r.reason,
                node.id if node else "-",
            )
            if node is not None:
                await asyncio.to_thread(
                    boot.backend.record, node.id, {**asked, "status": status, "error": r.reason}
                )
            return web.Response(status=status, text=f"{r.reason}\n", content_type=TEXT)

        async def report(outcome: dict[str, Any]) -> None:
            if node is not None:
                await asyncio.to_thread(boot.backend.record, node.id, {**asked, **outcome})

        return _ReportedFileResponse(path, name, report)

    app.router.add_get("/boot.ipxe", first_stage)
    app.router.add_get("/ipxe", second_stage)
    app.router.add_get("/files/{name:.+}", files)
    # UEFI HTTP boot firmware is told <base>/ipxe/<loader> by DHCP (dhcp.boot.http_boot_base).
    app.router.add_get("/ipxe/{name:.+}", files)
