"""The status page in Debian's headless Chromium (driven by Playwright) against a real server.

Seeded nodes show in the table; a state change made through the API appears without a reload
within a second; actions need an admin login; ``<script>`` in a hostname or an inventory stays
text; screenshots of the dashboard and a node page go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.api.harness import ADMIN, INVENTORY, VIEWER, XSS, Env, bearer, build
from ztpd.lifecycle import Trigger as T

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.exists():
    pytest.skip("needs chromium: apt-get install chromium", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright (pip)")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = build(tmp_path)
    a = e.node("52:54:00:00:00:01", serial="SN-A", hostname="edge-a")
    e.walk(a, T.INSPECT, T.INSPECTED)
    e.inventory(a, INVENTORY)
    e.walk(a, T.HOLD)
    b = e.node("52:54:00:00:00:02", serial="SN-B", hostname="edge-b")
    e.walk(b, T.INSPECT, T.INSPECTED, T.MATCH, T.DEPLOY, profile="edge")
    with e.store.transaction() as conn:  # an image write half done
        conn.execute(
            "INSERT INTO runs (node_id, kind, started_at, status, detail) VALUES (?, ?, ?, ?, ?)",
            (b, "image-write", time.time(), "running",
             '{"bytes_written": 3000000000, "bytes_total": 8000000000, "stage": "writing"}'),
        )  # fmt: skip
    c = e.node("52:54:00:00:00:03", serial="SN-C")
    e.walk(c, T.INSPECT)
    e.lifecycle.fire(c, T.FAIL, cause="agent", reason="disk /dev/sda: I/O error")
    x = e.node("52:54:00:00:00:04", serial=XSS, hostname=XSS)
    e.walk(x, T.INSPECT, T.INSPECTED)
    evil = {
        **INVENTORY,
        "system": {"manufacturer": XSS, "product": "<b>bold</b>"},
        "interfaces": [{"name": "eth0", "lldp": {"system_name": XSS, "port_id": "<i>1</i>"}}],
    }
    e.inventory(x, evil)
    e.walk(x, T.NO_MATCH)
    e.store.add_event(node_id=x, kind="agent", cause="log", detail={"message": XSS})
    return e


@pytest.fixture
async def base(
    aiohttp_server: Callable[..., Awaitable[TestServer]], env: Env
) -> AsyncIterator[str]:
    server = await aiohttp_server(env.app)
    yield str(server.make_url("")).rstrip("/")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir per test
            executable_path=str(CHROMIUM),
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            await context.close()


async def api(base: str, method: str, path: str, token: str = ADMIN) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, base + path, headers=bearer(token)) as r,
    ):
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def login(page: Any, base: str, token: str, then: str = "/nodes") -> None:
    await page.goto(f"{base}{then}")
    assert "/login" in page.url  # nothing is shown without a login
    await page.get_by_label("Access token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{base}{then}")


async def not_pwned(page: Any) -> None:
    assert await page.evaluate("() => window.__pwned === undefined")


async def test_table_shows_nodes_and_updates_live(browser: Any, base: str, env: Env) -> None:
    page = await browser.new_page()
    await login(page, base, VIEWER)
    rows = page.locator("#nodes-table tbody tr")
    assert await rows.count() == 4
    assert await page.locator('tr[data-node-id="1"] [data-field="state"]').inner_text() == (
        "awaiting-approval"
    )
    assert "38%" in await page.locator('tr[data-node-id="2"] td[data-col="progress"]').inner_text()
    await page.evaluate("() => { window.__marker = 'same page'; }")
    # The stream must be open before the change, else this would test the replay path only.
    await page.wait_for_function("() => document.body.dataset.live === 'open'")
    started = time.monotonic()
    result = await api(base, "POST", "/api/v1/nodes/1/actions/approve")
    assert result["to_state"] == "matched"
    await page.wait_for_function(
        """() => document.querySelector('tr[data-node-id="1"] [data-field="state"]')
                  .textContent === 'matched'""",
        timeout=1000,
    )
    assert time.monotonic() - started < 1.5
    assert await page.evaluate("() => window.__marker") == "same page"  # no reload
    # The node with <script> in its name is re-drawn by the script: still only text.
    await api(base, "POST", "/api/v1/nodes/4/actions/retire")
    cell = page.locator('tr[data-node-id="4"] td[data-col="name"]')
    await page.wait_for_function(
        """() => document.querySelector('tr[data-node-id="4"]').dataset.state === 'retired'"""
    )
    assert await cell.inner_text() == XSS
    assert await page.locator("#nodes-table script, #nodes-table img").count() == 0
    await not_pwned(page)
    # Filtering and sorting happen in the page.
    await page.get_by_label("Search").fill("edge-b")
    assert await page.locator("#nodes-table tbody tr:visible").count() == 1
    await page.get_by_label("Search").fill("")
    name_cells = page.locator('#nodes-table tbody td[data-col="name"]')
    await page.get_by_role("button", name="Name").click()
    assert await page.locator("th[aria-sort=ascending]").inner_text() == "Name"
    up = await name_cells.all_inner_texts()
    assert up.index("edge-a") < up.index("edge-b")
    await page.get_by_role("button", name="Name").click()
    assert await name_cells.all_inner_texts() == up[::-1]


async def test_actions_need_an_admin_login(browser: Any, base: str, env: Env) -> None:
    page = await browser.new_page()
    await login(page, base, VIEWER, then="/nodes/1")
    assert await page.locator("#actions").count() == 0
    assert await page.get_by_text("Log in as an admin").count() == 1
    # A viewer's session cannot act even with a hand-made form post.
    status = await page.evaluate(
        """async () => (await fetch('/nodes/1/actions', {method: 'POST',
             body: new URLSearchParams({action: 'approve', csrf: 'guess'})})).status"""
    )
    assert status == 403
    assert env.nodes.get(1).state == "awaiting-approval"
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url(f"{base}/login")
    # Logged out: the action form's target refuses too.
    status = await page.evaluate(
        """async () => (await fetch('/nodes/1/actions', {method: 'POST',
             body: new URLSearchParams({action: 'approve'})})).status"""
    )
    assert status == 401
    await login(page, base, ADMIN, then="/nodes/1")
    actions = page.locator("#actions")
    assert await actions.get_by_role("button", name="Approve").is_visible()
    assert not await actions.get_by_role("button", name="Retry").is_visible()
    await page.get_by_label("Reason (recorded)").fill("checked the rack")
    await actions.get_by_role("button", name="Approve").click()
    await page.wait_for_url(f"{base}/nodes/1")
    assert await page.locator("h1 .badge").inner_text() == "matched"
    assert env.nodes.get(1).state == "matched"
    assert "checked the rack" in await page.locator("#timeline").inner_text()
    # An action the lifecycle refuses comes back as the node page with the reason (409).
    status, html = await page.evaluate(
        """async () => {
             const csrf = document.querySelector('input[name=csrf]').value;
             const r = await fetch('/nodes/2/actions', {method: 'POST',
               body: new URLSearchParams({action: 'approve', csrf})});
             return [r.status, await r.text()];
           }"""
    )
    assert status == 409
    assert "not allowed for a node in state deploying" in html
    await page.goto(f"{base}/nodes/2")
    await page.locator("#actions button[data-action=retire]").click()
    await page.wait_for_url(f"{base}/nodes/2")
    assert await page.locator("h1 .badge").inner_text() == "retired"


async def test_node_supplied_html_is_inert_everywhere(browser: Any, base: str, env: Env) -> None:
    page = await browser.new_page()
    await login(page, base, VIEWER, then="/nodes/4")
    text = await page.locator("main").inner_text()
    assert XSS in text  # shown, as text
    assert "<b>bold</b>" in text and "<i>1</i>" in text
    assert await page.locator("main script, main img, main b, main i").count() == 0
    assert await page.locator("h1 .node-name").inner_text() == XSS
    await not_pwned(page)
    for path in ("/", "/nodes", "/profiles"):
        await page.goto(base + path)
        await not_pwned(page)
        assert await page.locator("main script, main img").count() == 0


async def test_screenshots(browser: Any, base: str, env: Env) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = await browser.new_page()
    await login(page, base, ADMIN, then="/")
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    await page.goto(f"{base}/nodes/1")
    await page.screenshot(path=str(ARTIFACTS / "node.png"), full_page=True)
    await page.emulate_media(color_scheme="dark")
    await page.goto(f"{base}/nodes")
    await page.screenshot(path=str(ARTIFACTS / "nodes-dark.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.emulate_media(color_scheme="light")
    await page.goto(f"{base}/")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    for name in ("dashboard.png", "node.png", "nodes-dark.png", "dashboard-phone.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000
