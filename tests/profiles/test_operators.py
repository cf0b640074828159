"""Every operator over every kind it applies to, table-driven, through the real compiler."""

from __future__ import annotations

from typing import Any

import pytest

from ztpd.profiles.conditions import compile_conditions
from ztpd.profiles.model import Condition


def compiled(cond: dict[str, Any]) -> Any:
    problems: list[str] = []
    out = compile_conditions([Condition.model_validate(cond)], lambda p, m: problems.append(m))
    assert out is not None, problems
    return out[0]


def outcome(cond: dict[str, Any], facts: dict[str, Any]) -> bool:
    return bool(compiled(cond).evaluate(facts).passed)


CASES: list[tuple[str, str, Any, Any, bool]] = [
    # field, op, value, actual, passes
    ("cpu.count", "eq", 8, 8, True),
    ("cpu.count", "eq", 8, 16, False),
    ("cpu.count", "ne", 8, 16, True),
    ("cpu.count", "ne", 8, 8, False),
    ("cpu.count", "lt", 8, 4, True),
    ("cpu.count", "lt", 8, 8, False),
    ("cpu.count", "le", 8, 8, True),
    ("cpu.count", "le", 8, 9, False),
    ("cpu.count", "gt", 8, 9, True),
    ("cpu.count", "gt", 8, 8, False),
    ("cpu.count", "ge", 8, 8, True),
    ("cpu.count", "ge", 8, 7, False),
    ("memory.total_gb", "ge", 63.5, 64.0, True),
    ("memory.total_bytes", "ge", "64GiB", 64 * 2**30, True),
    ("memory.total_bytes", "ge", "64GiB", 64 * 10**9, False),
    ("memory.total_bytes", "lt", "1TB", 64 * 2**30, True),
    ("system.manufacturer", "eq", "Dell Inc.", "Dell Inc.", True),
    ("system.manufacturer", "eq", "Dell Inc.", "dell inc.", False),
    ("system.sku", "eq", 1234, "1234", True),
    ("system.manufacturer", "in", ["Dell Inc.", "HPE"], "HPE", True),
    ("system.manufacturer", "in", ["Dell Inc.", "HPE"], "Lenovo", False),
    ("system.manufacturer", "not-in", ["Dell Inc.", "HPE"], "Lenovo", True),
    ("system.manufacturer", "not-in", ["Dell Inc.", "HPE"], "HPE", False),
    ("cpu.count", "in", [4, 8], 8, True),
    ("system.product", "regex", "^PowerEdge R6[0-9]0$", "PowerEdge R650", True),
    ("system.product", "regex", "^PowerEdge R6[0-9]0$", "PowerEdge R750", False),
    ("system.product", "regex", "(?i)poweredge", "PowerEdge R650", True),
    ("system.product", "regex", "R65", "PowerEdge R650", True),
    ("system.product", "contains", "R650", "PowerEdge R650", True),
    ("system.product", "contains", "R750", "PowerEdge R650", False),
    ("cpu.flags", "contains", "avx2", ("sse", "avx2"), True),
    ("cpu.flags", "contains", "avx512f", ("sse", "avx2"), False),
    ("boot.secure_boot", "eq", True, True, True),
    ("boot.secure_boot", "eq", True, False, False),
    ("boot.secure_boot", "ne", True, False, True),
    ("bmc.address", "eq", "10.0.0.5", "10.0.0.5", True),
    ("bmc.address", "in-cidr", "10.20.1.0/24", "10.20.1.31", True),
    ("bmc.address", "in-cidr", "10.20.1.0/24", "10.20.2.31", False),
    ("bmc.address", "in-cidr", ["10.0.0.0/8", "192.168.0.0/16"], "192.168.4.4", True),
    ("bmc.address", "in-cidr", "fd00::/8", "fd00::1", True),
    ("bmc.address", "regex", r"^10\.20\.", "10.20.1.31", True),
    ("bmc.mac", "eq", "C4-CB-E1-01-02-05", "c4:cb:e1:01:02:05", True),
    ("bmc.mac", "eq", "c4:cb:e1:01:02:05", "C4:CB:E1:01:02:05", True),
    ("bmc.mac", "in", ["c4:cb:e1:01:02:05"], "c4:cb:e1:01:02:06", False),
    ("dhcp.arch", "eq", "efi-x64", "efi-x64", True),
    ("relay.circuit_id", "regex", "^sw1/0/1[0-9]$", "sw1/0/12", True),
    ("labels.rack", "eq", "r12", "r12", True),
    ("node.ip", "in-cidr", "10.0.0.0/24", "10.0.0.9", True),
]


@pytest.mark.parametrize(("field", "op", "value", "actual", "passes"), CASES)
def test_operator(field: str, op: str, value: Any, actual: Any, passes: bool) -> None:
    cond = {"field": field, "op": op, "value": value}
    assert outcome(cond, {field: actual}) is passes


