"""Handler decisions, table-driven, with no sockets and no store."""

from __future__ import annotations

import ipaddress

import pytest

from ztpd.config import DhcpConfig
from ztpd.dhcp import boot
from ztpd.dhcp.arch import ArchTable
from ztpd.dhcp.handlers import Arrival, FullHandler, Ignore, Interface, Outcome, ProxyHandler
from ztpd.dhcp.leases import BOUND, DECLINED, RELEASED, Lease, LeaseBook
from ztpd.dhcp.packet import PXE_PORT, Msg, Reply, Request
from ztpd.dhcp.service import RateLimiter, Route, route

TARGETS = boot.BootTargets(
    "http://10.0.0.1:8080/boot.ipxe",
    "http://10.0.0.1:8080/ipxe",
    None,
    ArchTable.with_overrides({}, {"uefi-x86_64": "snponly.efi"}),
)
IFACE = Interface("eth0", 2, b"\x02" * 6, "10.0.0.1", ipaddress.IPv4Network("10.0.0.0/24"))
AT = Arrival(IFACE, "0.0.0.0", 68)
CONFIG = DhcpConfig(
    mode="full",
    interfaces=["eth0"],
    subnets=[
        {
            "subnet": "10.0.0.0/24",
            "pools": [{"start": "10.0.0.10", "end": "10.0.0.11"}],
            "reservations": [{"mac": "02:00:00:00:00:99", "ip": "10.0.0.50", "hostname": "r1"}],
            "router": "10.0.0.1",
            "options": [{"code": 252, "text": "x"}],
        },
        {"subnet": "10.20.0.0/24", "pools": [{"start": "10.20.0.5", "end": "10.20.0.6"}]},
    ],
)
NOW = 1000.0


def req(mt: Msg = Msg.DISCOVER, mac: str = "02:00:00:00:00:01", **kw: object) -> Request:
    return Request(
        xid=1, mac=mac, message_type=mt, chaddr=bytes.fromhex(mac.replace(":", "")), **kw
    )  # type: ignore[arg-type]


def full() -> FullHandler:
    return FullHandler(CONFIG, TARGETS, LeaseBook(list(CONFIG.subnets)))


def pxe(arch: int, **kw: object) -> dict[str, object]:
    return {"vendor_class": f"PXEClient:Arch:{arch:05d}", "client_arch": (arch,), **kw}


@pytest.mark.parametrize(
    ("fields", "file", "tftp"),
    [
        (pxe(0), "undionly.kpxe", True),
        (pxe(7), "snponly.efi", True),  # the configured override
        (pxe(9), "snponly.efi", True),
        (pxe(11), "ipxe-arm64.efi", True),
        (
            {"vendor_class": "HTTPClient:Arch:00016", "client_arch": (16,)},
            "http://10.0.0.1:8080/ipxe/ipxe.efi",
            False,
        ),
        (pxe(0, user_classes=(b"iPXE",)), "http://10.0.0.1:8080/boot.ipxe", False),
        (pxe(7, ipxe=b"\xb1\x01\x01"), "http://10.0.0.1:8080/boot.ipxe", False),
    ],
)
def test_arch_table_picks_the_boot_file(fields: dict[str, object], file: str, tftp: bool) -> None:
    out = ProxyHandler(TARGETS).handle(req(**fields), AT, NOW)
    assert isinstance(out, Outcome) and out.reply is not None
    r = out.reply
    assert (r.message_type, r.yiaddr, r.file) == (Msg.OFFER, "0.0.0.0", file)
    assert r.siaddr == "10.0.0.1"  # a proxy offer always names the boot server (iPXE needs it)
    offer = full().handle(req(**fields), AT, NOW)  # full mode: only for a TFTP file
    assert isinstance(offer, Outcome) and offer.reply is not None
    assert (offer.reply.file, offer.reply.siaddr) == (file, "10.0.0.1" if tftp else "0.0.0.0")
    if "HTTPClient" in str(fields["vendor_class"]):
        assert r.vendor_class == "HTTPClient"
    if file.endswith("boot.ipxe"):
        assert r.ipxe == b"\xb0\x01\x01"


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, "not a network-boot client"),
        (pxe(42), "unknown architecture"),
    ],
)
def test_proxy_ignores(fields: dict[str, object], why: str) -> None:
    out = ProxyHandler(TARGETS).handle(req(**fields), AT, NOW)
    assert isinstance(out, Ignore) and out.reason == why


