"""The REST API against a real loopback server: every route, auth, filters, paging, bad input."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from tests.api.conftest import Client, MakeClient
from tests.api.harness import ADMIN, VIEWER, XSS, Env, bearer, build
from tests.api.openapi_check import validate
from ztpd.http.api import PREFIX
from ztpd.http.openapi import document

ADMIN_H, VIEWER_H = bearer(ADMIN), bearer(VIEWER)


async def call(
    client: Client,
    method: str,
    url: str,
    route: str,
    status: int = 200,
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Any:
    """Request ``url``, check the status, and validate the body against ``route``'s schema."""
    resp = await client.request(method, url, headers=headers or VIEWER_H, **kw)
    text = await resp.text()
    assert resp.status == status, text
    body = json.loads(text) if resp.content_type == "application/json" else text
    validate(body, method, route, status)
    return body


# --- the document ------------------------------------------------------------------------


def test_openapi_document_is_valid_openapi_3_1() -> None:
    validate_spec(document())


def _api_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for r in app.router.routes():
        info = r.resource.canonical if r.resource else ""
        if (info.startswith(PREFIX) or info == "/metrics") and r.method != "HEAD":
            out.add((r.method.lower(), info))
    return out


def test_every_route_is_described_and_nothing_else(env: Env) -> None:
    documented = {(m, p) for p, ops in document()["paths"].items() for m in ops}
    assert _api_routes(env.app) == documented


async def test_served_document_matches(client: Client) -> None:
    resp = await client.get(f"{PREFIX}/openapi.json")  # public: no token
    assert resp.status == 200
    assert await resp.json() == json.loads(json.dumps(document()))


async def test_every_route_answers_per_its_schema(client: Client, env: Env) -> None:
    p = PREFIX
    hit: set[tuple[str, str]] = set()

    async def go(method: str, url: str, route: str, status: int = 200, **kw: Any) -> Any:
        hit.add((method.lower(), route))
        return await call(client, method, url, route, status, **kw)

    await go("GET", f"{p}/openapi.json", f"{p}/openapi.json")
    assert (await go("GET", f"{p}/whoami", f"{p}/whoami"))["role"] == "viewer"
    summary = await go("GET", f"{p}/summary", f"{p}/summary")
    assert summary["states"]["awaiting-approval"] == 1
    assert summary["total"] == 4
    nodes = await go("GET", f"{p}/nodes", f"{p}/nodes")
    assert nodes["total"] == 4
    await go("GET", f"{p}/nodes/1", f"{p}/nodes/{{node}}")
    await go("GET", f"{p}/nodes/1/inventory", f"{p}/nodes/{{node}}/inventory")
    await go("GET", f"{p}/nodes/1/inventories", f"{p}/nodes/{{node}}/inventories")
    await go("GET", f"{p}/nodes/1/inventories/1", f"{p}/nodes/{{node}}/inventories/{{version}}")
    await go("GET", f"{p}/nodes/1/inventories/diff", f"{p}/nodes/{{node}}/inventories/diff")
    await go("GET", f"{p}/nodes/1/match", f"{p}/nodes/{{node}}/match", 501)
    await go(
        "POST",
        f"{p}/nodes/1/actions/approve",
        f"{p}/nodes/{{node}}/actions/{{action}}",
        headers=ADMIN_H,
    )
    await go("GET", f"{p}/events", f"{p}/events")
    resp = await client.get(f"{p}/events/stream?after=0", headers=VIEWER_H)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    first = await read_events(resp, 1)
    validate_stream(first[0])
    resp.close()
    hit.add(("get", f"{p}/events/stream"))
    await go("GET", f"{p}/profiles", f"{p}/profiles")
    await go("GET", f"{p}/leases", f"{p}/leases")
    await go("GET", f"{p}/boot-activity", f"{p}/boot-activity")
    images = await go("GET", f"{p}/images", f"{p}/images")
    assert images["items"] == [
        {"name": "ipxe.efi", "size": 100, "mtime": images["items"][0]["mtime"], "sha256": "ab"}
    ]
    await go("GET", "/metrics", "/metrics")
    assert hit == _api_routes(env.app)


def validate_stream(data: dict[str, Any]) -> None:
    schema = {"$ref": "#/components/schemas/StreamEvent", "components": document()["components"]}
    Draft202012Validator(schema).validate(data)


