"""Boot delivery over HTTP, driven by curl against a real ztpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from tests.boot.conftest import KERNEL, TEMPLATES, Env
from ztpd.errors import SourceError
from ztpd.store import Events, Nodes

GOLDEN = Path(__file__).parent / "golden"
MAC = "52:54:00:12:34:56"
UUID = "8c1e3c5e-0a3b-4c1e-9a43-0c5b6b0a1f20"


async def curl(*args: str) -> tuple[int, bytes, str]:
    """(status, body, response headers) of one curl run."""
    curl_bin = shutil.which("curl")
    if curl_bin is None:
        pytest.skip("needs curl: apt-get install curl")
    proc = await asyncio.create_subprocess_exec(
        curl_bin,
        "-sS",
        "--max-time",
        "20",
        "-D",
        "/dev/stderr",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, headers = await proc.communicate()
    body, _, code = out.rpartition(b"\n")
    return int(code), body, headers.decode(errors="replace")


def neutral(text: str, base_url: str) -> str:
    """The script with the per-run parts (URL, token) replaced by placeholders."""
    text = text.replace(base_url, "{base_url}")
    return re.sub(r"ztpd\.token=\S+", "ztpd.token=<token>", text)


def second_stage(env: Env, platform: str = "pcbios", mac: str = MAC, **extra: str) -> str:
    query = {
        "mac": mac,
        "bootif": mac,
        "uuid": UUID,
        "serial": "SN123",
        "manufacturer": "QEMU",
        "product": "Standard PC (i440FX + PIIX, 1996)",
        "platform": platform,
        "buildarch": "x86_64" if platform == "efi" else "i386",
        **extra,
    }
    return env.url + "/ipxe?" + urlencode(query, quote_via=quote)


def set_state(env: Env, state: str, **columns: str | None) -> int:
    """Test set-up: put the node straight into ``state`` (the lifecycle has its own tests)."""
    node = Nodes(env.store).by_mac(MAC)
    assert node is not None
    sets = ", ".join(["state = ?"] + [f"{k} = ?" for k in columns])
    with env.store.transaction() as conn:
        conn.execute(f"UPDATE nodes SET {sets} WHERE id = ?", (state, *columns.values(), node.id))
    return node.id


def boot_events(env: Env, node_id: int) -> list[dict[str, object]]:
    return [e.detail for e in Events(env.store).list(node_id=node_id) if e.kind == "boot"]


async def test_first_stage(env: Env) -> None:
    status, body, headers = await curl(env.url + "/boot.ipxe")
    assert status == 200 and "text/plain" in headers
    assert neutral(body.decode(), env.url) == (GOLDEN / "boot.ipxe").read_text()


async def test_unknown_machine_gets_discovery_and_starts_inspection(env: Env) -> None:
    status, body, _ = await curl(second_stage(env))
    assert status == 200
    assert neutral(body.decode(), env.url) == (GOLDEN / "discovery.ipxe").read_text()
    node = Nodes(env.store).by_mac(MAC)
    assert node is not None and node.state == "inspecting"
    assert node.uuid == UUID and node.serial == "SN123"
    assert node.facts["boot"]["product"] == "Standard PC (i440FX + PIIX, 1996)"
    [event] = boot_events(env, node.id)
    assert event["served"] == "discovery.ipxe.j2" and event["state"] == "discovered"
    # The token in the script is a working agent token for this node.
    token = re.search(rb"ztpd\.token=(\S+)", body)
    assert token is not None
    from ztpd.tokens import Tokens

    assert Tokens(env.store).verify(token.group(1).decode(), "agent") == node.id
    # The same machine seen by UUID alone is the same node; the old token stopped working.
    status, body2, _ = await curl(env.url + f"/ipxe?uuid={UUID}&platform=efi")
    assert status == 200 and b"node 1 " in body2
    assert Nodes(env.store).list() == [Nodes(env.store).get(node.id)]
    from ztpd.errors import Forbidden

    with pytest.raises(Forbidden):
        Tokens(env.store).verify(token.group(1).decode(), "agent")


STATES = [
    ("inspecting", "pcbios", "discovery-inspecting.ipxe"),
    ("unmatched", "efi", "discovery-unmatched.ipxe"),
    ("matched", "pcbios", "install-unavailable.ipxe"),
    ("deploying", "pcbios", "local-deploying-pcbios.ipxe"),
    ("deployed", "pcbios", "local-deployed-pcbios.ipxe"),
    ("deployed", "efi", "local-deployed-efi.ipxe"),
    ("configuring", "efi", "local-configuring-efi.ipxe"),
    ("ready", "pcbios", "local-ready-pcbios.ipxe"),
    ("failed", "pcbios", "failed-pcbios.ipxe"),
    ("retired", "efi", "retired-efi.ipxe"),
]


@pytest.mark.parametrize(("state", "platform", "expected"), STATES)
async def test_second_stage_per_state(
    env: Env, template_dir: Path, state: str, platform: str, expected: str
) -> None:
    # Without the provisioning issue's install templates: the "not available yet" path.
    shutil.rmtree(template_dir / "install", ignore_errors=True)
    env.templates.load()
    await curl(second_stage(env))  # creates the node
    node_id = set_state(
        env, state, profile="edge", failed_from="inspecting", reason="timed out in inspecting"
    )
    env.methods["edge"] = "preseed"  # no install/preseed.ipxe.j2 yet: "not available"
    status, body, _ = await curl(second_stage(env, platform))
    assert status == 200
    assert neutral(body.decode(), env.url) == (GOLDEN / expected).read_text()
    after = Nodes(env.store).get(node_id).state
    # Discovery of an unmatched node inspects again; nothing else moves on a PXE boot, and
    # above all a deployed node is never reinstalled.
    assert after == ("inspecting" if state == "unmatched" else state)
    last = boot_events(env, node_id)[-1]
    assert last["status"] == 200 and last["platform"] == platform
    if state == "matched":
        assert last["reason"] == "install method preseed is not available yet"


@pytest.fixture
def template_dir(tmp_path: Path) -> Path:
    """A copy of boot-templates/ that a test may add to or break."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    return copy