def test_proxy_port_4011_acks_with_boot_file() -> None:
    at = Arrival(IFACE, "10.0.0.77", 68, PXE_PORT)
    out = ProxyHandler(TARGETS).handle(req(Msg.REQUEST, ciaddr="10.0.0.77", **pxe(0)), at, NOW)
    assert isinstance(out, Outcome) and out.reply is not None
    assert (out.reply.message_type, out.reply.file) == (Msg.ACK, "undionly.kpxe")
    assert route(req(ciaddr="10.0.0.77"), out.reply, at) == Route("10.0.0.77", 68)


def dora(h: FullHandler, mac: str, **kw: object) -> str:
    offer = h.handle(req(mac=mac, **kw), AT, NOW)
    assert isinstance(offer, Outcome) and offer.reply is not None
    ip = offer.reply.yiaddr
    ack = h.handle(req(Msg.REQUEST, mac=mac, requested_ip=ip, server_id="10.0.0.1", **kw), AT, NOW)
    assert isinstance(ack, Outcome) and ack.reply is not None
    assert ack.reply.message_type == Msg.ACK and ack.persist[0].state == BOUND
    return ip


def test_full_exchange_options_reservation_and_exhaustion() -> None:
    h = full()
    assert dora(h, "02:00:00:00:00:01") == "10.0.0.10"
    assert dora(h, "02:00:00:00:00:01") == "10.0.0.10"  # the same client keeps its address
    assert dora(h, "02:00:00:00:00:99") == "10.0.0.50"  # reservation, outside the pool
    assert dora(h, "02:00:00:00:00:02") == "10.0.0.11"
    assert isinstance(h.handle(req(mac="02:00:00:00:00:03"), AT, NOW), Ignore)  # pool empty
    ack = h.handle(req(Msg.REQUEST, mac="02:00:00:00:00:99", requested_ip="10.0.0.50"), AT, NOW)
    assert isinstance(ack, Outcome) and ack.reply is not None
    r = ack.reply
    assert r.network is not None and r.network.wire  # encoded once, for the whole subnet
    assert (r.hostname, r.network.routers, r.network.subnet_mask, r.network.extra) == (
        "r1",
        ("10.0.0.1",),
        "255.255.255.0",
        ((252, b"x"),),
    )
    assert (r.lease_time, r.renewal_time, r.rebinding_time) == (3600, 1800, 3150)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"requested_ip": "10.9.9.9"}, "10.9.9.9 is not on this network"),  # INIT-REBOOT, moved
        ({"requested_ip": "10.0.0.10"}, "10.0.0.10 is not available"),  # someone else's
        ({"ciaddr": "10.0.0.10"}, "10.0.0.10 is not available"),  # RENEWING another's address
    ],
)
def test_full_naks(fields: dict[str, object], why: str) -> None:
    h = full()
    dora(h, "02:00:00:00:00:01")
    out = h.handle(req(Msg.REQUEST, mac="02:00:00:00:00:02", **fields), AT, NOW)
    assert isinstance(out, Outcome) and out.reply is not None
    assert (out.reply.message_type, out.reply.message) == (Msg.NAK, why)
    assert route(req(), out.reply, AT) == Route("255.255.255.255", 68)


def test_decline_quarantines_and_release_frees() -> None:
    h = full()
    ip = dora(h, "02:00:00:00:00:01")
    out = h.handle(req(Msg.DECLINE, requested_ip=ip, server_id="10.0.0.1"), AT, NOW)
    assert isinstance(out, Outcome) and out.reply is None and out.persist[0].state == DECLINED
    assert dora(h, "02:00:00:00:00:01") == "10.0.0.11"  # never the declined one
    assert isinstance(h.handle(req(mac="02:00:00:00:00:05"), AT, NOW), Ignore)
    out = h.handle(req(Msg.RELEASE, ciaddr="10.0.0.11"), AT, NOW)
    assert isinstance(out, Outcome) and out.persist[0].state == RELEASED
    assert dora(h, "02:00:00:00:00:05") == "10.0.0.11"


def test_selecting_another_server_drops_our_offer() -> None:
    h = full()
    h.handle(req(), AT, NOW)
    out = h.handle(req(Msg.REQUEST, requested_ip="10.0.0.10", server_id="10.0.0.2"), AT, NOW)
    assert isinstance(out, Ignore)
    # Both addresses of the pool are free again: the dropped offer holds nothing.
    assert {dora(h, "02:00:00:00:00:02"), dora(h, "02:00:00:00:00:03")} == {
        "10.0.0.10",
        "10.0.0.11",
    }


