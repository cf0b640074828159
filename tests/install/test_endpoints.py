"""The install endpoints on a real loopback server over a real store: the boot chain hands out
the node's install URL, the files need its token, callbacks drive the lifecycle, and neither
the token nor a password hash reaches a log line or an event."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from ztpd.config import BootConfig, HttpConfig, InstallPhases
from ztpd.http.boot import Boot, BootTemplates, add_boot_routes
from ztpd.http.boot_store import StoreBootBackend
from ztpd.http.install import Install, add_install_routes
from ztpd.http.server import HttpService, make_app
from ztpd.identity import Identity
from ztpd.install.backend import StoreInstallBackend
from ztpd.install.render import Renderer
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.profiles.model import Os
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

from ..boot.conftest import FakeClock, free_tcp_port
from .conftest import MIRRORS, TEMPLATES, example_os, inventory

HASH = "$6$rounds=4096$saltsalt$Secret.hash.never.in.logs"
# Short phases, so the tests move the clock past them (the defaults are tens of minutes).
PHASES = InstallPhases(image_write=120, installer=600, first_boot=300)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxI0f1oYH2kq8lJtr7sGvJ3Uyq9eAbtJ8d6mzTd8Y1Q"


@dataclass
class Env:
    url: str
    store: Store
    lifecycle: Lifecycle
    clock: FakeClock
    profiles: dict[str, Os]
    http: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.url + path) as r:
            return r.status, await r.text()

    async def post(self, path: str, **kw: object) -> tuple[int, str]:
        async with self.http.post(self.url + path, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.text()

    def node(self, node_id: int) -> dict[str, object]:
        return Nodes(self.store).get(node_id).to_dict()

    def events(self, node_id: int | None, kind: str = "install") -> list[dict[str, object]]:
        rows = self.store.query(
            "SELECT cause, detail, to_state FROM events "
            "WHERE node_id IS ? AND kind = ? ORDER BY id",
            (node_id, kind),
        )
        return [{**r, "detail": json.loads(r["detail"])} for r in rows]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    clock = FakeClock()
    store = Store(tmp_path / "ztpd.db", clock=clock)
    lifecycle = Lifecycle(store, {"inspecting": 900, "deploying": 3600, "configuring": 3600})
    tokens = Tokens(store)
    profiles: dict[str, Os] = {}

    def method(name: str) -> str | None:
        return profiles[name].method if name in profiles else None

    http = HttpConfig(listen=["127.0.0.1"], port=free_tcp_port())
    app = make_app(http)
    boot = Boot(
        BootConfig(),
        http.base_url,
        BootTemplates(TEMPLATES),
        StoreBootBackend(lifecycle, tokens, method),
    )
    add_boot_routes(app, boot, tmp_path)
    backend = StoreInstallBackend(lifecycle, tokens, profiles.get, phases=PHASES)
    add_install_routes(app, Install(http.base_url, Renderer(TEMPLATES, MIRRORS), backend))
    async with HttpService(http, app), aiohttp.ClientSession() as session:
        yield Env(http.base_url, store, lifecycle, clock, profiles, session)
    store.close()


def matched_node(env: Env, mac: str, profile: str, os_: Os) -> int:
    """A node that was inspected (the qemu-vm fixture) and matched ``profile``."""
    env.profiles[profile] = os_
    nodes = Nodes(env.store)
    node = nodes.observe(Identity.of([mac], None, None), cause="test")
    data = inventory("qemu-vm").model_dump(mode="json")
    with env.store.transaction() as conn:
        conn.execute(
            "INSERT INTO inventories (node_id, version, ts, source, data) VALUES (?, 1, ?, ?, ?)",
            (node.id, env.clock(), "agent", json.dumps(data)),
        )
    nodes.update_facts(node.id, {}, hostname=f"edge-{node.id}")
    for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
        env.lifecycle.fire(node.id, trigger, cause="test")
    env.lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile=profile)
    return node.id


def with_password(os_: Os) -> Os:
    users = [u.model_copy(update={"password_hash": HASH}) for u in os_.users]
    return os_.model_copy(update={"users": users})


async def pxe(env: Env, mac: str) -> str:
    """What a PXE boot of ``mac`` gets: for a matched node, the chain to its install URL."""
    status, script = await env.get(f"/ipxe?mac={mac}&platform=efi&buildarch=x86_64")
    assert status == 200, script
    found = re.search(
        r"chain --autofree (http://\S+/install/\d+/[A-Za-z0-9_-]+/)boot\.ipxe", script
    )
    assert found, script
    return found.group(1).removeprefix(env.url)


async def test_autoinstall_from_pxe_to_deployed(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mac = "52:54:00:12:34:56"
    node_id = matched_node(
        env, mac, "edge", with_password(example_os("kubeedge-edge", "autoinstall"))
    )
    base = await pxe(env, mac)
    token = base.split("/")[-2]
    assert env.node(node_id)["state"] == "deploying"

    status, script = await env.get(base + "boot.ipxe")
    assert status == 200 and f"ds=nocloud-net;s={env.url}{base} " in script
    status, user_data = await env.get(base + "user-data")
    assert status == 200 and HASH in user_data and 'macaddress: "52:54:00:12:34:56"' in user_data
    for name in ("meta-data", "vendor-data"):
        assert (await env.get(base + name))[0] == 200
    assert (await env.get(base + "ks.cfg"))[0] == 404  # not a file of this method

    # subiquity's webhook reporter: many events, only top-level stage ends become events.
    for event in (
        {"event_type": "start", "name": "subiquity/Install", "description": "installing"},
        {"event_type": "finish", "name": "subiquity/Install/x/y", "result": "SUCCESS"},
        {
            "event_type": "finish",
            "name": "subiquity/Install",
            "description": "done",
            "result": "SUCCESS",
        },
    ):
        assert (await env.post(base + "progress", json=event))[0] == 200
    progress = env.node(node_id)["facts"]["install_progress"]  # type: ignore[index]
    assert progress["stage"] == "subiquity/Install" and progress["result"] == "SUCCESS"
    assert (await env.post(base + "finished"))[0] == 200
    assert env.node(node_id)["state"] == "deploying"  # only the installed system's call counts

    # cloud-init's phone_home posts a form; curl is what post.sh uses, so use it here too.
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-fsS",
        "--data-urlencode",
        f"pub_key_ed25519={HOST_KEY} root@edge",
        "--data-urlencode",
        "hostname=edge-1",
        env.url + base + "firstboot",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    node = env.node(node_id)
    assert node["state"] == "deployed"
    assert node["facts"]["ssh_host_keys"] == [HOST_KEY]  # type: ignore[index]

    # The token is spent: the files (and the hash in them) are gone with it.
    assert (await env.get(base + "user-data"))[0] == 403
    causes = [e["cause"] for e in env.events(node_id)]
    assert causes[:4] == ["served"] * 4 and "progress" in causes and causes[-1] == "forbidden"
    everything = caplog.text + json.dumps(env.events(node_id)) + json.dumps(env.events(None))
    everything += json.dumps(env.events(node_id, "transition")) + json.dumps(
        env.events(node_id, "boot")
    )
    assert token not in everything and HASH not in everything


async def test_wrong_expired_and_cross_node_tokens_are_403_with_events(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a = matched_node(
        env, "52:54:00:00:00:0a", "edge", with_password(example_os("kubeedge-edge", "preseed"))
    )
    b = matched_node(
        env, "52:54:00:00:00:0b", "edge", with_password(example_os("kubeedge-edge", "preseed"))
    )
    base_a, base_b = await pxe(env, "52:54:00:00:00:0a"), await pxe(env, "52:54:00:00:00:0b")
    token_a, token_b = base_a.split("/")[-2], base_b.split("/")[-2]
    assert (await env.get(base_a + "preseed.cfg"))[0] == 200

    cases = {
        "wrong": (f"/install/{a}/{'x' * 43}/preseed.cfg", a, "invalid token"),
        "none": (f"/install/{a}//preseed.cfg", None, None),
        "cross-node": (f"/install/{b}/{token_a}/preseed.cfg", b, "another node"),
        "no-such-node": (f"/install/999/{token_a}/preseed.cfg", None, "no such node"),
        "callback": (f"/install/{b}/{token_a}/finished", b, "another node"),
    }
    for what, (path, owner, reason) in cases.items():
        send = env.post if path.endswith("finished") else env.get
        status, body = await send(path)
        assert status in (403, 404), what
        assert HASH not in body and token_a not in body, what
        if reason is not None:
            assert status == 403, what
            last = env.events(owner)[-1]
            assert last["cause"] == "forbidden" and reason in last["detail"]["reason"], what
    env.clock.now += 3601  # the boot token's ttl
    status, body = await env.get(base_b + "preseed.cfg")
    assert status == 403 and "expired" in body
    assert env.events(b)[-1]["detail"]["reason"] == "expired token for install"
    assert env.node(a)["state"] == env.node(b)["state"] == "deploying"  # refusals move nothing
    everything = caplog.text + json.dumps([env.events(n) for n in (a, b, None)])
    for secret in (token_a, token_b, HASH):
        assert secret not in everything


async def test_callbacks_for_a_node_that_is_not_deploying_are_409(env: Env) -> None:
    node_id = matched_node(
        env, "52:54:00:00:00:0c", "edge", example_os("kubeedge-edge", "kickstart")
    )
    token = Tokens(env.store).issue(node_id, "install", 600)  # a token, but no install started
    base = f"/install/{node_id}/{token}/"
    for kind in ("progress", "finished", "failed", "firstboot"):
        status, body = await env.post(base + kind, data={"message": "x"})
        assert status == 409 and "matched, not deploying" in body, kind
    assert (await env.get(base + "ks.cfg"))[0] == 409
    assert [e["cause"] for e in env.events(node_id)] == ["conflict"] * 5
    assert env.node(node_id)["state"] == "matched"


async def test_installer_failure_fails_the_node_with_its_message(env: Env) -> None:
    node_id = matched_node(
        env, "52:54:00:00:00:0d", "edge", example_os("kubeedge-edge", "kickstart")
    )
    base = await pxe(env, "52:54:00:00:00:0d")
    log_tail = "INFO anaconda: starting\nERROR anaconda: no space left on device\n"
    status, _ = await env.post(
        base + "failed", data=log_tail.encode(), headers={"Content-Type": "text/plain"}
    )
    assert status == 200
    node = env.node(node_id)
    assert node["state"] == "failed" and node["failed_from"] == "deploying"
    assert node["reason"] == "installer failed: ERROR anaconda: no space left on device"
    assert (await env.post(base + "failed", data=b"again"))[0] == 409


async def test_firstboot_needs_a_host_key(env: Env) -> None:
    node_id = matched_node(env, "52:54:00:00:00:0e", "edge", example_os("kubeedge-edge", "preseed"))
    base = await pxe(env, "52:54:00:00:00:0e")
    assert (await env.post(base + "firstboot", data={"hostname": "x"}))[0] == 400
    assert (await env.post(base + "firstboot", data={"pub_key_rsa": "not a key"}))[0] == 400
    # phone_home's "N/A" for a key type the image does not make is no key, not a bad one.
    status, text = await env.post(base + "firstboot", data={"pub_key_rsa": "N/A"})
    assert status == 400 and "no SSH host key" in text
    status, _ = await env.post(base + "firstboot", json={"ssh_host_keys": [HOST_KEY]})
    assert status == 200 and env.node(node_id)["state"] == "deployed"


async def test_a_file_that_cannot_be_rendered_is_not_served_and_fails_the_node(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # The qemu-vm's only disk is 20 GB: a profile wanting 1 TB has nowhere to install.
    os_ = Os.model_validate(
        {
            **example_os("kubeedge-edge", "autoinstall").model_dump(),
            "root_disk": {"min_size": "1TB"},
        }
    )
    node_id = matched_node(env, "52:54:00:00:00:0f", "edge", os_)
    base = await pxe(env, "52:54:00:00:00:0f")
    status, body = await env.get(base + "user-data")
    assert status == 500 and "autoinstall" not in body
    node = env.node(node_id)
    assert node["state"] == "failed"
    assert "cannot render user-data: no disk fits os.root_disk" in str(node["reason"])
    assert base.split("/")[-2] not in caplog.text


async def test_other_paths_and_methods_under_install_never_log_the_token(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-token-value-that-must-not-be-logged"
    for method, path in (
        ("GET", f"/install/1/{secret}/a/b"),
        ("GET", f"/install/1/{secret}"),
        ("DELETE", f"/install/1/{secret}/user-data"),
        ("GET", f"/install/1/{secret}/finished"),
    ):
        async with env.http.request(method, env.url + path) as r:
            assert r.status in (403, 404, 405), path
    assert secret not in caplog.text


def test_catalog_os_follows_the_serving_profiles() -> None:
    from ztpd.install.backend import catalog_os
    from ztpd.profiles import ProfileCatalog

    from .conftest import ROOT

    catalog = ProfileCatalog(ROOT / "profiles")
    catalog.reload()
    os_of = catalog_os(catalog)
    k3s = os_of("k3s-server")
    assert k3s is not None and k3s.method == "image"
    assert os_of("hold-unknown") is None and os_of("no-such-profile") is None


def deadline(env: Env, node_id: int) -> tuple[float, str | None]:
    row = env.store.query_one(
        "SELECT deadline, deadline_reason FROM nodes WHERE id = ?", (node_id,)
    )
    assert row is not None and row["deadline"] is not None
    return float(row["deadline"]), row["deadline_reason"]


async def test_installer_progress_moves_its_deadline_and_the_first_boot_has_its_own(
    env: Env,
) -> None:
    node_id = matched_node(env, "52:54:00:00:01:01", "edge", example_os("kubeedge-edge", "preseed"))
    base = await pxe(env, "52:54:00:00:01:01")
    started = env.clock.now
    silent = "installer: no progress report for 600 s"
    assert deadline(env, node_id) == (started + 600, silent)
    assert env.node(node_id)["facts"]["deploy_phase"]["name"] == "installer"  # type: ignore[index]

    # Each report moves the deadline to the installer's limit from then, past the first one.
    for _ in range(3):
        env.clock.now += 500
        assert (await env.post(base + "progress", data={"message": "installing"}))[0] == 200
        assert deadline(env, node_id) == (env.clock.now + 600, silent)
        assert env.lifecycle.expire_due() == []
    assert env.clock.now > started + 600 and env.node(node_id)["state"] == "deploying"

    # "finished": the first boot's own deadline, which late reports do not move.
    assert (await env.post(base + "finished"))[0] == 200
    finished = env.clock.now
    no_call = "no first-boot callback within 300 s after the installer finished"
    assert deadline(env, node_id) == (finished + 300, no_call)
    env.clock.now += 200
    assert (await env.post(base + "progress", json={"event_type": "finish", "name": "x"}))[0] == 200
    assert deadline(env, node_id) == (finished + 300, no_call)
    env.clock.now = finished + 301
    assert len(env.lifecycle.expire_due()) == 1
    node = env.node(node_id)
    assert (node["state"], node["failed_from"], node["reason"]) == ("failed", "deploying", no_call)
    transition = env.events(node_id, "transition")[-1]
    detail = transition["detail"]
    assert transition["cause"] == "timeout" and isinstance(detail, dict)
    assert detail["reason"] == no_call


async def test_a_silent_installer_fails_when_its_phase_runs_out(env: Env) -> None:
    node_id = matched_node(env, "52:54:00:00:01:02", "edge", example_os("kubeedge-edge", "preseed"))
    base = await pxe(env, "52:54:00:00:01:02")
    assert (await env.get(base + "preseed.cfg"))[0] == 200  # a fetch is not progress
    env.clock.now += 599
    assert env.lifecycle.expire_due() == []
    env.clock.now += 1
    env.lifecycle.expire_due()
    node = env.node(node_id)
    assert (node["state"], node["reason"]) == ("failed", "installer: no progress report for 600 s")


async def test_the_deploying_timeout_caps_every_phase(env: Env) -> None:
    node_id = matched_node(env, "52:54:00:00:01:03", "edge", example_os("kubeedge-edge", "preseed"))
    base = await pxe(env, "52:54:00:00:01:03")
    since = env.node(node_id)["state_since"]
    assert isinstance(since, float)
    env.clock.now += 3300  # lifecycle.timeouts.deploying is 3600 here
    assert (await env.post(base + "progress", data={"message": "still going"}))[0] == 200
    assert deadline(env, node_id) == (since + 3600, None)
    env.clock.now = since + 3600
    env.lifecycle.expire_due()
    node = env.node(node_id)
    assert (node["state"], node["reason"]) == ("failed", "timed out in deploying")
