"""The status page: server-rendered jinja2 pages plus one small script for live updates.

Pages need the viewer role (a login, or ``anonymous_read``); the action buttons appear for an
admin login and post a form carrying the session's CSRF token. Templates autoescape, and the
script only ever sets ``textContent``, so a hostname or LLDP text is shown, never run; the
Content-Security-Policy allows scripts from /static only, as a second wall. Templates and
static files are package data under ztpd/web/, so nothing is fetched from outside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web

from ztpd.errors import BadRequest, Forbidden, Unauthorized, ZtpdError
from ztpd.http import queries
from ztpd.http.api import DEPS, ActionBody, Deps, act, summary
from ztpd.http.auth import COOKIE, Principal, check_origin
from ztpd.lifecycle import State
from ztpd.store import Nodes

log = logging.getLogger("ztpd.web")

HERE = Path(__file__).parent
JINJA = web.AppKey("ztpd_web_jinja", jinja2.Environment)
LOG_KINDS = ("agent", "installer", "log")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _ago(ts: float) -> str:
    s = max(0, int(time.time() - ts))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["isotime"] = lambda ts: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    env.filters["clock"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return env


def _render(
    request: web.Request, template: str, who: Principal | None, status: int = 200, **ctx: Any
) -> web.Response:
    ctx.setdefault("last_event_id", 0)
    ctx.setdefault("request_path", request.path_qs)
    html = request.app[JINJA].get_template(template).render(principal=who, **ctx)
    return web.Response(
        text=html, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


def _viewer(request: web.Request) -> Principal | None:
    """The principal, or None when the page must send the browser to the login form."""
    return request.app[DEPS].auth.identify(request)


def _to_login(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")


def _safe_next(value: str) -> str:
    """Only a path on this site (never //host or a scheme), so login cannot redirect away."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


# --- pages ---------------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.StreamResponse:
    who = _viewer(request)
    if who is None:
        raise _to_login(request)
    data = await asyncio.to_thread(summary, request.app[DEPS])
    return _render(
        request, "dashboard.html", who, page="dashboard", summary=data,
        last_event_id=data["last_event_id"],
    )  # fmt: skip


async def nodes_page(request: web.Request) -> web.StreamResponse:
    who = _viewer(request)
    if who is None:
        raise _to_login(request)
    deps = request.app[DEPS]
    state = request.query.get("state", "")
    q = request.query.get("q", "")
    states = (state,) if state in {s.value for s in State} else ()
    f = queries.NodeFilter(states=states, text=q or None, limit=queries.MAX_LIMIT)

    def load() -> tuple[list[dict[str, Any]], int, int]:
        last = queries.last_event_id(deps.store)  # before the rows: the stream fills the gap
        items, total = queries.list_nodes(deps.store, f)
        return items, total, last

    items, total, last = await asyncio.to_thread(load)
    return _render(
        request, "nodes.html", who, page="nodes", nodes=items, total=total, q=q, state=state,
        states=[s.value for s in State], last_event_id=last,
    )  # fmt: skip


def _hardware(data: dict[str, Any]) -> dict[str, Any]:
    """Short lines for people from an inventory (every part optional, as in the schema)."""

    def join(*parts: Any) -> str:
        return " ".join(str(p) for p in parts if p not in (None, "", [])) or "—"

    def gib(n: Any) -> str:
        return f"{n / 2**30:.1f} GiB" if isinstance(n, int | float) else ""

    cpu, mem = data.get("cpu") or {}, data.get("memory") or {}
    system, bmc = data.get("system") or {}, data.get("bmc") or {}
    fw = system.get("firmware") or {}
    nics = []
    for i in data.get("interfaces") or []:
        lldp = i.get("lldp") or {}
        peer = join(lldp.get("system_name"), lldp.get("port_id"))
        speed = f"{i['speed_mbps']} Mb/s" if i.get("speed_mbps") else None
        link = {True: "link up", False: "no link"}.get(i.get("link"))
        nics.append(
            join(i.get("name"), i.get("mac"), speed, link, f"(switch {peer})" if lldp else None)
        )
    return {
        "system": join(system.get("manufacturer"), system.get("product")),
        "cpu": join(cpu.get("model"), f"x {cpu['count']}" if cpu.get("count") else None),
        "memory": gib(mem.get("total_bytes") or mem.get("physical_bytes")) or "—",
        "firmware": join(fw.get("vendor"), fw.get("version"), fw.get("date")),
        "bmc": join(bmc.get("address"), bmc.get("mac")),
        "disks": [
            join(
                d.get("name"),
                d.get("model"),
                gib(d.get("size_bytes")),
                "HDD" if d.get("rotational") else "SSD" if d.get("rotational") is False else None,
            )
            for d in data.get("disks") or []
        ],
        "nics": nics,
        "errors": [join(e.get("collector"), e.get("message")) for e in data.get("errors") or []],
    }


async def node_page(
    request: web.Request, error: str | None = None, status: int = 200
) -> web.StreamResponse:
    who = _viewer(request)
    if who is None:
        raise _to_login(request)
    deps = request.app[DEPS]
    ref = request.match_info["node"]

    def load() -> dict[str, Any]:
        node_id = Nodes(deps.store).find(ref).id
        last = queries.last_event_id(deps.store)
        ctx: dict[str, Any] = {"node": queries.node_detail(deps.store, node_id)}
        try:
            ctx["inventory"] = queries.inventory(deps.store, node_id)
            ctx["hw"] = _hardware(ctx["inventory"]["data"])
        except ZtpdError:
            ctx["inventory"], ctx["hw"] = None, None
        ctx["explanation"], ctx["explain_error"] = None, None
        if deps.profiles is None:
            ctx["explain_error"] = "Profile matching is not running in this ztpd."
        else:
            try:
                ctx["explanation"] = deps.profiles.explain(node_id)
            except ZtpdError as e:
                ctx["explain_error"] = f"No explanation: {e.message}"
        evs = queries.events(deps.store, node_id=node_id, limit=200)
        ctx["events"] = [queries.event_dict(e) for e in evs]
        ctx["log"] = list(
            reversed(queries.events(deps.store, node_id=node_id, kinds=LOG_KINDS, limit=200))
        )
        ctx["boots"] = queries.events(
            deps.store, node_id=node_id, kinds=queries.BOOT_KINDS, limit=30
        )
        ctx["last_event_id"] = last
        return ctx

    ctx = await asyncio.to_thread(load)
    return _render(
        request, "node.html", who, status, page="node", error=error,
        all_actions=queries.ACTIONS, **ctx,
    )  # fmt: skip


async def profiles_page(request: web.Request) -> web.StreamResponse:
    who = _viewer(request)
    if who is None:
        raise _to_login(request)
    deps = request.app[DEPS]

    def load() -> dict[str, Any]:
        counts = queries.profile_counts(deps.store)
        if deps.profiles is None:
            return {
                "available": False,
                "message": "Profile matching is not running in this ztpd.",
                "profiles": [],
                "errors": [],
            }
        d = deps.profiles.describe()
        return {
            "available": True,
            "message": None,
            "profiles": [{**p, "nodes": counts.get(p["name"], 0)} for p in d["profiles"]],
            "errors": d["errors"],
        }

    data = await asyncio.to_thread(load)
    return _render(request, "profiles.html", who, page="profiles", data=data)


# --- login and actions ---------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    nxt = _safe_next(request.query.get("next", "/"))
    return _render(request, "login.html", None, page="login", next=nxt, error=None)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    nxt = _safe_next(str(form.get("next", "/")))
    try:
        check_origin(request)
        sid, _ = request.app[DEPS].auth.login(str(form.get("token", "")).strip())
    except Forbidden as e:
        return _render(
            request, "login.html", None, e.http_status, page="login", next=nxt, error=e.message
        )
    resp = web.HTTPSeeOther(nxt)
    resp.set_cookie(
        COOKIE,
        sid,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        path="/",
        max_age=int(request.app[DEPS].auth.config.session_ttl),
    )
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    auth = request.app[DEPS].auth
    try:
        auth.require(request, "viewer", csrf_form=str(form.get("csrf", "")))
    except Forbidden as e:
        return _render(request, "error.html", None, e.http_status, page="error",
                       code=e.http_status, message=e.message)  # fmt: skip
    auth.logout(request)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


async def node_action(request: web.Request) -> web.StreamResponse:
    deps: Deps = request.app[DEPS]
    form = await request.post()
    try:
        principal = deps.auth.require(request, "admin", csrf_form=str(form.get("csrf", "")))
    except Forbidden as e:
        who = None if isinstance(e, Unauthorized) else deps.auth.identify(request)
        return _render(request, "error.html", who, e.http_status, page="error",
                       code=e.http_status, message=e.message)  # fmt: skip
    action = str(form.get("action", ""))
    ref = request.match_info["node"]
    try:
        if action not in queries.ACTIONS:
            raise BadRequest(f"unknown action {action!r}")
        wipe = str(form.get("wipe", "")) if action == "retire" else ""
        reason = str(form.get("reason", "")).strip()
        body = ActionBody.model_validate({"reason": reason or None, "wipe": wipe or None})
        node_id = (await asyncio.to_thread(Nodes(deps.store).find, ref)).id
        await asyncio.to_thread(act, deps, node_id, action, body, principal)
    except ZtpdError as e:
        return await node_page(request, error=e.message, status=e.http_status)
    except ValueError as e:  # an invalid form value (pydantic)
        return await node_page(request, error=f"invalid form: {e}", status=400)
    raise web.HTTPSeeOther(f"/nodes/{node_id}")


def add_web_routes(app: web.Application, deps: Deps) -> None:
    """Mount the page on ``app``; call after ``add_api_routes`` (it shares the API's deps)."""
    if app.get(DEPS) is not deps:
        raise ValueError("add_api_routes(app, deps) must come first")
    app[JINJA] = environment()
    app.router.add_get("/", dashboard)
    app.router.add_get("/nodes", nodes_page)
    app.router.add_get("/nodes/{node}", node_page)
    app.router.add_post("/nodes/{node}/actions", node_action)
    app.router.add_get("/profiles", profiles_page)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static", HERE / "static", append_version=False)
