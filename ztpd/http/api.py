"""The REST API under /api/v1, and /metrics.

Reads need the viewer role, actions the admin role (see ``auth``); /api/v1/openapi.json
describes every route here and is served without a token. Handlers validate their query
parameters (an unknown one is a 400, as is a page size above ``MAX_LIMIT``), run store work in
a thread, and let errors from ztpd's tree reach the server's one error middleware.

Profiles are read through a ``ProfileView`` (``profiles_view.CatalogView`` over the serving
catalog); without one /profiles says so and /nodes/{node}/match answers 501.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pydantic
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ztpd.config import AuthConfig
from ztpd.errors import BadRequest, NotFound, Unauthorized, Unsupported
from ztpd.http import queries, sse
from ztpd.http.auth import Auth, Principal, Role
from ztpd.http.openapi import document
from ztpd.http.server import error_response
from ztpd.identity import normalize_mac
from ztpd.lifecycle import IN_PROGRESS, Lifecycle, State, Transition, Trigger
from ztpd.metrics import CONTENT_TYPE, Metrics
from ztpd.store import Nodes, Store

log = logging.getLogger("ztpd.http.api")

PREFIX = "/api/v1"
TRIGGERS = {a: Trigger(a) for a in queries.ACTIONS}
ACTIVITY_WINDOW = 900.0  # the dashboard's "recent boot traffic", seconds


class ProfileView(Protocol):
    """What the page and API need from the loaded profile set."""

    def describe(self) -> dict[str, Any]:
        """{"profiles": [{name, description, priority, approve, source, conditions}],
        "errors": [{file, line, column, message}]} for the set in force now."""
        ...

    def explain(self, node_id: int) -> dict[str, Any]:
        """Why the node's latest inventory matches (or not) each profile."""
        ...


@dataclass(frozen=True)
class Deps:
    """What the API and the page are built from (handed in by the composition root)."""

    store: Store
    lifecycle: Lifecycle
    auth: Auth
    metrics: Metrics
    hub: sse.EventHub
    profiles: ProfileView | None = None
    images_dir: Path | None = None


DEPS = web.AppKey("ztpd_api_deps", Deps)


def make_deps(
    store: Store,
    lifecycle: Lifecycle,
    auth: AuthConfig,
    metrics: Metrics,
    *,
    profiles: ProfileView | None = None,
    images_dir: Path | None = None,
) -> Deps:
    return Deps(store, lifecycle, Auth(auth), metrics, sse.EventHub(store), profiles, images_dir)


# --- request helpers -----------------------------------------------------------------------


def _params(request: web.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown query parameter {unknown[0]!r}",
            detail={"unknown": unknown, "allowed": sorted(allowed)},
        )


def _int(
    request: web.Request, name: str, default: int | None, lo: int = 0, hi: int | None = None
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw[:40]!r}") from None
    if value < lo or (hi is not None and value > hi):
        limits = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise BadRequest(f"{name} must be {limits}", detail={"parameter": name, "value": value})
    return value


def _page(request: web.Request, default: int = 100) -> tuple[int, int]:
    limit = _int(request, "limit", default, 1, queries.MAX_LIMIT)
    offset = _int(request, "offset", 0, 0)
    assert limit is not None and offset is not None
    return limit, offset


def _choice(request: web.Request, name: str, choices: Mapping[str, object], default: str) -> str:
    value = request.query.get(name, default)
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}")
    return value


def _states(values: list[str]) -> tuple[str, ...]:
    known = {s.value for s in State}
    bad = [v for v in values if v not in known]
    if bad:
        raise BadRequest(f"unknown state {bad[0]!r}", detail={"known": sorted(known)})
    return tuple(values)


def _deps(request: web.Request) -> Deps:
    return request.app[DEPS]