async def read_events(resp: Any, n: int) -> list[dict[str, Any]]:
    """Read ``n`` SSE messages (id + data) from a streaming response, within 10 s."""
    out: list[dict[str, Any]] = []
    event_id = None

    async def read() -> None:
        nonlocal event_id
        while len(out) < n:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError("stream ended")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert data["id"] == event_id
                out.append(data)

    await asyncio.wait_for(read(), 10.0)
    return out


# --- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer not-a-real-token-at-all"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {ADMIN}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer "}, 401, "unauthorized"),
    ],
)
async def test_reads_need_a_valid_token(
    client: Client, headers: dict[str, str], status: int, code: str
) -> None:
    resp = await client.get(f"{PREFIX}/nodes", headers=headers)
    assert resp.status == status
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["error"]["code"] == code
    assert ADMIN not in json.dumps(body)
    validate(body, "get", f"{PREFIX}/nodes", status)


async def test_viewer_cannot_act(client: Client, env: Env) -> None:
    body = await call(
        client, "POST", f"{PREFIX}/nodes/1/actions/approve",
        f"{PREFIX}/nodes/{{node}}/actions/{{action}}", 403, headers=VIEWER_H,
    )  # fmt: skip
    assert body["error"]["code"] == "forbidden"
    assert env.nodes.get(1).state == "awaiting-approval"


async def test_tokens_never_reach_the_log(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    await client.get(f"{PREFIX}/nodes", headers=bearer("wrong-token-0123456789"))
    await client.post(f"{PREFIX}/nodes/1/actions/approve", headers=ADMIN_H)
    assert "wrong-token" not in caplog.text
    assert ADMIN not in caplog.text
    assert "by=ops" in caplog.text


async def test_anonymous_read_lets_reads_through_but_not_actions(
    aiohttp_client: MakeClient, tmp_path: Any
) -> None:
    env = build(tmp_path, anonymous_read=True)
    env.node("52:54:00:00:00:09")
    client = await aiohttp_client(env.app)
    resp = await client.get(f"{PREFIX}/nodes")
    assert resp.status == 200
    assert (await client.get(f"{PREFIX}/whoami")).status == 200
    resp = await client.post(f"{PREFIX}/nodes/1/actions/retire")
    assert resp.status == 403
    # A wrong token is still refused rather than treated as anonymous.
    resp = await client.get(f"{PREFIX}/nodes", headers=bearer("wrong-token-0123456789"))
    assert resp.status == 401


async def test_metrics_can_require_a_token(aiohttp_client: MakeClient, tmp_path: Any) -> None:
    env = build(tmp_path, anonymous_metrics=False)
    client = await aiohttp_client(env.app)
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=VIEWER_H)).status == 200


# --- filters and paging ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("state=failed", ["52:54:00:00:00:03"]),
        ("state=failed&state=deploying", ["edge-b", "52:54:00:00:00:03"]),
        ("profile=edge", ["edge-b"]),
        ("q=EDGE-", ["edge-a", "edge-b"]),
        ("q=00:00:03", ["52:54:00:00:00:03"]),
        ("q=sn2", ["edge-b"]),
        ("q=%25", []),  # a LIKE wildcard is literal text
        ("sort=name&order=desc&limit=2", ["edge-b", "edge-a"]),
        ("sort=name&limit=2", ["52:54:00:00:00:03", XSS]),
        ("sort=id&limit=2&offset=2", ["52:54:00:00:00:03", XSS]),
    ],
)
async def test_node_filters(client: Client, query: str, names: list[str]) -> None:
    body = await call(client, "GET", f"{PREFIX}/nodes?{query}", f"{PREFIX}/nodes")
    assert [n["name"] for n in body["items"]] == names


async def test_node_paging_reports_total(client: Client) -> None:
    body = await call(client, "GET", f"{PREFIX}/nodes?limit=1&offset=1", f"{PREFIX}/nodes")
    assert (len(body["items"]), body["total"], body["limit"], body["offset"]) == (1, 4, 1, 1)


