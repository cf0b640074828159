"""Profiles through the API and the page, with the shipped example profiles loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.api.conftest import MakeClient
from tests.api.harness import INVENTORY, VIEWER, bearer, build
from tests.api.openapi_check import validate
from ztpd.http.api import PREFIX
from ztpd.lifecycle import Trigger as T

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"


async def test_profiles_match_explanation_and_errors(
    aiohttp_client: MakeClient, tmp_path: Path
) -> None:
    pdir = tmp_path / "profiles"
    shutil.copytree(SHIPPED, pdir)
    env = build(tmp_path, profiles_dir=pdir)
    a = env.node("52:54:00:00:00:01")
    env.walk(a, T.INSPECT, T.INSPECTED)
    env.inventory(a, INVENTORY)
    client = await aiohttp_client(env.app)
    h = bearer(VIEWER)

    resp = await client.get(f"{PREFIX}/profiles", headers=h)
    body = await resp.json()
    validate(body, "get", f"{PREFIX}/profiles", 200)
    assert body["available"] is True and body["errors"] == []
    names = [p["name"] for p in body["profiles"]]
    assert "k3s-agent" in names
    assert all(p["source"].startswith(str(pdir)) for p in body["profiles"])

    resp = await client.get(f"{PREFIX}/nodes/{a}/match", headers=h)
    explained = await resp.json()
    validate(explained, "get", f"{PREFIX}/nodes/{{node}}/match", 200)
    assert {v["profile"] for v in explained["profiles"]} == set(names)
    assert all("conditions" in v for v in explained["profiles"])

    page = await (await client.get(f"/nodes/{a}", headers=h)).text()
    assert explained["reason"].replace("'", "&#39;") in page

    # A broken file: the previous set keeps serving and the errors are listed, located.
    (pdir / "zz-broken.yaml").write_text("name: Bad Name\nmatch: 3\n")
    env.deps.profiles.catalog.reload()  # type: ignore[union-attr]
    body = await (await client.get(f"{PREFIX}/profiles", headers=h)).json()
    validate(body, "get", f"{PREFIX}/profiles", 200)
    assert [p["name"] for p in body["profiles"]] == names
    assert body["errors"] and all(e["file"].endswith("zz-broken.yaml") for e in body["errors"])
    page = await (await client.get("/profiles", headers=h)).text()
    assert "zz-broken.yaml" in page and "keeps serving" in page
    dash = await (await client.get("/", headers=h)).text()
    assert "problem" in dash and 'href="/profiles"' in dash