async def _node_id(request: web.Request) -> int:
    store = _deps(request).store
    node = await asyncio.to_thread(Nodes(store).find, request.match_info["node"])
    return node.id


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guarded = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def guarded(role: Role, handler: Guarded) -> Handler:
    """``handler`` behind the auth check, called with who asked; a 401 carries
    WWW-Authenticate as RFC 6750 asks."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            who = _deps(request).auth.require(request, role)
        except Unauthorized as e:
            log.info("http unauthorized path=%s message=%s", request.path, e.message)
            resp = error_response(e.http_status, e.code, e.message)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="ztpd"'
            return resp
        return await handler(request, who)

    return run


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


# --- reads -----------------------------------------------------------------------------------


def summary(deps: Deps) -> dict[str, Any]:
    store, m = deps.store, deps.metrics
    counts = queries.state_counts(store)
    f_busy = queries.NodeFilter(states=tuple(IN_PROGRESS), sort="state_since", limit=20)
    f_failed = queries.NodeFilter(states=("failed",), sort="state_since", descending=True, limit=20)
    busy, _ = queries.list_nodes(store, f_busy)
    failed, _ = queries.list_nodes(store, f_failed)
    profile_errors = len(deps.profiles.describe()["errors"]) if deps.profiles else None
    return {
        "states": {s.value: counts.get(s.value, 0) for s in State},
        "total": sum(counts.values()),
        "in_progress": busy,
        "failed": failed,
        "activity": queries.activity(store, store.clock() - ACTIVITY_WINDOW),
        "traffic": {
            "dhcp_packets": m.dhcp_packets.total(),
            "tftp_requests": m.tftp_requests.total(),
            "http_requests": m.http_requests.total(),
            "boots": m.boots.total(),
        },
        "profile_errors": profile_errors,
        "last_event_id": queries.last_event_id(store),
    }


async def get_summary(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    return _json(await asyncio.to_thread(summary, _deps(request)))


async def whoami(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    return _json({"name": who.name, "role": who.role, "via": who.via})


async def list_nodes(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"state", "profile", "q", "sort", "order", "limit", "offset"})
    limit, offset = _page(request)
    f = queries.NodeFilter(
        states=_states(request.query.getall("state", [])),
        profile=request.query.get("profile") or None,
        text=request.query.get("q") or None,
        sort=_choice(request, "sort", queries.NODE_SORTS, "id"),
        descending=_choice(request, "order", {"asc": 1, "desc": 1}, "asc") == "desc",
        limit=limit,
        offset=offset,
    )
    items, total = await asyncio.to_thread(queries.list_nodes, _deps(request).store, f)
    return _json({"items": items, "total": total, "limit": limit, "offset": offset})


async def get_node(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    node_id = await _node_id(request)
    return _json(await asyncio.to_thread(queries.node_detail, _deps(request).store, node_id))


async def get_inventory(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    node_id = await _node_id(request)
    return _json(await asyncio.to_thread(queries.inventory, _deps(request).store, node_id))


async def get_inventory_version(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    node_id = await _node_id(request)
    raw = request.match_info["version"]
    if not raw.isdigit():
        raise BadRequest(f"inventory version must be a number, not {raw[:40]!r}")
    store = _deps(request).store
    return _json(await asyncio.to_thread(queries.inventory, store, node_id, int(raw)))


async def list_inventories(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"limit", "offset"})
    node_id = await _node_id(request)
    limit, offset = _page(request)
    store = _deps(request).store
    return _json(await asyncio.to_thread(queries.inventory_history, store, node_id, limit, offset))


async def inventory_diff(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"from", "to"})
    node_id = await _node_id(request)
    old, new = _int(request, "from", None, 1), _int(request, "to", None, 1)
    store = _deps(request).store
    return _json(await asyncio.to_thread(queries.inventory_diff, store, node_id, old, new))


async def node_match(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    node_id = await _node_id(request)
    catalog = _deps(request).profiles
    if catalog is None:
        raise Unsupported("profile matching is not running in this ztpd")
    return _json(await asyncio.to_thread(catalog.explain, node_id))


async def _event_node(request: web.Request) -> int | None:
    ref = request.query.get("node")
    if not ref:
        return None
    store = _deps(request).store
    return (await asyncio.to_thread(Nodes(store).find, ref)).id


async def list_events(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"node", "kind", "after", "before", "limit", "order"})
    limit, _ = _page(request)
    newest_first = _choice(request, "order", {"asc": 1, "desc": 1}, "desc") == "desc"
    node_id = await _event_node(request)
    evs = await asyncio.to_thread(
        queries.events,
        _deps(request).store,
        node_id=node_id,
        kinds=request.query.getall("kind", []),
        after=_int(request, "after", None),
        before=_int(request, "before", None),
        limit=limit,
        newest_first=newest_first,
    )
    more = len(evs) == limit
    return _json(
        {
            "items": [queries.event_dict(e) for e in evs],
            "limit": limit,
            "next_before": evs[-1].id if more and newest_first else None,
            "next_after": evs[-1].id if more and not newest_first else None,
        }
    )


async def event_stream(request: web.Request, who: Principal) -> web.StreamResponse:
    _params(request, {"node", "kind", "after"})
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        if not header.isdigit():
            raise BadRequest("Last-Event-ID must be an event id")
        after: int | None = int(header)
    else:
        after = _int(request, "after", None)
    node_id = await _event_node(request)
    kinds = frozenset(request.query.getall("kind", []))
    return await sse.stream(request, _deps(request).hub, after=after, node_id=node_id, kinds=kinds)


async def list_profiles(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    deps = _deps(request)
    counts = await asyncio.to_thread(queries.profile_counts, deps.store)
    if deps.profiles is None:
        return _json(
            {
                "available": False,
                "message": "profile matching is not running in this ztpd",
                "profiles": [],
                "errors": [],
                "nodes_by_profile": counts,
            }
        )
    described = await asyncio.to_thread(deps.profiles.describe)
    profiles = [{**p, "nodes": counts.get(p["name"], 0)} for p in described["profiles"]]
    return _json(
        {
            "available": True,
            "message": None,
            "profiles": profiles,
            "errors": described["errors"],
            "nodes_by_profile": counts,
        }
    )


async def list_leases(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"state", "mac", "limit", "offset"})
    limit, offset = _page(request)
    mac = request.query.get("mac")
    if mac:
        try:
            mac = normalize_mac(mac)
        except ValueError as e:
            raise BadRequest(f"mac: {e}") from None
    return _json(
        await asyncio.to_thread(
            queries.leases,
            _deps(request).store,
            state=request.query.get("state") or None,
            mac=mac,
            limit=limit,
            offset=offset,
        )
    )


async def boot_activity(request: web.Request, who: Principal) -> web.Response:
    _params(request, {"node", "before", "limit"})
    limit, _ = _page(request)
    node_id = await _event_node(request)
    evs = await asyncio.to_thread(
        queries.events,
        _deps(request).store,
        node_id=node_id,
        kinds=queries.BOOT_KINDS,
        before=_int(request, "before", None),
        limit=limit,
    )
    return _json(
        {
            "items": [queries.event_dict(e) for e in evs],
            "limit": limit,
            "next_before": evs[-1].id if len(evs) == limit else None,
        }
    )


def images(images_dir: Path | None) -> dict[str, Any]:
    """The boot files on disk, with the manifest's sha256 where it lists them."""
    if images_dir is None or not images_dir.is_dir():
        return {"directory": str(images_dir) if images_dir else None, "manifest": None, "items": []}
    manifest: dict[str, Any] | None = None
    recorded: dict[str, Any] = {}
    try:
        manifest = json.loads((images_dir / "manifest.json").read_text())
        recorded = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    except (OSError, ValueError):
        manifest = None
    items = []
    for path in sorted(images_dir.rglob("*")):
        rel = path.relative_to(images_dir).as_posix()
        if not path.is_file() or rel.startswith(("cache/", ".")) or rel == "manifest.json":
            continue
        st = path.stat()
        sha = recorded.get(rel)
        items.append(
            {
                "name": rel,
                "size": st.st_size,
                "mtime": st.st_mtime,
                "sha256": sha if isinstance(sha, str) else None,
            }
        )
    meta = None
    if isinstance(manifest, dict):
        meta = {k: v for k, v in manifest.items() if k != "files"}
    return {"directory": str(images_dir), "manifest": meta, "items": items}


