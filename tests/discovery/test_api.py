"""The agent endpoints against bad input, through a real loopback server: every refusal is a
clear 4xx and an event, nothing is stored for the wrong node, and the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import ztpd
from tests.discovery.conftest import Site, new_node, serve
from tests.discovery.test_collect import _tar, two_nic_server
from ztpd.identity import Identity
from ztpd.lifecycle import Trigger, retire_trigger
from ztpd.store import Events, Nodes

MAC = "b4:96:91:aa:00:01"  # the hand-made server's boot NIC


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in serve(tmp_path, silence=30, mac=MAC):
        yield s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def inventories(site: Site, node_id: int) -> int:
    row = site.store.query_one(
        "SELECT COUNT(*) AS n FROM inventories WHERE node_id = ?", (node_id,)
    )
    return int(row["n"]) if row else 0


def events(site: Site, kind: str) -> list[dict[str, Any]]:
    return [e.to_dict() for e in Events(site.store).list(limit=10_000) if e.kind == kind]


async def post(
    http: aiohttp.ClientSession, url: str, data: bytes | io.BytesIO, token: str, ctype: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=data, headers={**auth(token), "Content-Type": ctype}) as r:
        return r.status, await r.json()


async def test_bundle_inventory_moves_node_to_inspected_and_links_identity(site: Site) -> None:
    bundle = _tar(two_nic_server())
    async with aiohttp.ClientSession() as http:
        status, body = await post(
            http, f"{site.url}/agent/v1/inventory", bundle, site.token, "application/gzip"
        )
        assert (status, body["version"]) == (201, 1), body
        # A re-inspection adds a version; the agent itself posts base64 (busybox wget).
        status, body = await post(
            http, f"{site.url}/agent/v1/inventory", base64.b64encode(bundle), site.token,
            "application/x-ztpd-bundle+base64",
        )  # fmt: skip
        assert (status, body["version"]) == (201, 2)
    node = Nodes(site.store).get(site.node_id)
    assert node.state == "inspected"
    assert set(node.macs) == {MAC, "b4:96:91:aa:00:02"}
    assert (node.serial, node.uuid) == ("7XK2QK3", "4c4c4544-0058-4b10-8032-b7c04f514b33")


async def test_wrong_missing_and_foreign_tokens(site: Site) -> None:
    other_id, other_token = new_node(site.store, site.lifecycle, "52:54:00:00:99:99")
    other_uuid = Identity.of([], "11111111-2222-4333-8444-555555555555")
    Nodes(site.store).observe(other_uuid, cause="test", node_id=other_id)
    bundle = _tar(two_nic_server())
    url = f"{site.url}/agent/v1/inventory"
    async with aiohttp.ClientSession() as http:
        status, body = await post(http, url, bundle, "not-a-token", "application/gzip")
        assert status == 403 and body["error"]["code"] == "forbidden"
        async with http.post(url, data=bundle) as r:
            assert r.status == 403
        # The other node's valid token, with this machine's inventory: refused, nothing stored.
        status, body = await post(http, url, bundle, other_token, "application/gzip")
        assert status == 403 and "another node" in body["error"]["message"], body
    assert inventories(site, other_id) == 0 and inventories(site, site.node_id) == 0
    assert Nodes(site.store).get(other_id).state == "inspecting"
    rejected = events(site, "agent-rejected")
    assert any(e["node_id"] is None for e in rejected)
    assert any(
        e["node_id"] == other_id and "another node" in e["detail"]["message"] for e in rejected
    )


async def test_schema_invalid_and_malformed_documents(site: Site) -> None:
    doc = {"schema_version": 1, "interfaces": [{"name": "eth0", "mac": "zz:zz"}]}
    url = f"{site.url}/agent/v1/inventory"
    async with aiohttp.ClientSession() as http:
        status, body = await post(
            http, url, json.dumps(doc).encode(), site.token, "application/json"
        )
        assert status == 400
        assert body["error"]["detail"][0]["field"] == "interfaces.0.mac", body
        assert "interfaces.0.mac" in body["error"]["message"]
        status, body = await post(http, url, b"{not json", site.token, "application/json")
        assert status == 400 and body["error"]["detail"][0]["field"] == "body"
        status, body = await post(http, url, b"x", site.token, "text/plain")
        assert status == 415
        async with http.get(f"{site.url}/healthz") as r:
            assert r.status == 200
    node = Nodes(site.store).get(site.node_id)
    assert node.state == "failed" and node.failed_from == "inspecting"
    assert node.reason is not None and node.reason.startswith(
        "inventory rejected: interfaces.0.mac"
    )
    assert inventories(site, site.node_id) == 0
    assert (
        events(site, "inventory-rejected")[0]["detail"]["problems"][0]["field"]
        == "interfaces.0.mac"
    )


async def test_fifty_megabyte_body_is_refused_before_it_is_read(site: Site) -> None:
    big = io.BytesIO(b"\0" * (50 << 20))
    async with aiohttp.ClientSession() as http:
        try:
            status, body = await post(
                http, f"{site.url}/agent/v1/inventory", big, site.token, "application/gzip"
            )
        except aiohttp.ClientError:  # the server may close while the client is still sending
            status, body = 413, {}
        assert status == 413, body
        async with http.get(f"{site.url}/agent/v1/next", headers=auth(site.token)) as r:
            assert r.status == 200 and (await r.json())["action"] == "wait"
    assert inventories(site, site.node_id) == 0
    assert any("over the limit" in e["detail"]["message"] for e in events(site, "agent-rejected"))


async def test_heartbeat_flood_is_throttled_and_keeps_the_node_alive(site: Site) -> None:
    url = f"{site.url}/agent/v1/heartbeat"
    body = json.dumps({"boot": "b1", "stage": "collecting"}).encode()
    async with aiohttp.ClientSession() as http:

        async def beat() -> int:
            async with http.post(url, data=body, headers=auth(site.token)) as r:
                return r.status

        statuses = await asyncio.gather(*(beat() for _ in range(300)))
        async with http.get(f"{site.url}/healthz") as r:
            assert r.status == 200
        async with http.post(url, data=b"[1]", headers=auth(site.token)) as r:
            assert r.status in (400, 429)
    assert statuses.count(200) == 1 and statuses.count(429) == 299
    flood = [e for e in events(site, "agent-rejected") if e["detail"]["from"] == "heartbeat-flood"]
    assert 1 <= len(flood) <= 3  # noted, not once per request
    node = Nodes(site.store).get(site.node_id)
    # The heartbeat moved the deadline to the silence limit, with its own reason.
    row = site.store.query_one("SELECT deadline_reason FROM nodes WHERE id = ?", (node.id,))
    assert row is not None and row["deadline_reason"] == "agent silent in inspecting"
    assert node.deadline is not None and node.deadline <= site.store.clock() + 30


async def test_log_chunks_are_stored_once_in_order(site: Site) -> None:
    url = f"{site.url}/agent/v1/log"
    chunks = [(0, "one\n"), (4, "two\n"), (4, "two\n"), (0, "one\ntwo\nthree\n"), (20, "four\n")]
    async with aiohttp.ClientSession() as http:
        for offset, text in chunks:
            headers = {**auth(site.token), "X-Log-Offset": str(offset), "X-Agent-Boot": "b1"}
            async with http.post(url, data=text.encode(), headers=headers) as r:
                assert r.status == 200
        async with http.get(f"{site.url}/api/v1/nodes/{site.node_id}/agent-log") as r:
            log = await r.json()
        headers = {**auth(site.token), "X-Log-Offset": "x"}
        async with http.post(url, data=b"x", headers=headers) as r:
            assert r.status == 400
    assert log["text"] == "one\ntwo\nthree\n[ztpd: 6 bytes of log lost]\nfour\n"
    assert log["boots"] == ["b1"] and log["agent"]["boot"] == "b1"


async def test_next_action_delivers_an_order_once(site: Site) -> None:
    site.service.order(site.node_id, "reboot")
    async with aiohttp.ClientSession() as http:
        got = []
        for _ in range(2):
            async with http.get(f"{site.url}/agent/v1/next", headers=auth(site.token)) as r:
                got.append((await r.json())["action"])
    assert got == ["reboot", "wait"]


async def next_action(http: aiohttp.ClientSession, site: Site) -> dict[str, Any]:
    async with http.get(f"{site.url}/agent/v1/next", headers=auth(site.token)) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def test_a_matched_node_is_told_to_reboot_into_its_install(site: Site) -> None:
    site.lifecycle.fire(site.node_id, Trigger.INSPECTED, cause="test")
    site.lifecycle.fire(site.node_id, Trigger.MATCH, cause="test", profile="p")
    async with aiohttp.ClientSession() as http:
        assert (await next_action(http, site))["action"] == "reboot"


@pytest.mark.parametrize(("level", "reported"), [("full", "wiped"), ("metadata", "failed")])
async def test_retire_with_wipe_runs_through_the_agent(
    site: Site, level: str, reported: str
) -> None:
    site.lifecycle.fire(site.node_id, retire_trigger(level), cause="retire", detail={"wipe": level})
    url = f"{site.url}/agent/v1/wipe"
    async with aiohttp.ClientSession() as http:
        assert await next_action(http, site) == {"action": "wipe", "level": level, "interval": 2.0}
        status, body = await post(http, url, b'{"status": "done"}', site.token, "application/json")
        assert status == 400 and "wiped or failed" in body["error"]["message"]
        report = json.dumps({"status": reported, "disks": "vda sda", "message": "EIO on sda"})
        status, _ = await post(http, url, report.encode(), site.token, "application/json")
        assert status == 200
        node = Nodes(site.store).get(site.node_id)
        if reported == "wiped":
            assert node.state == "retired"
            assert (await next_action(http, site))["action"] == "poweroff"
        else:
            assert (node.state, node.reason) == ("failed", "disk wipe failed: EIO on sda")
            assert (await next_action(http, site))["action"] == "wait"
        # Reported twice: the node is no longer retiring.
        status, body = await post(http, url, report.encode(), site.token, "application/json")
        assert status == 409, body
    [moved] = [e for e in events(site, "transition") if e["cause"] in ("wiped", "wipe")]
    assert moved["detail"] == {"wipe": level, "disks": "vda sda"} | (
        {"reason": "disk wipe failed: EIO on sda"} if reported == "failed" else {}
    )


async def test_deploy_reports_need_image_deploy(site: Site) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"{site.url}/agent/v1/deploy"
        status, body = await post(http, url, b"[1]", site.token, "application/json")
        assert status == 400 and body["error"]["message"] == "deploy report must be a JSON object"
        written = b'{"status": "written"}'
        status, body = await post(http, url, written, site.token, "application/json")
        assert status == 404 and "not enabled" in body["error"]["message"]


AGENT = Path(ztpd.__file__).parent / "data" / "discovery" / "agent"
LINES, SHIPS = 400, 150


def agent_functions(*names: str) -> str:
    """The agent script's own definitions of ``names``, to run under busybox sh on the host."""
    text = AGENT.read_text()
    found = [
        re.search(rf"^{n}\(\) \{{(?: [^\n]*\}}|\n.*?^\}})\n", text, re.M | re.S) for n in names
    ]
    assert all(found), names
    return "".join(m.group(0) for m in found if m)


