"""Install tokens outlive a slow installer: each use renews them for ``install.token_ttl``, so
an install that takes longer than the boot token's lifetime still calls back, while a token
nobody uses for that long still expires. Real loopback server, real store, a fake clock."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from ztpd.config import BootConfig, HttpConfig, InstallConfig
from ztpd.errors import Forbidden
from ztpd.http.install import Install, add_install_routes
from ztpd.http.server import HttpService, make_app
from ztpd.identity import Identity
from ztpd.install.backend import StoreInstallBackend
from ztpd.install.render import Renderer
from ztpd.lifecycle import Lifecycle, Trigger
from ztpd.store import Nodes, Store
from ztpd.tokens import Tokens

from ..boot.conftest import FakeClock, free_tcp_port
from .conftest import MIRRORS, TEMPLATES, example_os, inventory
from .test_endpoints import HOST_KEY

HOUR = 3600.0


def test_renew_extends_a_valid_token_and_never_shortens_one(tmp_path: Path) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "ztpd.db", clock=clock)
    node = Nodes(store).observe(Identity.of(["52:54:00:00:01:01"], None, None), cause="test")
    tokens = Tokens(store)
    token = tokens.issue(node.id, "install", HOUR)
    clock.now += HOUR - 1
    assert tokens.verify(token, "install", renew=2 * HOUR) == node.id
    assert tokens.verify(token, "install", renew=HOUR / 2) == node.id  # does not shorten it
    clock.now += 2 * HOUR - 1  # past the issued expiry, inside the renewal
    assert tokens.verify(token, "install") == node.id
    clock.now += 1
    with pytest.raises(Forbidden, match="expired"):
        tokens.verify(token, "install", renew=2 * HOUR)  # an expired token stays expired
    store.close()


async def test_a_slow_install_still_calls_back_and_a_silent_one_loses_its_token(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    store = Store(tmp_path / "ztpd.db", clock=clock)
    # Deadlines are swept by a watcher this test does not run: only the tokens expire here.
    lifecycle = Lifecycle(store, {"inspecting": 900, "deploying": 24 * HOUR, "configuring": HOUR})
    tokens = Tokens(store)
    os_ = example_os("kubeedge-edge", "preseed")
    nodes = Nodes(store)
    ids = []
    for mac in ("52:54:00:00:02:01", "52:54:00:00:02:02"):
        node = nodes.observe(Identity.of([mac], None, None), cause="test")
        nodes.update_facts(node.id, {}, hostname=f"edge-{node.id}")
        with store.transaction() as conn:  # what the agent reported: the disks to install on
            conn.execute(
                "INSERT INTO inventories (node_id, version, ts, source, data) "
                "VALUES (?, 1, ?, 'agent', ?)",
                (node.id, clock(), inventory("qemu-vm").model_dump_json()),
            )
        for trigger in (Trigger.INSPECT, Trigger.INSPECTED):
            lifecycle.fire(node.id, trigger, cause="test")
        lifecycle.fire(node.id, Trigger.MATCH, cause="test", profile="edge")
        lifecycle.fire(node.id, Trigger.DEPLOY, cause="test")
        ids.append(node.id)
    slow, silent = ids
    # Issued as the boot script issues it: with the (short) boot token lifetime.
    boot_ttl = BootConfig().token_ttl
    base = {n: f"/install/{n}/{tokens.issue(n, 'install', boot_ttl)}/" for n in ids}
    install_ttl = InstallConfig().token_ttl
    assert install_ttl > boot_ttl

    http = HttpConfig(listen=["127.0.0.1"], port=free_tcp_port())
    app = make_app(http)
    backend = StoreInstallBackend(lifecycle, tokens, {"edge": os_}.get, install_ttl)
    add_install_routes(app, Install(http.base_url, Renderer(TEMPLATES, MIRRORS), backend))
    async with HttpService(http, app), aiohttp.ClientSession(http.base_url) as session:

        async def status(method: str, path: str, **kw: object) -> int:
            async with session.request(method, path, **kw) as r:  # type: ignore[arg-type]
                return r.status

        started = clock.now
        for n in ids:  # both installers start and fetch their answer file
            assert await status("GET", base[n] + "preseed.cfg") == 200
        # The slow one reports progress now and then, each time within install.token_ttl.
        for _ in range(3):
            clock.now += install_ttl - 60
            assert await status("POST", base[slow] + "progress", json={"message": "x"}) == 200
        assert clock.now - started > 2 * boot_ttl  # long past the boot token's lifetime
        assert await status("POST", base[slow] + "finished") == 200
        form = {"pub_key_ed25519": f"{HOST_KEY} root@edge"}
        assert await status("POST", base[slow] + "firstboot", data=form) == 200
        assert nodes.get(slow).state == "deployed"
        # The other one went silent for longer than install.token_ttl: its token expired.
        assert await status("POST", base[silent] + "finished") == 403
        assert nodes.get(silent).state == "deploying"
    store.close()