@pytest.mark.parametrize("op", ["eq", "ne", "lt", "ge", "in", "not-in", "regex", "contains"])
def test_a_missing_fact_fails_every_operator_but_exists(op: str) -> None:
    field = {"regex": "system.product", "contains": "system.product"}.get(op, "cpu.count")
    value: Any = [1] if op in ("in", "not-in") else ("x" if field == "system.product" else 1)
    result = compiled({"field": field, "op": op, "value": value}).evaluate({})
    assert not result.passed
    assert result.actual is None
    assert result.note == "not reported"


@pytest.mark.parametrize(
    ("cond", "facts", "passes"),
    [
        ({"field": "bmc.address", "op": "exists"}, {"bmc.address": "10.0.0.1"}, True),
        ({"field": "bmc.address", "op": "exists"}, {}, False),
        ({"field": "bmc.address", "op": "exists", "value": False}, {}, True),
        (
            {"field": "bmc.address", "op": "exists", "value": False},
            {"bmc.address": "1.2.3.4"},
            False,
        ),
    ],
)
def test_exists(cond: dict[str, Any], facts: dict[str, Any], passes: bool) -> None:
    assert outcome(cond, facts) is passes


DISKS = (
    {"name": "/dev/sda", "rotational": False, "size_bytes": 480 * 10**9},
    {"name": "/dev/nvme0n1", "rotational": False, "size_bytes": 1_920 * 10**9},
    {"name": "/dev/nvme1n1", "rotational": False, "size_bytes": 1_920 * 10**9},
    {"name": "/dev/sdb", "rotational": True, "size_bytes": 16 * 10**12},
)
BIG_SSD = [
    {"field": "rotational", "op": "eq", "value": False},
    {"field": "size_bytes", "op": "ge", "value": "900GB"},
]


@pytest.mark.parametrize(
    ("cond", "passes", "actual"),
    [
        ({"count": {"op": "ge", "value": 2}, "where": BIG_SSD}, True, 2),
        ({"count": {"op": "ge", "value": 3}, "where": BIG_SSD}, False, 2),
        ({"count": {"op": "eq", "value": 4}}, True, 4),
        ({"count": {"op": "lt", "value": 4}}, False, 4),
        ({"count": {"op": "ne", "value": 0}}, True, 4),
        (
            {
                "count": {"op": "le", "value": 1},
                "where": [{"field": "rotational", "op": "eq", "value": True}],
            },
            True,
            1,
        ),
        (
            {"count": {"op": "gt", "value": 0}, "where": [{"field": "serial", "op": "exists"}]},
            False,
            0,
        ),
        ({"any": BIG_SSD}, True, 2),
        ({"any": [{"field": "size_bytes", "op": "gt", "value": "20TB"}]}, False, 0),
        ({"all": [{"field": "size_bytes", "op": "ge", "value": "400GB"}]}, True, 4),
        ({"all": BIG_SSD}, False, 2),
    ],
)
def test_lists(cond: dict[str, Any], passes: bool, actual: int) -> None:
    result = compiled({"field": "disks", **cond}).evaluate({"disks": DISKS})
    assert (result.passed, result.actual) == (passes, actual)
    assert [e.element for e in result.elements] == [d["name"] for d in DISKS]


def test_list_explanation_names_the_failing_elements() -> None:
    result = compiled({"field": "disks", "any": BIG_SSD}).evaluate({"disks": DISKS})
    by_name = {e.element: e for e in result.elements}
    assert by_name["/dev/sda"].failed == ('size_bytes ge "900GB" (actual 480000000000 = 480.0 GB)',)
    assert by_name["/dev/sdb"].failed == ("rotational eq false (actual true)",)
    assert by_name["/dev/nvme0n1"].passed
    assert result.note == "2 of 4 disks match"


def test_all_over_an_empty_list_holds_and_any_does_not() -> None:
    assert (
        compiled({"field": "gpus", "all": [{"field": "vendor", "op": "exists"}]})
        .evaluate({"gpus": ()})
        .passed
    )
    assert (
        not compiled({"field": "gpus", "any": [{"field": "vendor", "op": "exists"}]})
        .evaluate({"gpus": ()})
        .passed
    )


def test_lldp_and_ipv4_inside_interfaces() -> None:
    nics = ({"name": "eno1", "ipv4": ("10.0.0.5/24",), "lldp.system_name": "leaf-r12-a"},)
    cond = {
        "field": "interfaces",
        "any": [
            {"field": "lldp.system_name", "op": "regex", "value": "^leaf-r12-"},
            {"field": "ipv4", "op": "in-cidr", "value": "10.0.0.0/24"},
            {"field": "ipv4", "op": "contains", "value": "10.0.0.5"},
        ],
    }
    assert compiled(cond).evaluate({"interfaces": nics}).passed


def test_a_fact_of_the_wrong_type_fails_instead_of_raising() -> None:
    result = compiled({"field": "bmc.address", "op": "in-cidr", "value": "10.0.0.0/8"}).evaluate(
        {"bmc.address": "not-an-ip"}
    )
    assert not result.passed
    assert "wrong type" in result.note