@pytest.mark.parametrize(
    "query",
    [
        "limit=100000",
        "limit=0",
        "limit=abc",
        "offset=-1",
        "state=flying",
        "sort=password",
        "order=sideways",
        "colour=blue",
    ],
)
async def test_bad_list_parameters_are_400(client: Client, query: str) -> None:
    body = await call(client, "GET", f"{PREFIX}/nodes?{query}", f"{PREFIX}/nodes", 400)
    assert body["error"]["code"] == "bad-request"


async def test_events_paged_by_cursor(client: Client) -> None:
    route = f"{PREFIX}/events"
    everything = await call(client, "GET", f"{route}?limit=500&order=asc", route)
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids)
    seen: list[int] = []
    url = f"{route}?limit=3"
    while True:
        page = await call(client, "GET", url, route)
        seen += [e["id"] for e in page["items"]]
        if page["next_before"] is None:
            break
        url = f"{route}?limit=3&before={page['next_before']}"
    assert seen == sorted(ids, reverse=True)


async def test_events_filtered_by_node_and_kind(client: Client) -> None:
    route = f"{PREFIX}/events"
    body = await call(client, "GET", f"{route}?node=edge-a&kind=transition", route)
    assert {e["node_id"] for e in body["items"]} == {1}
    assert {e["kind"] for e in body["items"]} == {"transition"}
    body = await call(client, "GET", f"{route}?node=52:54:00:00:00:04&kind=dhcp", route)
    assert [e["cause"] for e in body["items"]] == ["offer"]
    await call(client, "GET", f"{route}?node=nosuch", route, 404)


async def test_boot_activity_and_leases(client: Client) -> None:
    route = f"{PREFIX}/boot-activity"
    body = await call(client, "GET", route, route)
    assert [e["kind"] for e in body["items"]] == ["boot", "dhcp"]
    route = f"{PREFIX}/leases"
    body = await call(client, "GET", f"{route}?state=bound", route)
    assert [(x["ip"], x["node_id"]) for x in body["items"]] == [("10.9.0.10", 4)]
    body = await call(client, "GET", f"{route}?mac=52-54-00-00-00-05", route)
    assert [x["state"] for x in body["items"]] == ["offered"]
    await call(client, "GET", f"{route}?mac=nonsense", route, 400)


# --- nodes and inventories ---------------------------------------------------------------


async def test_node_detail_by_any_identifier(client: Client) -> None:
    route = f"{PREFIX}/nodes/{{node}}"
    for ref in ("1", "edge-a", "SN1", "52:54:00:00:00:01"):
        body = await call(client, "GET", f"{PREFIX}/nodes/{ref}", route)
        assert body["id"] == 1
        assert body["actions"] == ["approve", "retire"]
        assert body["inventory"]["version"] == 2
    body = await call(client, "GET", f"{PREFIX}/nodes/424242", route, 404)
    assert body["error"]["code"] == "not-found"


async def test_inventory_history_and_diff(client: Client) -> None:
    base = f"{PREFIX}/nodes/{{node}}"
    latest = await call(client, "GET", f"{PREFIX}/nodes/1/inventory", f"{base}/inventory")
    assert latest["version"] == 2
    hist = await call(client, "GET", f"{PREFIX}/nodes/1/inventories", f"{base}/inventories")
    assert [h["version"] for h in hist["items"]] == [2, 1]
    route = f"{base}/inventories/diff"
    diff = await call(client, "GET", f"{PREFIX}/nodes/1/inventories/diff", route)
    assert diff["from"] == 1 and diff["to"] == 2
    assert diff["changes"] == [
        {"path": "memory.total_bytes", "op": "changed", "old": 16 * 2**30, "new": 32 * 2**30}
    ]
    diff = await call(client, "GET", f"{PREFIX}/nodes/1/inventories/diff?from=2&to=1", route)
    assert diff["changes"][0]["old"] == 32 * 2**30
    await call(client, "GET", f"{PREFIX}/nodes/1/inventories/diff?from=9", route, 404)
    route = f"{base}/inventories/{{version}}"
    await call(client, "GET", f"{PREFIX}/nodes/1/inventories/7", route, 404)
    await call(client, "GET", f"{PREFIX}/nodes/1/inventories/x", route, 400)
    await call(client, "GET", f"{PREFIX}/nodes/3/inventory", f"{base}/inventory", 404)


# --- actions -----------------------------------------------------------------------------

