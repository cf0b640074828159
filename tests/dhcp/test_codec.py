"""The struct codec: decode refuses bad input with a reason, and scapy (the reference) reads every
reply it builds to the same fields. Includes the fuzz test (≥100,000 packets)."""

from __future__ import annotations

import contextlib
import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP

from ztpd.dhcp import codec, refcodec
from ztpd.dhcp.packet import Msg, Network, Reply

MAC = bytes.fromhex("020000000001")


def request(*options: object, **header: object) -> bytes:
    fields = {"chaddr": MAC, "xid": 0x1234, **header}
    return bytes(BOOTP(**fields) / DHCP(options=[*options, "end"]))


GOOD = request(("message-type", "discover"))


def raw(
    body: bytes = b"\x35\x01\x01\xff", *, sname: bytes = b"", file: bytes = b"", **over: int
) -> bytes:
    head = bytearray(
        codec.HEADER.pack(
            1,
            1,
            6,
            0,
            0x1234,
            0,
            0,
            bytes(4),
            bytes(4),
            bytes(4),
            bytes(4),
            MAC.ljust(16, b"\0"),
            sname.ljust(64, b"\0"),
            file.ljust(128, b"\0"),
            b"\x63\x82\x53\x63",
        )
    )
    for offset, value in over.items():
        head[int(offset[1:])] = value
    return bytes(head) + body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GOOD[:100], "truncated"),
        (raw()[:236] + b"\x00\x00\x00\x00" + raw()[240:], "wrong magic cookie"),
        (raw(b"\x35\x01\x01\x0c\x20abc"), "option 12 runs past the end"),
        (raw(b"\x35\x01\x01\x34\x01\x04\xff"), "malformed option overload 04"),
        (raw(b"\x35\x01\x01\x34\x02\x01\x01\xff"), "malformed option overload 0101"),
        (
            raw(b"\x35\x01\x01\x34\x01\x01\xff", file=bytes(125) + b"\x0c\x05a"),
            "option 12 runs past the end (option overload, in the file)",
        ),
        (
            raw(b"\x35\x01\x01\x34\x01\x02\xff", sname=b"\x34\x01\x01"),
            "duplicate option 52 (option overload, in the sname)",
        ),
        (
            raw(b"\x35\x01\x01\x34\x01\x03\xff", file=b"\xff", sname=b"\x35\x01\x03"),
            "duplicate option 53 (option overload, in the sname)",
        ),
        (raw(o2=200), "absurd hlen 200"),
        (raw(b"\x35\x01\x01\x35\x01\x01\xff"), "duplicate option 53"),
        (raw(b"\xff"), "no message type"),
        (raw(b"\x35\x01\x02\xff"), "not a client message type 2"),
        (raw(o0=2), "not a BOOTREQUEST"),
        (raw(b"\x35\x01\x01\x5d\x03\x00\x07\x00\xff"), "option 93 has an odd length"),
        (raw(b"\x35\x01\x01\x52\x03\x01\x05a\xff"), "malformed option 82"),
        (raw(b"\x35\x01\x01\x52\x04\x05\x02\x0a\x00\xff"), "option 82.5 is not one address"),
        (raw(b"\x35\x01\x01\x76\x03\x0a\x00\x00\xff"), "option 118 is not one address"),
        (raw(b"\x35\x01\x01\x32\x03\x0a\x00\x00\xff"), "option 50 is not one address"),
        (GOOD + bytes(1400), "oversized"),
    ],
)
def test_bad_packets_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.DecodeError) as e:
        codec.decode(data)
    assert reason in e.value.reason