@pytest.mark.skipif(not shutil.which("busybox"), reason="busybox (busybox-static) is not installed")
async def test_the_agent_ships_its_log_from_two_processes_without_losing_a_byte(
    site: Site, tmp_path: Path
) -> None:
    # The agent's keepalive loop (a subshell) and its main line both ship the console log, at
    # times at once, while the log grows; ztpd must store the whole log, each byte once. Run
    # with the agent's own functions under busybox sh, against the real endpoint.
    run, log = tmp_path / "run", tmp_path / "run" / "console.log"
    script = tmp_path / "ship.sh"
    script.write_text(
        f"set -u\nRUN={run} LOG={log} URL={site.url} TOKEN={site.token} BOOT=b1\nmkdir -p $RUN\n"
        + agent_functions("say", "api", "ship_log")
        + "ships() { i=0; while [ $i -lt $1 ]; do ship_log; i=$((i + 1)); done; }\n"
        "case $1 in\n"
        f"write) i=0; while [ $i -lt {LINES} ]; do\n"
        '    say "line $i of the log" >>$LOG; usleep 2000; i=$((i + 1))\n'
        "  done ;;\n"
        f"ship) (ships {SHIPS}) & ships {SHIPS}; wait ;;\n"
        "esac\n"
    )

    async def sh(what: str) -> None:
        proc = await asyncio.create_subprocess_exec("busybox", "sh", str(script), what)
        assert await asyncio.wait_for(proc.wait(), 120) == 0, what

    await asyncio.gather(sh("write"), sh("ship"))
    await sh("ship")  # what is left
    url = f"{site.url}/api/v1/nodes/{site.node_id}/agent-log"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        stored = (await r.json())["text"]
    text = log.read_text()
    assert text.count("\n") == LINES
    assert stored == text