async def test_install_template_of_the_method_is_rendered(env: Env, template_dir: Path) -> None:
    (template_dir / "install").mkdir(exist_ok=True)
    (template_dir / "install" / "testmethod.ipxe.j2").write_text(
        "#!ipxe\necho install {{ node.id }} with {{ method }} token={{ token }}\n"
    )
    env.templates.load()
    await curl(second_stage(env))
    node_id = set_state(env, "matched", profile="edge")
    env.methods["edge"] = "testmethod"
    status, body, _ = await curl(second_stage(env))
    assert status == 200
    assert re.fullmatch(rb"#!ipxe\necho install 1 with testmethod token=\S+\n", body)
    assert Nodes(env.store).get(node_id).state == "deploying"


async def test_render_failure_is_500_with_echo_and_event(env: Env, template_dir: Path) -> None:
    (template_dir / "local.ipxe.j2").write_text("#!ipxe\necho {{ node.id }}\nexit {{ nope }}\n")
    env.templates.load()
    await curl(second_stage(env))
    node_id = set_state(env, "ready")
    status, body, _ = await curl(second_stage(env))
    assert status == 500
    assert body == b"#!ipxe\necho ztpd: cannot render local.ipxe.j2 for node 1\n"
    last = boot_events(env, node_id)[-1]
    assert last["status"] == 500 and last["template"] == "local.ipxe.j2"
    assert "'nope' is undefined" in str(last["error"])


async def test_reload_swaps_all_or_nothing(env: Env, template_dir: Path) -> None:
    (template_dir / "boot.ipxe.j2").write_text("#!ipxe\necho changed\n")
    env.templates.load()
    assert (await curl(env.url + "/boot.ipxe"))[1] == b"#!ipxe\necho changed\n"
    (template_dir / "boot.ipxe.j2").write_text("#!ipxe\n{% if %}\n")
    with pytest.raises(SourceError, match=r"boot\.ipxe\.j2:2"):
        env.templates.load()
    assert (await curl(env.url + "/boot.ipxe"))[1] == b"#!ipxe\necho changed\n"


# --- files -----------------------------------------------------------------------------------