def test_relay_selects_subnet_by_giaddr_and_records_option_82() -> None:
    h = full()
    relayed = {"giaddr": "10.20.0.1", "relay_agent": b"\x01\x02p7", "circuit_id": b"p7"}
    out = h.handle(req(**relayed), Arrival(IFACE, "10.20.0.1", 67), NOW)
    assert isinstance(out, Outcome) and out.reply is not None and out.sighting is not None
    assert out.reply.yiaddr == "10.20.0.5" and out.reply.relay_agent == b"\x01\x02p7"
    assert out.sighting.facts["relay"]["circuit_id"] == "p7"
    assert route(req(**relayed), out.reply, AT) == Route("10.20.0.1", 67)


@pytest.mark.parametrize(
    ("fields", "subnet"),
    [
        # RFC 3527: the relay talks from 10.0.0.254 but names the client's link 10.20.0.0/24.
        ({"giaddr": "10.0.0.254", "link_selection": "10.20.0.1"}, "10.20.0."),
        # RFC 3011, from a relay or from the client itself.
        ({"giaddr": "10.0.0.254", "subnet_selection": "10.20.0.1"}, "10.20.0."),
        ({"subnet_selection": "10.20.0.1"}, "10.20.0."),
        # Link selection wins over subnet selection.
        ({"link_selection": "10.0.0.1", "subnet_selection": "10.20.0.1"}, "10.0.0."),
        ({"giaddr": "10.0.0.254"}, "10.0.0."),
    ],
)
def test_link_and_subnet_selection_choose_the_subnet(
    fields: dict[str, object], subnet: str
) -> None:
    h = full()
    ip = dora(h, "02:00:00:00:00:01", **fields)
    assert ip.startswith(subnet)
    if "giaddr" in fields:  # the reply still goes to the relay, not to the named link
        r = Reply(Msg.ACK, 1, b"\x02" * 6, yiaddr=ip)
        assert route(req(**fields), r, AT) == Route(str(fields["giaddr"]), 67)


def test_a_link_we_do_not_serve_gets_no_answer() -> None:
    out = full().handle(req(giaddr="10.0.0.254", link_selection="10.99.0.1"), AT, NOW)
    assert isinstance(out, Ignore) and out.reason == "no subnet for link=10.99.0.1 interface=eth0"


@pytest.mark.parametrize(
    ("fields", "creates"),
    [
        ({"giaddr": "10.20.0.1"}, False),  # relayed, says nothing about the machine
        ({"giaddr": "10.20.0.1", "circuit_id": b"p7", "relay_agent": b"\x01\x02p7"}, True),
        ({"giaddr": "10.20.0.1", **pxe(7)}, True),
    ],
)
def test_which_sightings_may_create_a_node(fields: dict[str, object], creates: bool) -> None:
    out = full().handle(req(**fields), Arrival(IFACE, "10.20.0.1", 67), NOW)
    assert isinstance(out, Outcome) and out.sighting is not None
    assert out.sighting.creates is creates


def test_loaded_leases_are_respected() -> None:
    book = LeaseBook(list(CONFIG.subnets))
    book.load([Lease("10.0.0.10", "02:00:00:00:00:07", None, "10.0.0.0/24", BOUND, NOW + 60)])
    h = FullHandler(CONFIG, TARGETS, book)
    assert dora(h, "02:00:00:00:00:01") == "10.0.0.11"
    assert dora(h, "02:00:00:00:00:07") == "10.0.0.10"


@pytest.mark.parametrize(
    ("fields", "reply_yiaddr", "expected"),
    [
        ({"flags": 0x8000}, "10.0.0.10", Route("255.255.255.255", 68)),
        ({}, "10.0.0.10", Route("10.0.0.10", 68, layer2=True)),
        ({"ciaddr": "10.0.0.10"}, "10.0.0.10", Route("10.0.0.10", 68)),
        ({"giaddr": "10.20.0.1", "ciaddr": "10.20.0.9"}, "10.20.0.9", Route("10.20.0.1", 67)),
    ],
)
def test_delivery_follows_rfc2131_4_1(
    fields: dict[str, object], reply_yiaddr: str, expected: Route
) -> None:
    r = Reply(Msg.ACK, 1, b"\x02" * 6, yiaddr=reply_yiaddr)
    assert route(req(**fields), r, AT) == expected


def test_rate_limiter_stops_a_flood_from_one_mac() -> None:
    lim = RateLimiter(per_second=10, burst=5)
    assert sum(lim.allow("a", 0.0) for _ in range(100)) == 5
    assert lim.allow("b", 0.0)
    assert lim.allow("a", 0.2)  # refilled two tokens in 200 ms
