"""The live event stream: live delivery, filters, and reconnection with Last-Event-ID."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Client
from tests.api.harness import VIEWER, Env, bearer
from tests.api.test_api import read_events, validate_stream
from ztpd.http.api import PREFIX
from ztpd.lifecycle import Trigger as T

STREAM = f"{PREFIX}/events/stream"


async def _open(client: Client, query: str = "", **headers: str) -> Any:
    resp = await client.get(f"{STREAM}{query}", headers={**bearer(VIEWER), **headers})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-cache"
    return resp


async def test_live_transition_arrives_with_its_node(client: Client, env: Env) -> None:
    resp = await _open(client)
    env.walk(3, T.RETRY)  # failed -> inspecting
    (ev,) = await read_events(resp, 1)
    validate_stream(ev)
    assert (ev["node_id"], ev["from_state"], ev["to_state"]) == (3, "failed", "inspecting")
    assert ev["node"]["state"] == "inspecting"
    assert ev["node"]["actions"] == ["retire"]
    resp.close()


async def test_reconnect_with_last_event_id_replays_only_what_was_missed(
    client: Client, env: Env
) -> None:
    resp = await _open(client)
    env.walk(3, T.RETRY)
    (seen,) = await read_events(resp, 1)
    resp.close()
    # While the client is away: two transitions and one boot event.
    env.walk(3, T.INSPECTED)
    env.store.add_event(node_id=3, kind="boot", cause="ipxe-script")
    env.walk(3, T.NO_MATCH)
    resp = await _open(client, **{"Last-Event-ID": str(seen["id"])})
    missed = await read_events(resp, 3)
    assert [e["id"] for e in missed] == list(range(seen["id"] + 1, seen["id"] + 4))
    assert [e["kind"] for e in missed] == ["transition", "boot", "transition"]
    # ... and then it goes on live, without repeating anything.
    env.walk(3, T.RETIRE)
    (live,) = await read_events(resp, 1)
    assert live["id"] == missed[-1]["id"] + 1
    assert live["to_state"] == "retired"
    resp.close()


async def test_after_parameter_and_filters(client: Client, env: Env) -> None:
    resp = await _open(client, "?after=0&node=52:54:00:00:00:04&kind=boot")
    (ev,) = await read_events(resp, 1)
    assert (ev["node_id"], ev["kind"], ev["cause"]) == (4, "boot", "ipxe-script")
    env.walk(3, T.RETRY)  # another node: filtered out
    env.store.add_event(node_id=4, kind="boot", cause="second")
    (ev,) = await read_events(resp, 1)
    assert ev["cause"] == "second"
    resp.close()


async def test_bad_last_event_id_is_400(client: Client) -> None:
    resp = await client.get(STREAM, headers={**bearer(VIEWER), "Last-Event-ID": "x1"})
    assert resp.status == 400
    resp = await client.get(STREAM)
    assert resp.status == 401