async def list_images(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    return _json(await asyncio.to_thread(images, _deps(request).images_dir))


async def openapi(request: web.Request) -> web.Response:
    return _json(document())


# --- actions ---------------------------------------------------------------------------------


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str | None = Field(default=None, max_length=500)
    # retire only: metadata or full goes through retiring (the agent wipes); none: retired;
    # unset: the node's profile's os.wipe.on_retire (lifecycle.retire_policy)
    wipe: Literal["none", "metadata", "full"] | None = None


async def _body(request: web.Request) -> ActionBody:
    raw = await request.read()
    if not raw.strip():
        return ActionBody()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    try:
        return ActionBody.model_validate(data)
    except pydantic.ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in e.errors()
        ]
        raise BadRequest("invalid request body", detail={"problems": problems}) from None


def act(
    deps: Deps, node_id: int, action: str, body: ActionBody, principal: Principal
) -> Transition:
    """Fire a lifecycle action for a person (API or page); IllegalTransition is a 409."""
    if body.wipe is not None and action != "retire":
        raise BadRequest("wipe applies to retire only")
    detail: dict[str, Any] = {"by": principal.name}
    log.info("node action node=%s action=%s by=%s", node_id, action, principal.name)
    if action == "retire":  # the wipe asked for, else the profile's; a wipe goes via retiring
        return deps.lifecycle.retire(
            node_id, body.wipe, cause=action, detail=detail, reason=body.reason
        )
    return deps.lifecycle.fire(
        node_id, TRIGGERS[action], cause=action, detail=detail, reason=body.reason
    )


