"""Real DHCP peers against ztpd in namespaces: udhcpc, dhclient, dnsmasq, perfdhcp, a relay."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.dhcp.conftest import CLIENTS, FULL, Ztpd, client_script
from tests.netns import Lan, require, wait_for

pytestmark = pytest.mark.netns

# A client script that records each event and configures the address (nothing else: no
# resolv.conf, no routes, so the host is never touched).
HOOK = """#!/bin/sh
echo "$1$reason ip=$ip${new_ip_address} serverid=$serverid${new_dhcp_server_identifier} \
reason=$reason" >> {log}
case "$1$reason" in
  bound|renew|BOUND|RENEW|REBOOT|REBIND) ip addr flush dev "$interface"; \
    ip addr add "$ip$new_ip_address/24" dev "$interface" ;;
esac
exit 0
"""


def hook(tmp_path: Path, name: str) -> tuple[Path, Path]:
    log = tmp_path / f"{name}.events"
    log.touch()
    script = tmp_path / f"{name}.sh"
    script.write_text(HOOK.replace("{log}", str(log)))
    script.chmod(0o755)
    return script, log


def lease_rows(z: Ztpd, state: str | None = None) -> list[dict[str, object]]:
    rows = z.db("SELECT ip, mac, state FROM leases ORDER BY ip")
    return [r for r in rows if state is None or r["state"] == state]


def test_udhcpc_obtains_renews_and_releases(full_lan: tuple[Lan, Ztpd], tmp_path: Path) -> None:
    require("udhcpc")
    lan, z = full_lan
    cli = lan.host("cli", mac="02:00:00:00:00:11")
    script, events = hook(tmp_path, "udhcpc")
    proc = cli.popen(["udhcpc", "-f", "-i", "eth0", "-s", str(script), "-t", "5", "-T", "1", "-R"])
    wait_for(lambda: "bound ip=10.9.0." in events.read_text(), "udhcpc to bind")
    ip = re.search(r"bound ip=(\S+)", events.read_text()).group(1)  # type: ignore[union-attr]
    assert {"ip": ip, "mac": "02:00:00:00:00:11", "state": "bound"} in lease_rows(z)
    proc.send_signal(signal.SIGUSR1)  # renew: a unicast REQUEST with ciaddr (RENEWING)
    wait_for(lambda: f"renew ip={ip}" in events.read_text(), "udhcpc to renew")
    cli.stop(proc)  # -R: release on exit
    wait_for(
        lambda: {"ip": ip, "mac": "02:00:00:00:00:11", "state": "released"} in lease_rows(z),
        "the lease to be released",
    )
    assert "dhcp ack" in z.text() and "release ip=" in z.text()


def test_dhclient_obtains_reboots_and_releases(full_lan: tuple[Lan, Ztpd], tmp_path: Path) -> None:
    require("dhclient")
    lan, z = full_lan
    cli = lan.host("dhc", mac="02:00:00:00:00:22")
    script, events = hook(tmp_path, "dhclient")
    leases, pid = tmp_path / "dhclient.leases", tmp_path / "dhclient.pid"
    base = ["dhclient", "-4", "-1", "-v", "-sf", str(script), "-lf", str(leases), "-pf", str(pid)]
    cli.run([*base, "eth0"])
    wait_for(lambda: "BOUND ip=10.9.0." in events.read_text(), "dhclient to bind")
    ip = re.search(r"BOUND ip=(\S+)", events.read_text()).group(1)  # type: ignore[union-attr]
    assert {"ip": ip, "mac": "02:00:00:00:00:22", "state": "bound"} in lease_rows(z)
    cli.run([*base, "-x", "eth0"])  # stop without releasing
    cli.run([*base, "eth0"])  # INIT-REBOOT: asks for its address from the lease file
    wait_for(lambda: f"REBOOT ip={ip}" in events.read_text(), "dhclient to reboot its lease")
    cli.run([*base, "-r", "eth0"])  # release (and stop the daemonised client)
    wait_for(
        lambda: {"ip": ip, "mac": "02:00:00:00:00:22", "state": "released"} in lease_rows(z),
        "the lease to be released",
    )


def test_second_client_never_gets_a_leased_address(lan: Lan, tmp_path: Path) -> None:
    require("udhcpc")
    server = lan.host("srv", "10.9.0.1/24")
    z = Ztpd(
        server,
        tmp_path,
        {
            "mode": "full",
            "interfaces": ["eth0"],
            "subnets": [
                {"subnet": "10.9.0.0/24", "pools": [{"start": "10.9.0.100", "end": "10.9.0.100"}]}
            ],
        },
    ).start()
    first, second = lan.host("c1"), lan.host("c2")
    r1 = first.run(
        ["udhcpc", "-n", "-q", "-i", "eth0", "-s", "/bin/true", "-t", "3", "-T", "1"], check=False
    )
    assert r1.returncode == 0, r1.stderr
    assert [r["state"] for r in lease_rows(z)] == ["bound"]
    # The only address is bound: the second client is offered nothing and asking for it by
    # name (INIT-REBOOT style) earns a NAK.
    r2 = second.run(
        [
            "udhcpc",
            "-n",
            "-q",
            "-i",
            "eth0",
            "-s",
            "/bin/true",
            "-t",
            "2",
            "-T",
            "1",
            "-r",
            "10.9.0.100",
        ],
        check=False,
    )
    assert r2.returncode != 0
    assert len({r["mac"] for r in lease_rows(z)}) == 1
    assert "no free address in 10.9.0.0/24" not in z.text() or r2.returncode != 0


def test_proxy_mode_beside_dnsmasq(lan: Lan, tmp_path: Path) -> None:
    require("dnsmasq", "udhcpc")
    ztpd_ns = lan.host("ztpd", "10.9.0.1/24")
    dns_ns = lan.host("dnsm", "10.9.0.2/24")
    client = lan.host("pxe", mac="02:00:00:00:00:33")
    dnsmasq = dns_ns.popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--dhcp-range=10.9.0.50,10.9.0.60,5m",
            "--interface=eth0",
            f"--dhcp-leasefile={tmp_path / 'dnsmasq.leases'}",
            "--log-dhcp",
        ]
    )
    z = Ztpd(ztpd_ns, tmp_path, {"mode": "proxy", "interfaces": ["eth0"]}).start()
    wait_for(lambda: dns_ns.run(["ss", "-uln"]).stdout.count(":67 ") >= 1, "dnsmasq on :67")
    assert dnsmasq.poll() is None

    replies = client_script(client, "probe", "eth0", "--pxe", "7")
    by_server = {r["server"]: r for r in replies}
    assert set(by_server) == {"10.9.0.1", "10.9.0.2"}, replies
    address, boot = by_server["10.9.0.2"], by_server["10.9.0.1"]
    assert address["yiaddr"].startswith("10.9.0.5") or address["yiaddr"] == "10.9.0.60"
    assert address["file"] == ""
    assert boot["yiaddr"] == "0.0.0.0"  # proxyDHCP never hands out addresses
    assert (boot["file"], boot["siaddr"], boot["vendor_class"]) == (
        "ipxe.efi",
        "10.9.0.1",
        "PXEClient",
    )

    # The boot server on port 4011, asked as a client holding dnsmasq's address would.
    [ack] = client_script(
        client, "pxe4011", "10.9.0.1", "eth0", address["yiaddr"], "02:00:00:00:00:33", "0"
    )
    assert (ack["type"], ack["file"], ack["sport"]) == (5, "undionly.kpxe", 4011)

    # iPXE (user class) gets the boot script URL in proxy mode too.
    ipxe = client_script(client, "probe", "eth0", "--pxe", "7", "--user-class", "iPXE")
    assert {r["server"]: r["file"] for r in ipxe}["10.9.0.1"] == "http://10.9.0.1:8080/boot.ipxe"

    # A plain client: dnsmasq answers, ztpd stays silent.
    plain = client_script(client, "probe", "eth0")
    assert [r["server"] for r in plain] == ["10.9.0.2"], plain
    # dnsmasq pings an address before its first offer of it: give udhcpc time.
    r = lan.host("plain").run(
        ["udhcpc", "-n", "-q", "-i", "eth0", "-s", "/bin/true", "-t", "4", "-T", "3"], check=False
    )
    assert r.returncode == 0, r.stderr
    assert "serving 10.9.0.2" in r.stderr or "10.9.0.2" in r.stderr
    node = z.db(
        "SELECT facts FROM nodes n JOIN node_macs m ON m.node_id = n.id "
        "WHERE m.mac = '02:00:00:00:00:33'"
    )
    assert json.loads(str(node[0]["facts"]))["dhcp"]["vendor_class"].startswith("PXEClient")


def test_relay_with_option_82(full_lan: tuple[Lan, Ztpd]) -> None:
    lan, z = full_lan
    z.ns.run(["ip", "route", "add", "10.20.0.0/24", "via", "10.9.0.254"])
    relay = lan.host("relay", "10.9.0.254/24", "10.20.0.1/32")
    [out] = client_script(
        relay,
        "relay",
        "10.9.0.1",
        "10.9.0.254",
        "10.20.0.1",
        "1",
        "--circuit-id",
        "sw1/port7",
        "--mac-base",
        "4096",
    )
    assert out["offer"]["yiaddr"].startswith("10.20.0."), out
    assert out["offer"]["has82"] and out["offer"]["giaddr"] == "10.20.0.1"
    assert out["ack"]["type"] == 5 and out["ack"]["yiaddr"] == out["offer"]["yiaddr"]
    facts = wait_for(
        lambda: z.db(
            "SELECT n.facts, n.ip FROM nodes n JOIN node_macs m ON m.node_id = n.id "
            "WHERE m.mac = ?",
            (out["mac"],),
        ),
        "the relayed client's node",
    )
    relay_facts = json.loads(str(facts[0]["facts"]))["dhcp"]["relay"]
    assert relay_facts["circuit_id"] == "sw1/port7"
    assert relay_facts["remote_id_hex"] == "aabbccddeeff"
    assert facts[0]["ip"] == out["ack"]["yiaddr"]


@pytest.mark.parametrize("how", ["--link-selection", "--subnet-selection"])
def test_relay_names_the_link_apart_from_giaddr(full_lan: tuple[Lan, Ztpd], how: str) -> None:
    """RFC 3527 (option 82.5) and RFC 3011 (option 118): the relay sits on 10.9.0.0/24 (its
    giaddr) but names 10.20.0.0/24 as the client's link; the address comes from the named
    subnet and the reply still goes to the relay."""
    lan, z = full_lan
    relay = lan.host("relay", "10.9.0.254/24")
    [out] = client_script(
        relay, "relay", "10.9.0.1", "10.9.0.254", "10.9.0.254", "1", how, "10.20.0.1"
    )
    assert out["offer"]["yiaddr"].startswith("10.20.0."), out
    assert out["offer"]["giaddr"] == "10.9.0.254" and out["offer"]["has82"] == (
        how == "--link-selection"
    )
    assert out["ack"]["type"] == 5 and out["ack"]["yiaddr"] == out["offer"]["yiaddr"]
    assert {"ip": out["ack"]["yiaddr"], "mac": out["mac"], "state": "bound"} in wait_for(
        lambda: lease_rows(z, "bound"), "the lease row"
    )


def test_no_ack_when_the_lease_commit_fails(lan: Lan, tmp_path: Path) -> None:
    """Every lease commit fails (fakes.BrokenBackend): offers still go out, no ACK ever does,
    each failure is logged and counted, and the server keeps answering."""
    z = Ztpd(
        lan.host("srv", "10.9.0.1/24"),
        tmp_path,
        FULL,
        args=("--broken-leases",),
    ).start()
    relay = lan.host("relay", "10.9.0.254/24")
    out = client_script(
        relay, "relay", "10.9.0.1", "10.9.0.254", "10.9.0.254", "3", "--timeout", "1"
    )
    assert [r["offer"]["type"] for r in out] == [2, 2, 2], out
    assert [r["ack"] for r in out] == [None, None, None], out
    wait_for(lambda: z.text().count("dhcp lease commit failed") == 3, "three logged failures")
    z.stop()
    counters = re.search(r"counters (\{.*\})", z.text())
    assert counters is not None, z.text()
    assert "'error.leases': 3" in counters.group(1) and "reply.ack" not in counters.group(1)


def test_perfdhcp_relay_mode_completes_exchanges(full_lan: tuple[Lan, Ztpd]) -> None:
    require("perfdhcp")
    lan, z = full_lan
    client = lan.host("perf", "10.9.0.3/24")
    r = client.run(
        [
            "perfdhcp",
            "-4",
            "-l",
            "10.9.0.3",
            "-r",
            "20",
            "-n",
            "40",
            "-R",
            "40",
            "-D",
            "10%",
            "-W",
            "2000000",
            "10.9.0.1",
        ],
        check=False,
        timeout=60,
    )
    sent = re.search(r"sent packets: (\d+)", r.stdout)
    assert sent is not None, r.stdout + r.stderr
    drops = [int(x) for x in re.findall(r"drops: (\d+)", r.stdout)]
    received = [int(x) for x in re.findall(r"received packets: (\d+)", r.stdout)]
    assert received and min(received) >= 36, r.stdout  # DO and RA, ≤10% dropped
    assert sum(drops) <= 8, r.stdout
    assert len(lease_rows(z, "bound")) >= 36


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill_9_never_hands_an_address_to_two_clients(lan: Lan, tmp_path: Path, sync: str) -> None:
    """With either dhcp.lease_sync, an ACKed lease survives ztpd being killed mid-storm."""
    z = Ztpd(lan.host("srv", "10.9.0.1/24"), tmp_path, {**FULL, "lease_sync": sync}).start()
    relay = lan.host("relay", "10.9.0.254/24")
    argv = [
        sys.executable,
        str(CLIENTS),
        "relay",
        "10.9.0.1",
        "10.9.0.254",
        "10.9.0.254",
        "40",
        "--timeout",
        "0.5",
    ]
    out = Path(z.state / "first.jsonl")
    with out.open("w") as f:
        first = relay.popen(argv, stdout=f)
    wait_for(lambda: out.read_text().count('"type": 5') >= 20, "20 ACKs before the crash")
    z.stop(signal.SIGKILL)
    relay.stop(first)
    acked = {
        json.loads(x)["ack"]["yiaddr"]: json.loads(x)["mac"]
        for x in out.read_text().splitlines()
        if '"ack": {' in x
    }
    z.start()
    second = client_script(relay, *argv[2:], "--mac-base", "100000")
    again = {r["ack"]["yiaddr"]: r["mac"] for r in second if r["ack"]}
    assert len(again) == 40  # the pool has 100 addresses; the first run took at most 40
    assert not set(acked) & set(again), "an address was handed to two clients"


def test_unicast_reply_to_a_client_without_address(full_lan: tuple[Lan, Ztpd]) -> None:
    """udhcpc (without -B) asks for unicast replies before it has an address: ztpd must send
    them as layer-2 frames to its MAC, as no ARP is possible yet (RFC 2131 §4.1)."""
    lan, z = full_lan
    cli = lan.host("l2", mac="02:00:00:00:00:44")
    r = cli.run(
        ["udhcpc", "-n", "-q", "-i", "eth0", "-s", "/bin/true", "-t", "3", "-T", "1"], check=False
    )
    assert r.returncode == 0, r.stderr
    assert {"ip": "10.9.0.100", "mac": "02:00:00:00:00:44", "state": "bound"} in lease_rows(z)
