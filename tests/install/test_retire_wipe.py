"""Retire applies the node's profile's ``os.wipe.on_retire`` unless the request names a wipe, and
its event says which policy applied and why: through the real API app (and the CLI) over a real
store, with the install backend keeping each matched node's policy as ztpd serve does."""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.api.harness import ADMIN, Env, bearer, build
from ztpd import cli
from ztpd.http.agent import AgentService
from ztpd.install.backend import StoreInstallBackend
from ztpd.lifecycle import Trigger as T
from ztpd.profiles.model import Os, Wipe
from ztpd.tokens import Tokens

Client = TestClient[Any, Any]

PROFILES: dict[str, Os] = {
    "shred": Os(method="image", image="deb", wipe=Wipe(on_retire="full")),
    "keep": Os(method="preseed", release="debian-12", wipe=Wipe(on_retire="none")),
    "plain": Os(method="image", image="deb"),  # the default: metadata
}


@pytest.fixture
async def site(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[Client]]
) -> tuple[Env, Client]:
    env = build(tmp_path)
    StoreInstallBackend(env.lifecycle, Tokens(env.store), PROFILES.get)
    return env, await aiohttp_client(env.app)


def matched(env: Env, mac: str, profile: str | None, *more: T) -> int:
    node = env.node(mac)
    if profile is None:
        env.walk(node, T.INSPECT, T.INSPECTED, T.NO_MATCH)
    else:
        env.walk(node, T.INSPECT, T.INSPECTED, T.MATCH, *more, profile=profile)
    return node


async def retire(client: Client, node: int, **body: Any) -> dict[str, Any]:
    url = f"/api/v1/nodes/{node}/actions/retire"
    async with client.post(url, json=body, headers=bearer(ADMIN)) as r:
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
    return answer


def detail(env: Env, event_id: int) -> dict[str, Any]:
    row = env.store.query_one("SELECT detail FROM events WHERE id = ?", (event_id,))
    assert row is not None
    found: dict[str, Any] = json.loads(row["detail"])
    return found


# (profile, wipe asked for) -> (state, wipe, which policy, part of why)
CASES: dict[tuple[str | None, str | None], tuple[str, str, str, str]] = {
    ("shred", None): ("retiring", "full", "profile", "profile shred has os.wipe.on_retire: full"),
    ("plain", None): ("retiring", "metadata", "profile", "os.wipe.on_retire: metadata"),
    ("keep", None): ("retired", "none", "profile", "profile keep has os.wipe.on_retire: none"),
    ("shred", "none"): ("retired", "none", "explicit", "asked for wipe none"),
    ("keep", "full"): ("retiring", "full", "explicit", "asked for wipe full"),
    (None, None): ("retired", "none", "default", "no profile installs an OS on this node"),
}


@pytest.mark.parametrize(("profile", "asked"), list(CASES))
async def test_retire_applies_the_profile_policy_unless_asked(
    site: tuple[Env, Client], profile: str | None, asked: str | None
) -> None:
    to_state, wipe, policy, why = CASES[(profile, asked)]
    env, client = site
    node = matched(env, "52:54:00:00:02:01", profile, T.DEPLOY, T.DEPLOYED)
    answer = await retire(client, node, **({"wipe": asked} if asked else {}))
    assert answer["to_state"] == to_state
    got = detail(env, answer["event_id"])
    assert (got["wipe"], got["wipe_policy"], got["by"]) == (wipe, policy, "ops")
    assert why in got["wipe_why"]
    if to_state == "retiring":  # the agent is told to wipe at the level that applied
        agent = AgentService(env.store, env.lifecycle, silence=60)
        assert agent.next_action(node)["action"] == "wipe"
        assert agent.wipe_level(node) == wipe


async def test_a_retiring_node_retired_again_stops_waiting_for_its_wipe(
    site: tuple[Env, Client],
) -> None:
    env, client = site
    node = matched(env, "52:54:00:00:02:02", "shred")
    assert (await retire(client, node))["to_state"] == "retiring"
    answer = await retire(client, node)
    assert answer["to_state"] == "retired"
    got = detail(env, answer["event_id"])
    assert (got["wipe"], got["wipe_policy"]) == ("none", "default")
    assert "already retiring" in got["wipe_why"]


async def test_the_cli_applies_the_policy_and_wipe_overrides_it(
    site: tuple[Env, Client], tmp_path: Path
) -> None:
    env, _ = site
    shred = matched(env, "52:54:00:00:02:03", "shred")
    keep = matched(env, "52:54:00:00:02:04", "keep")
    spared = matched(env, "52:54:00:00:02:05", "shred")
    for node, args, state in (
        (shred, [], "retiring"),
        (keep, [], "retired"),
        (spared, ["--wipe", "none"], "retired"),
    ):
        out, err = io.StringIO(), io.StringIO()
        argv = ["node", "retire", str(node), "--json", *args]
        assert cli.main(argv, env={"ZTPD_STATE_DIR": str(tmp_path)}, out=out, err=err) == 0
        assert json.loads(out.getvalue())["state"] == state, err.getvalue()
    row = env.store.query_one(
        "SELECT detail FROM events WHERE node_id = ? ORDER BY id DESC LIMIT 1", (shred,)
    )
    assert row is not None
    got = json.loads(row["detail"])
    assert (got["by"], got["wipe"], got["wipe_policy"]) == ("cli", "full", "profile")
