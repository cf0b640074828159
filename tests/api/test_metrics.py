"""/metrics: the Prometheus text format, naming conventions, and values that move."""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import Client
from tests.api.harness import ADMIN, VIEWER, Env, bearer
from ztpd.metrics import Counter, Gauge, Histogram, Metrics, Registry

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*)\})?'
    r" (?P<value>[-+]?(\d+(\.\d+)?([eE][-+]?\d+)?|Inf|NaN))$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
UNIT_SUFFIXES = ("_seconds", "_bytes", "_total", "_info", "_count", "_sum", "_bucket")


def parse(text: str) -> dict[str, dict[str, object]]:
    """Families by name: {type, help, samples: [(name, labels, value)]}; asserts the format."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            assert name not in families, f"{name} described twice"
            assert help_, f"{name} has no help"
            families[name] = {"help": help_, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, f"TYPE {name} not after its HELP"
            assert kind in ("counter", "gauge", "histogram")
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            assert current is not None
            base = m["name"]
            kind = families[current]["type"]
            if kind == "histogram":
                assert base in (f"{current}_bucket", f"{current}_sum", f"{current}_count"), line
            else:
                assert base == current, f"{line!r} outside its family {current}"
            labels = dict(LABEL.findall(m["labels"] or ""))
            samples = families[current]["samples"]
            assert isinstance(samples, list)
            samples.append((base, labels, float(m["value"])))
    return families


def check_conventions(families: dict[str, dict[str, object]]) -> None:
    for name, fam in families.items():
        assert NAME.match(name) and name.startswith("ztpd_"), name
        assert not re.search(r"_(ms|milliseconds|kilobytes|megabytes|minutes|hours)\b", name)
        if fam["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{fam['type']} {name} must not end in _total"
        if fam["type"] == "histogram":
            assert name.endswith("_seconds") or name.endswith("_bytes"), name
            by_series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
            counts = {}
            samples = fam["samples"]
            assert isinstance(samples, list)
            for sname, labels, value in samples:
                if sname.endswith("_bucket"):
                    labels = dict(labels)
                    le = labels.pop("le")
                    key = tuple(sorted(labels.items()))
                    by_series.setdefault(key, []).append((float(le), value))
                elif sname.endswith("_count"):
                    counts[tuple(sorted(labels.items()))] = value
            for key, buckets in by_series.items():
                assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
                values = [v for _, v in buckets]
                assert values == sorted(values), "buckets must be cumulative"
                assert buckets[-1][0] == float("inf")
                assert buckets[-1][1] == counts[key]


def value(families: dict[str, dict[str, object]], name: str, **labels: str) -> float:
    for fam in families.values():
        samples = fam["samples"]
        assert isinstance(samples, list)
        for sname, slabels, v in samples:
            if sname == name and slabels == labels:
                return float(v)
    raise AssertionError(f"no sample {name}{labels}")


async def test_scrape_follows_conventions_and_counts(client: Client, env: Env) -> None:
    from ztpd.lifecycle import Trigger as T

    await client.get("/api/v1/nodes", headers=bearer(VIEWER))
    await client.get("/api/v1/nodes/nosuch", headers=bearer(VIEWER))
    await client.post("/api/v1/nodes/1/actions/approve", headers=bearer(ADMIN))
    env.walk(2, T.FAIL)
    env.deps.metrics.dhcp_packets.inc(type="discover", outcome="offered")
    env.deps.metrics.boots.inc(arch="x86_64-efi")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    fams = parse(await resp.text())
    check_conventions(fams)
    expected = {
        "ztpd_build_info", "ztpd_dhcp_packets_total", "ztpd_dhcp_store_writes_total",
        "ztpd_dhcp_leases_in_use",
        "ztpd_boots_total", "ztpd_http_requests_total", "ztpd_http_response_bytes_total",
        "ztpd_tftp_requests_total", "ztpd_tftp_sent_bytes_total", "ztpd_nodes",
        "ztpd_lifecycle_phase_duration_seconds", "ztpd_node_failures_total",
        "ztpd_agent_heartbeats_total",
    }  # fmt: skip
    assert set(fams) == expected
    assert value(fams, "ztpd_nodes", state="failed") == 2
    assert value(fams, "ztpd_nodes", state="matched") == 1
    assert value(fams, "ztpd_nodes", state="ready") == 0
    assert value(fams, "ztpd_node_failures_total", state="deploying", cause="test") == 1
    assert value(fams, "ztpd_lifecycle_phase_duration_seconds_count", state="inspecting") == 3
    assert value(fams, "ztpd_dhcp_leases_in_use", subnet="10.9.0.0/24") == 1
    assert value(fams, "ztpd_dhcp_packets_total", type="discover", outcome="offered") == 1
    route = {"method": "GET", "route": "/api/v1/nodes/{node}", "code": "404"}
    assert value(fams, "ztpd_http_requests_total", **route) == 1
    route = {"method": "POST", "route": "/api/v1/nodes/{node}/actions/{action}", "code": "200"}
    assert value(fams, "ztpd_http_requests_total", **route) == 1
    assert value(fams, "ztpd_http_response_bytes_total", route="/api/v1/nodes") > 100


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Counter("ztpd_packets", "x"), "must end in _total"),
        (lambda: Gauge("ztpd_things_total", "x"), "must not end in _total"),
        (lambda: Counter("ztpd-bad_total", "x"), "not a valid"),
        (lambda: Histogram("ztpd_wait_milliseconds", "x"), "base units"),
        (lambda: Counter("ztpd_x_total", "x", ["le-x"]), "label"),
        (lambda: Histogram("ztpd_x_seconds", "x", ["le"]), "label"),
        (lambda: Counter("ztpd_x_total", ""), "help"),
        (lambda: Histogram("ztpd_x_seconds", "x", buckets=[2, 1]), "increasing"),
    ],
)
def test_bad_definitions_fail_at_once(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_label_values_are_escaped_and_checked() -> None:
    r = Registry()
    c = r.counter("ztpd_odd_total", "odd labels", ["what"])
    c.inc(what='a "quoted"\nline \\ here')
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(other="x")
    with pytest.raises(ValueError, match="cannot go down"):
        c.inc(-1, what="x")
    with pytest.raises(ValueError, match="defined twice"):
        r.counter("ztpd_odd_total", "again")
    fams = parse(r.render())
    assert fams["ztpd_odd_total"]["samples"] == [
        ("ztpd_odd_total", {"what": 'a \\"quoted\\"\\nline \\\\ here'}, 1.0)
    ]


def test_histogram_buckets() -> None:
    m = Metrics()
    for v in (0.5, 3, 3, 10_000):
        m.phase_seconds.observe(v, state="deploying")
    fams = parse(m.render())
    check_conventions(fams)
    assert (
        value(fams, "ztpd_lifecycle_phase_duration_seconds_bucket", state="deploying", le="1") == 1
    )
    assert (
        value(fams, "ztpd_lifecycle_phase_duration_seconds_bucket", state="deploying", le="5") == 3
    )
    assert (
        value(fams, "ztpd_lifecycle_phase_duration_seconds_bucket", state="deploying", le="+Inf")
        == 4
    )
    assert value(fams, "ztpd_lifecycle_phase_duration_seconds_sum", state="deploying") == 10006.5


def test_dhcp_counters_map_to_packet_and_store_write_series() -> None:
    from ztpd.app import dhcp_series

    counters = {
        "received": 9, "reply.offer": 4, "reply.ack": 3, "drop.rate_limit": 2,
        "leases.committed": 3, "sightings.recorded": 5, "error.send": 1,
    }  # fmt: skip
    packets, writes = dhcp_series(counters)
    assert sorted(packets, key=str) == sorted(
        [
            ({"type": "any", "outcome": "received"}, 9),
            ({"type": "offer", "outcome": "sent"}, 4),
            ({"type": "ack", "outcome": "sent"}, 3),
            ({"type": "any", "outcome": "drop_rate_limit"}, 2),
            ({"type": "any", "outcome": "error_send"}, 1),
        ],
        key=str,
    )
    assert sorted(writes, key=str) == [({"kind": "leases"}, 3), ({"kind": "sightings"}, 5)]