async def test_kernel_get_head_range_etag(env: Env) -> None:
    await curl(second_stage(env))
    url = env.url + "/files/discovery/vmlinuz?node=1"
    status, body, headers = await curl(url)
    assert status == 200 and body == KERNEL
    assert re.search(r"(?im)^etag: ", headers) and re.search(r"(?im)^last-modified: ", headers)
    assert re.search(r"(?im)^accept-ranges: bytes", headers)
    status, body, headers = await curl("-I", url)  # curl prints HEAD's headers as the body
    assert status == 200 and KERNEL[:100] not in body
    assert f"Content-Length: {len(KERNEL)}" in headers
    status, body, headers = await curl("-r", "100-199", url)
    assert status == 206 and body == KERNEL[100:200]
    assert f"Content-Range: bytes 100-199/{len(KERNEL)}" in headers
    status, body, _ = await curl("-r", f"{len(KERNEL) - 10}-", url)  # resume the tail
    assert status == 206 and body == KERNEL[-10:]
    status, _, headers = await curl("-r", f"{len(KERNEL) + 5}-{len(KERNEL) + 10}", url)
    assert status == 416
    etag = re.search(r"(?im)^etag: (\S+)", headers)
    etag = etag or re.search(r"(?im)^etag: (\S+)", (await curl(url))[2])
    assert etag is not None
    status, body, _ = await curl("-H", f"If-None-Match: {etag.group(1)}", url)
    assert status == 304 and body == b""
    served = [e for e in boot_events(env, 1) if e.get("served") == "discovery/vmlinuz"]
    assert len(served) >= 5 and {e["status"] for e in served} >= {200, 206, 304}


async def test_missing_file_is_404_and_an_event(env: Env) -> None:
    await curl(second_stage(env))
    status, body, _ = await curl(env.url + "/files/discovery/missing.img?node=1")
    assert status == 404 and body == b"no such file\n"
    last = boot_events(env, 1)[-1]
    assert last["status"] == 404 and last["asked"] == "GET /files/discovery/missing.img"


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret",
        "/files/discovery/../../secret",
        "/files/%2e%2e/secret",
        "/files/..%2fsecret",
        "/files/discovery%2f..%2f..%2fsecret",
        "/files/%2fetc%2fpasswd",
        "/files/escape",
        "/files/discovery",
        "/files/a%00b",
    ],
)
async def test_file_traversal_refused(env: Env, path: str) -> None:
    status, body, _ = await curl("--path-as-is", env.url + path)
    assert 400 <= status < 500, (status, body)
    assert b"not for clients" not in body and b"root:" not in body


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "mac=zz",
        "mac=00:00:00:00:00:00&uuid=00000000-0000-0000-0000-000000000000&serial=0",
        "%%%=&&&=%zz&mac",
        f"mac={MAC}&platform=amiga",
        f"mac={MAC}&buildarch=x86%20_64;reboot",
        f"mac={MAC}&product=" + "x" * 500,
        f"mac={MAC}&serial=a%0aimgexec%20evil",
    ],
)
async def test_garbage_second_stage_queries_are_400(env: Env, query: str) -> None:
    status, body, _ = await curl(env.url + "/ipxe?" + query)
    assert status == 400 and body.startswith(b"#!ipxe\necho ztpd: bad boot request: ")
    assert body.count(b"\n") == 2  # one echo line, whatever the input was


async def test_huge_headers_rejected_and_server_keeps_serving(env: Env) -> None:
    status, _, _ = await curl("-H", "X-Junk: " + "a" * 20000, env.url + "/boot.ipxe")
    assert status in (400, 431)
    status, _, _ = await curl(env.url + "/ipxe?" + "a=" + "b" * 20000)
    assert status in (400, 414)
    status, _, _ = await curl(env.url + "/boot.ipxe")
    assert status == 200


async def test_slow_client_does_not_hold_up_others(env: Env) -> None:
    host, port = env.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        await writer.drain()
        for _ in range(3):
            status, _, _ = await curl(env.url + "/boot.ipxe")
            assert status == 200
    finally:
        writer.close()
        await writer.wait_closed()
