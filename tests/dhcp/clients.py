"""Scripted DHCP clients built with scapy (independent of ztpd's own codec), run inside a namespace:

    python tests/dhcp/clients.py relay  SERVER LOCAL_IP GIADDR COUNT [--circuit-id X] [--mac-base N]
                                        [--link-selection IP] [--subnet-selection IP]
    python tests/dhcp/clients.py probe  IFACE [--pxe ARCH] [--user-class iPXE] [--wait S]
    python tests/dhcp/clients.py pxe4011 SERVER IFACE IP MAC ARCH

``relay`` plays a relay agent doing DORA for COUNT clients (unique MACs) and prints one JSON line
per client; ``probe`` broadcasts one DISCOVER on IFACE and prints every reply it sees;
``pxe4011`` asks a PXE boot server on port 4011 as a client holding IP would. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import time
from typing import Any

from scapy.all import AsyncSniffer, conf, get_if_hwaddr, sendp
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ztpd.dhcp import refcodec

conf.verb = 0


def mac_bytes(n: int) -> bytes:
    return bytes.fromhex("02a0") + n.to_bytes(4, "big")


def summary(data: bytes) -> dict[str, Any]:
    f = refcodec.parse(data)
    o = f.options
    return {
        "type": o.get(53),
        "yiaddr": f.header["yiaddr"],
        "siaddr": f.header["siaddr"],
        "giaddr": f.header["giaddr"],
        "flags": f.header["flags"],
        "file": f.header["file"].rstrip(b"\0").decode(),
        "server": o.get(54),
        "vendor_class": o[60].decode() if 60 in o else None,
        "bootfile": o[67].decode() if 67 in o else None,
        "has82": 82 in o,
        "ipxe175": o[175].hex() if 175 in o else None,
        "xid": f.header["xid"],
    }


def relay(a: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 67))  # replies come to giaddr, which may not be a.local
    s.settimeout(a.timeout)
    sub82 = b""
    if a.circuit_id:
        sub82 += bytes((1, len(a.circuit_id))) + a.circuit_id.encode()
        sub82 += b"\x02\x06" + bytes.fromhex("aabbccddeeff")
    if a.link_selection:  # RFC 3527: the client's link, apart from giaddr
        sub82 += b"\x05\x04" + socket.inet_aton(a.link_selection)
    relay82: list[Any] = [("relay_agent_information", sub82)] if sub82 else []
    if a.subnet_selection:  # RFC 3011
        relay82.append((118, socket.inet_aton(a.subnet_selection)))

    def ask(pkt: Any, want_xid: int) -> dict[str, Any] | None:
        s.sendto(bytes(pkt), (a.server, 67))
        deadline = time.monotonic() + a.timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(4096)
            except TimeoutError:
                return None
            r = summary(data)
            if r["xid"] == want_xid:
                return r
        return None

    for i in range(a.count):
        mac = mac_bytes(a.mac_base + i)
        xid = (a.mac_base + i) & 0xFFFFFFFF
        head = BOOTP(chaddr=mac, xid=xid, giaddr=a.giaddr, hops=1)
        extra = (
            [
                ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
                ("pxe_client_architecture", b"\x00\x07"),
            ]
            if a.pxe
            else []
        )
        offer = ask(
            head / DHCP(options=[("message-type", "discover"), *extra, *relay82, "end"]), xid
        )
        out: dict[str, Any] = {"mac": mac.hex(":"), "offer": offer, "ack": None}
        if offer is not None and offer["type"] == 2:
            out["ack"] = ask(
                head
                / DHCP(
                    options=[
                        ("message-type", "request"),
                        ("requested_addr", offer["yiaddr"]),
                        ("server_id", offer["server"]),
                        *extra,
                        *relay82,
                        "end",
                    ]
                ),
                xid,
            )
        print(json.dumps(out), flush=True)


def probe(a: argparse.Namespace) -> None:
    mac = get_if_hwaddr(a.iface)
    xid = 0x5A5A0001
    opts: list[Any] = [("message-type", "discover")]
    if a.pxe is not None:
        opts += [
            ("vendor_class_id", f"PXEClient:Arch:{a.pxe:05d}:UNDI:003016".encode()),
            ("pxe_client_architecture", a.pxe.to_bytes(2, "big")),
            ("pxe_client_machine_identifier", b"\x00" + bytes(range(16))),
        ]
    if a.user_class:
        opts.append(("user_class", a.user_class.encode()))
    pkt = (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid, flags=0x8000)
        / DHCP(options=[*opts, "end"])
    )
    sniffer = AsyncSniffer(iface=a.iface, filter="udp and dst port 68", store=True)
    sniffer.start()
    time.sleep(0.5)  # let the capture socket attach before the request leaves
    sendp(pkt, iface=a.iface)
    time.sleep(a.wait)
    sniffer.stop()
    for p in sniffer.results or []:
        if BOOTP in p and p[BOOTP].xid == xid and p[BOOTP].op == 2:
            print(json.dumps({"src": p[IP].src, **summary(bytes(p[BOOTP]))}), flush=True)


def pxe4011(a: argparse.Namespace) -> None:
    subprocess.run(["ip", "addr", "add", f"{a.ip}/24", "dev", a.iface], check=True)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.ip, 68))
    s.settimeout(5)
    pkt = BOOTP(chaddr=bytes.fromhex(a.mac.replace(":", "")), xid=0x4011, ciaddr=a.ip) / DHCP(
        options=[
            ("message-type", "request"),
            ("vendor_class_id", f"PXEClient:Arch:{a.arch:05d}:UNDI:003016".encode()),
            ("pxe_client_architecture", a.arch.to_bytes(2, "big")),
            "end",
        ]
    )
    s.sendto(bytes(pkt), (a.server, 4011))
    data, src = s.recvfrom(4096)
    print(json.dumps({"src": src[0], "sport": src[1], **summary(data)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay")
    r.add_argument("server")
    r.add_argument("local")
    r.add_argument("giaddr")
    r.add_argument("count", type=int)
    r.add_argument("--circuit-id", default="")
    r.add_argument("--link-selection", default="")
    r.add_argument("--subnet-selection", default="")
    r.add_argument("--mac-base", type=int, default=1)
    r.add_argument("--pxe", action="store_true")
    r.add_argument("--timeout", type=float, default=2.0)
    pr = sub.add_parser("probe")
    pr.add_argument("iface")
    pr.add_argument("--pxe", type=int)
    pr.add_argument("--user-class", default="")
    pr.add_argument("--wait", type=float, default=6.0)  # dnsmasq pings before it offers
    px = sub.add_parser("pxe4011")
    px.add_argument("server")
    px.add_argument("iface")
    px.add_argument("ip")
    px.add_argument("mac")
    px.add_argument("arch", type=int)
    a = p.parse_args()
    {"relay": relay, "probe": probe, "pxe4011": pxe4011}[a.cmd](a)


if __name__ == "__main__":
    main()