ACTION = f"{PREFIX}/nodes/{{node}}/actions/{{action}}"


async def test_action_returns_resulting_state(client: Client, env: Env) -> None:
    body = await call(
        client, "POST", f"{PREFIX}/nodes/3/actions/retry", ACTION, headers=ADMIN_H,
        json={"reason": "cable fixed"},
    )  # fmt: skip
    assert (body["from_state"], body["to_state"]) == ("failed", "inspecting")
    assert body["node"]["state"] == "inspecting"
    body = await call(
        client, "POST", f"{PREFIX}/nodes/3/actions/retire", ACTION, headers=ADMIN_H,
        json={"wipe": "full"},
    )  # fmt: skip
    assert body["to_state"] == "retiring"  # the node's agent wipes its disks, then: retired
    last = env.store.query_one("SELECT detail FROM events WHERE id = ?", (body["event_id"],))
    assert last is not None
    assert json.loads(last["detail"]) == {
        **{"by": "ops", "wipe": "full", "wipe_policy": "explicit"},
        "wipe_why": "asked for wipe full",
    }


async def test_illegal_transition_is_409_naming_what_is_allowed(client: Client) -> None:
    body = await call(
        client, "POST", f"{PREFIX}/nodes/2/actions/approve", ACTION, 409, headers=ADMIN_H
    )
    assert body["error"]["code"] == "illegal-transition"
    assert "allowed:" in body["error"]["message"]
    assert body["error"]["detail"] == {"state": "deploying", "trigger": "approve"}


@pytest.mark.parametrize(
    ("url", "payload", "status", "fragment"),
    [
        ("1/actions/approve", b"{not json", 400, "malformed JSON"),
        ("1/actions/approve", b'{"reason": "x", "colour": "red"}', 400, "invalid request body"),
        ("1/actions/approve", b'{"wipe": "full"}', 400, "wipe applies to retire only"),
        ("1/actions/retire", b'{"wipe": "shred"}', 400, "invalid request body"),
        ("1/actions/approve", b'["a list"]', 400, "invalid request body"),
        ("1/actions/approve", json.dumps({"reason": "x" * 501}).encode(), 400, "invalid"),
        ("1/actions/explode", b"", 404, "no action"),
        ("999/actions/approve", b"", 404, "no node"),
    ],
)
async def test_bad_action_input(
    client: Client, url: str, payload: bytes, status: int, fragment: str
) -> None:
    body = await call(
        client, "POST", f"{PREFIX}/nodes/{url}", ACTION, status, headers=ADMIN_H, data=payload
    )
    assert fragment in body["error"]["message"]


async def test_oversized_body_is_refused(client: Client) -> None:
    resp = await client.post(
        f"{PREFIX}/nodes/1/actions/approve", headers=ADMIN_H, data=io.BytesIO(b" " * (2 << 20))
    )
    assert resp.status == 413
    assert "error" in await resp.json()


# --- sessions from the page, used against the API -----------------------------------------


async def _login(client: Client, token: str) -> str:
    resp = await client.post("/login", data={"token": token, "next": "/"}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    html = await (await client.get("/nodes/1")).text()
    marker = 'name="csrf" value="'
    return html[html.index(marker) + len(marker) :].split('"', 1)[0]


async def test_session_actions_need_csrf_and_same_origin(client: Client, env: Env) -> None:
    csrf = await _login(client, ADMIN)
    url = f"{PREFIX}/nodes/1/actions/approve"
    resp = await client.post(url)
    assert resp.status == 403
    assert "CSRF" in (await resp.json())["error"]["message"]
    resp = await client.post(url, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert resp.status == 403
    assert env.nodes.get(1).state == "awaiting-approval"
    resp = await client.post(url, headers={"X-CSRF-Token": csrf})
    assert resp.status == 200
    assert env.nodes.get(1).state == "matched"
    who = await (await client.get(f"{PREFIX}/whoami")).json()
    assert who == {"name": "ops", "role": "admin", "via": "session"}


async def test_wrong_login_is_refused(client: Client) -> None:
    resp = await client.post("/login", data={"token": "guess-guess-guess-guess"})
    assert resp.status == 401
    assert (await client.get(f"{PREFIX}/whoami")).status == 401