async def node_action(request: web.Request, who: Principal) -> web.Response:
    _params(request, set())
    action = request.match_info["action"]
    if action not in TRIGGERS:
        raise NotFound(f"no action {action!r} (actions: {', '.join(TRIGGERS)})")
    body = await _body(request)
    deps = _deps(request)
    node_id = await _node_id(request)
    t = await asyncio.to_thread(act, deps, node_id, action, body, who)
    node = await asyncio.to_thread(queries.node_summary, deps.store, node_id)
    return _json(
        {"node": node, "from_state": t.from_state, "to_state": t.to_state, "event_id": t.event_id}
    )


# --- metrics ---------------------------------------------------------------------------------


def bind_metrics(metrics: Metrics, store: Store, lifecycle: Lifecycle) -> None:
    """Metrics that come from the store: refreshed per scrape, and observed per transition."""

    def collect() -> None:
        counts = queries.state_counts(store)
        metrics.nodes.replace(({"state": s.value}, counts.get(s.value, 0)) for s in State)
        metrics.dhcp_leases.replace(
            ({"subnet": k}, v) for k, v in queries.leases_in_use(store).items()
        )

    def on_transition(t: Transition) -> None:
        prev = store.query_one(
            "SELECT ts FROM events WHERE node_id = ? AND id < ? AND to_state IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (t.node.id, t.event_id),
        )
        if prev is not None:
            spent = max(0.0, t.node.state_since - float(prev["ts"]))
            metrics.phase_seconds.observe(spent, state=t.from_state)
        if t.to_state == State.FAILED:
            row = store.query_one("SELECT cause FROM events WHERE id = ?", (t.event_id,))
            metrics.failures.inc(state=t.from_state, cause=row["cause"] if row else "unknown")

    metrics.registry.on_collect(collect)
    lifecycle.subscribe(on_transition)


async def get_metrics(request: web.Request) -> web.StreamResponse:
    text = await asyncio.to_thread(_deps(request).metrics.render)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def private_metrics(request: web.Request, who: Principal) -> web.StreamResponse:
    return await get_metrics(request)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests and bytes per route template (bounded label values, never raw paths)."""
    metrics = request.app[DEPS].metrics
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    resp: web.StreamResponse | None = None
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        metrics.http_requests.inc(method=request.method, route=route, code=str(status))
        if resp is not None:
            # A stream (SSE) is done and counted; a plain response is written after us.
            size = resp.body_length if resp.prepared else (resp.content_length or 0)
            metrics.http_bytes.inc(size, route=route)


# --- wiring ----------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, Guarded, Role]] = [
    ("GET", f"{PREFIX}/whoami", whoami, "viewer"),
    ("GET", f"{PREFIX}/summary", get_summary, "viewer"),
    ("GET", f"{PREFIX}/nodes", list_nodes, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}", get_node, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}/inventory", get_inventory, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}/inventories", list_inventories, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}/inventories/diff", inventory_diff, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}/inventories/{{version}}", get_inventory_version, "viewer"),
    ("GET", f"{PREFIX}/nodes/{{node}}/match", node_match, "viewer"),
    ("POST", f"{PREFIX}/nodes/{{node}}/actions/{{action}}", node_action, "admin"),
    ("GET", f"{PREFIX}/events", list_events, "viewer"),
    ("GET", f"{PREFIX}/events/stream", event_stream, "viewer"),
    ("GET", f"{PREFIX}/profiles", list_profiles, "viewer"),
    ("GET", f"{PREFIX}/leases", list_leases, "viewer"),
    ("GET", f"{PREFIX}/boot-activity", boot_activity, "viewer"),
    ("GET", f"{PREFIX}/images", list_images, "viewer"),
]


def add_api_routes(app: web.Application, deps: Deps) -> None:
    """Mount the API, /metrics and the live event hub on ``app`` (before it starts)."""
    app[DEPS] = deps
    app.middlewares.insert(0, count_requests)  # outermost: sees the final status
    app.cleanup_ctx.append(deps.hub.run)
    app.on_shutdown.append(deps.hub.close_streams)
    deps.lifecycle.subscribe(lambda t: deps.hub.poke())
    bind_metrics(deps.metrics, deps.store, deps.lifecycle)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    for method, path, handler, role in ROUTES:
        app.router.add_route(method, path, guarded(role, handler))
    public = deps.auth.config.anonymous_metrics
    app.router.add_get("/metrics", get_metrics if public else guarded("viewer", private_metrics))