def test_decode_reads_boot_relay_and_identity_options() -> None:
    uuid_raw = b"\x00" + bytes.fromhex("33221100554477668899aabbccddeeff")
    req = codec.decode(
        request(
            ("message-type", "request"),
            ("requested_addr", "10.0.0.5"),
            ("server_id", "10.0.0.1"),
            ("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
            ("pxe_client_architecture", b"\x00\x07"),
            ("pxe_client_machine_identifier", uuid_raw),
            ("user_class", b"iPXE"),
            (175, b"\xb1\x05\x01\x80\x86\x10\x0e"),
            ("client_id", b"\x01" + MAC),
            ("relay_agent_information", b"\x01\x03eth\x02\x02\xab\xcd"),
            ("hostname", b"node1"),
            giaddr="10.20.0.1",
            flags=0x8000,
        )
    )
    assert (req.message_type, req.requested_ip, req.server_id) == (
        Msg.REQUEST,
        "10.0.0.5",
        "10.0.0.1",
    )
    assert req.client_arch == (7,) and req.is_ipxe and req.broadcast and req.relayed
    assert req.uuid == "00112233-4455-6677-8899-aabbccddeeff"
    assert (req.circuit_id, req.remote_id) == (b"eth", b"\xab\xcd")
    assert req.client_key == "id:01" + MAC.hex() and req.hostname == "node1"


def split(value: bytes, cuts: list[int]) -> list[bytes]:
    """``value`` in pieces of at most 255 bytes, cut at ``cuts`` too (RFC 3396)."""
    points = sorted({0, len(value), *(c % (len(value) + 1) for c in cuts)})
    pieces = [value[a:b] for a, b in itertools.pairwise(points) if b > a]
    return [p[i : i + 255] for p in pieces for i in range(0, len(p), 255)]


def tlv(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((c, len(v))) + v for c, v in items)


LONG_OPTIONS = st.fixed_dictionaries(
    {
        12: st.binary(min_size=1, max_size=60).map(lambda b: b.replace(b"\0", b"h")),
        60: st.binary(min_size=1, max_size=400).map(lambda b: b"PXEClient:" + b),
        61: st.binary(min_size=1, max_size=300),
        77: st.just(b"iPXE"),
        82: st.binary(min_size=1, max_size=200).map(lambda c: b"\x01" + bytes((len(c),)) + c),
    }
)


@settings(max_examples=200, deadline=None)
@given(LONG_OPTIONS, st.lists(st.integers(0, 500), max_size=3), st.data())
def test_split_and_overloaded_options_read_as_the_whole_option(
    values: dict[int, bytes], cuts: list[int], data: st.DataObject
) -> None:
    """Options split in pieces (RFC 3396), all in the options field or spread over the
    options, file and sname fields (option 52), decode to the whole values. scapy builds the
    packets."""
    pieces = [(code, p) for code, v in values.items() for p in split(v, cuts)]
    # The aggregate buffer is options field, then file, then sname (RFC 3396 §5): the sname
    # takes a tail of the pieces that fits 63 bytes, the file the run before it that fits 127.
    fit = [len(tlv(pieces[i:])) <= 63 for i in range(len(pieces) + 1)]
    b = data.draw(st.sampled_from([i for i, ok in enumerate(fit) if ok]))
    fit = [len(tlv(pieces[i:b])) <= 127 for i in range(b + 1)]
    a = data.draw(st.sampled_from([i for i, ok in enumerate(fit) if ok]))
    overload = (1 if a < b else 0) | (2 if b < len(pieces) else 0)
    head = [("message-type", "request"), *([(52, bytes((overload,)))] if overload else [])]
    split_pkt = bytes(
        BOOTP(chaddr=MAC, xid=7, file=tlv(pieces[a:b]) + b"\xff", sname=tlv(pieces[b:]))
        / DHCP(options=[*head, *pieces[:a], "end"])
    )
    in_options = bytes(BOOTP(chaddr=MAC, xid=7) / DHCP(options=[head[0], *pieces, "end"]))
    for got in (codec.decode(in_options), codec.decode(split_pkt)):
        assert {c: v for c, v in got.options if c != 52} == {53: b"\x03", **values}
        assert (got.hostname, got.vendor_class) == tuple(
            values[c].rstrip(b"\0").decode("utf-8", "replace") for c in (12, 60)
        )
        assert (got.client_id, got.circuit_id, got.user_classes) == (
            values[61],
            values[82][2:],
            (b"iPXE",),
        )


replies = st.builds(
    Reply,
    message_type=st.sampled_from([Msg.OFFER, Msg.ACK, Msg.NAK]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=6, max_size=6),
    flags=st.sampled_from([0, 0x8000]),
    yiaddr=st.ip_addresses(v=4).map(str),
    siaddr=st.ip_addresses(v=4).map(str),
    giaddr=st.ip_addresses(v=4).map(str),
    file=st.text("abcdefghijklmnopqrstuvwxyz0123456789./:-", max_size=120),
    server_id=st.ip_addresses(v=4).map(str),
    lease_time=st.none() | st.integers(0, 2**32 - 1),
    hostname=st.none() | st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=30),
    network=st.none()
    | st.builds(
        Network,
        subnet_mask=st.none() | st.just("255.255.255.0"),
        routers=st.lists(st.ip_addresses(v=4).map(str), max_size=3).map(tuple),
        dns=st.lists(st.ip_addresses(v=4).map(str), max_size=3).map(tuple),
        domain=st.none() | st.text("abcdefghijklmnopqrstuvwxyz.", min_size=1, max_size=30),
        ntp=st.lists(st.ip_addresses(v=4).map(str), max_size=2).map(tuple),
        extra=st.dictionaries(  # site-specific codes, which scapy keeps as raw bytes
            st.integers(224, 254), st.binary(min_size=1, max_size=20), max_size=2
        ).map(lambda d: tuple(d.items())),
    ).flatmap(lambda n: st.sampled_from([n, codec.with_wire(n)])),  # encoded once, or now
    vendor_class=st.none() | st.sampled_from(["PXEClient", "HTTPClient"]),
    ipxe=st.none() | st.just(b"\xb0\x01\x01"),
    relay_agent=st.none() | st.binary(min_size=3, max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(replies)
def test_scapy_reads_every_reply_to_the_same_fields(r: Reply) -> None:
    f = refcodec.parse(codec.encode(r))
    h, o = f.header, f.options
    n = r.network or Network()
    assert (h["op"], h["xid"], h["flags"], h["yiaddr"], h["siaddr"], h["giaddr"]) == (
        2,
        r.xid,
        r.flags,
        r.yiaddr,
        r.siaddr,
        r.giaddr,
    )
    assert h["chaddr"][:6] == r.chaddr and h["file"].rstrip(b"\0").decode() == r.file
    assert o[53] == r.message_type and o[54] == r.server_id
    assert (o.get(51), o.get(58), o.get(59)) == (r.lease_time, r.renewal_time, r.rebinding_time)
    assert o.get(1) == n.subnet_mask and o.get(12, b"").decode() == (r.hostname or "")
    for code, values in ((3, n.routers), (6, n.dns), (42, n.ntp)):
        got = o.get(code, [])
        assert ([got] if isinstance(got, str) else got) == list(values)
    assert o.get(15, b"").decode() == (n.domain or "")
    assert all(o.get(code) == value for code, value in n.extra)
    assert o.get(60, b"").decode() == (r.vendor_class or "")
    assert o.get(67, b"").decode() == r.file
    assert o.get(175) == r.ipxe and o.get(82) == r.relay_agent


def test_layer2_frame_parses_with_valid_checksums() -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    payload = codec.encode(Reply(Msg.OFFER, 7, MAC, yiaddr="10.0.0.9", server_id="10.0.0.1"))
    frame = codec.udp_frame(
        payload,
        src_mac=b"\x02" * 6,
        dst_mac=MAC,
        src_ip="10.0.0.1",
        dst_ip="10.0.0.9",
        sport=67,
        dport=68,
    )
    pkt = Ether(frame)
    ip_sum, udp_sum = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum, pkt[UDP].chksum
    again = Ether(bytes(pkt))
    assert (again[IP].chksum, again[UDP].chksum) == (ip_sum, udp_sum)
    assert (pkt.dst, pkt[IP].dst, pkt[UDP].dport) == ("02:00:00:00:00:01", "10.0.0.9", 68)


SEEDS = [
    GOOD,
    raw(b"\x35\x01\x01\x34\x01\x03\x3c\x02PX\xff", file=b"\x3c\x03Cli\xff", sname=b"\x0c\x01n"),
    request(
        ("message-type", "request"),
        ("requested_addr", "10.0.0.5"),
        ("pxe_client_architecture", b"\x00\x07"),
        ("relay_agent_information", b"\x01\x01a"),
        ("user_class", b"iPXE"),
    ),
]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**64))
def test_fuzz_decoder_never_raises_anything_else(seed: int) -> None:
    """25 examples x 4,000 packets = 100,000: random bytes and mutated real requests."""
    rnd = random.Random(seed)
    for i in range(4000):
        if i % 4 == 0:
            data = rnd.randbytes(rnd.randrange(0, 700))
        else:
            buf = bytearray(rnd.choice(SEEDS))
            for _ in range(rnd.randrange(1, 8)):
                pos = rnd.randrange(len(buf))
                buf[pos] = rnd.randrange(256) if i % 3 else buf[pos] ^ 0xFF
            if i % 5 == 0:
                buf = buf[: rnd.randrange(len(buf))]
            data = bytes(buf)
        with contextlib.suppress(codec.DecodeError):
            codec.decode(data)


def test_encode_refuses_more_than_the_client_accepts() -> None:
    big = Reply(
        Msg.ACK, 1, MAC, network=Network(extra=tuple((200 + i, bytes(250)) for i in range(3)))
    )
    with pytest.raises(ValueError, match="maximum size"):
        codec.encode(big)
    assert len(codec.encode(Reply(Msg.ACK, 1, MAC))) == codec.MIN_REPLY
    assert struct.unpack("!I", codec.encode(Reply(Msg.ACK, 9, MAC))[4:8]) == (9,)
