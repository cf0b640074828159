"""Hostname templates (sandbox, strictness), regex safety, and the inventory schema."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pydantic
import pytest

from ztpd.errors import RenderError
from ztpd.inventory import Inventory
from ztpd.profiles import templates
from ztpd.profiles.safe_regex import MAX_SUBJECT, compile_safe

from .conftest import INVENTORIES, facts


def check(source: str) -> tuple[Any, list[str]]:
    problems: list[str] = []
    return templates.check(source, problems.append), problems


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("{{ ''.__class__.__mro__ }}", "private attribute '__mro__'"),
        ("{{ cycler.__init__.__globals__ }}", "private attribute '__globals__'"),
        ("{{ system['__class__'] }}", "private attribute '__class__'"),
        ("{{ 'a' * 100000000 }}", "repetition longer than 256"),
        ("{{ 2 ** 100000 }}", "exponent too large"),
        ("{{ range(10) }}", "unknown fact 'range'"),
        ("{{ config }}", "unknown fact 'config'"),
        ("{{ sytem.serial }}", "unknown fact 'sytem' (did you mean 'system'?)"),
        ("{{ disks[0].size }}", "unknown fact 'disks[].size'"),
        ("{{ system.serial", "template syntax"),
    ],
)
def test_refused_templates(source: str, problem: str) -> None:
    template, problems = check(source)
    assert template is None
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("source", "machine", "hostname"),
    [
        ("edge-{{ system.serial[-6:] | lower }}", "dell-r650", "edge-xk4q53"),
        ("{{ system.product | lower | replace(' ', '-') }}", "dell-r650", "poweredge-r650"),
        ("n-{{ disks[0].serial | lower }}", "intel-nuc", "n-s64dnx0r800001"),
        ("{% set m = boot.pxe_interface %}x{{ m.split(':')[-1] }}", "qemu-vm", "x56"),
        ("{{ labels.site }}-{{ cpu.count }}", "qemu-vm", "lab-2"),
        ("{% for d in disks %}{% if loop.first %}d{{ d.name[-1] }}{% endif %}{% endfor %}",
         "dell-r650", "da"),
    ],
)  # fmt: skip
def test_rendered_hostnames(source: str, machine: str, hostname: str) -> None:
    template, problems = check(source)
    assert problems == []
    assert templates.render_hostname(template, facts(machine, labels={"site": "lab"}), "p") == (
        hostname
    )


def test_a_missing_fact_is_a_render_error_not_an_empty_string() -> None:
    template, _ = check("web-{{ system.serial | lower }}")
    with pytest.raises(RenderError, match="'system' is undefined"):
        templates.render_hostname(template, {}, "w")
    with pytest.raises(RenderError, match="has no attribute 'serial'"):
        templates.render_hostname(template, facts("qemu-vm"), "w")


def test_an_invalid_hostname_is_refused() -> None:
    template, _ = check("{{ system.manufacturer }}")
    with pytest.raises(
        RenderError, match=re.escape("'To Be Filled By O.E.M.' is not a valid host name")
    ):
        templates.render_hostname(template, facts("whitebox-bogus-serial"), "w")


@pytest.mark.parametrize(
    ("pattern", "safe"),
    [
        ("^PowerEdge R6[0-9]0$", True),
        (r"^\d+\.\d+$", True),
        ("(?i)nvidia|amd", True),
        ("^(ab|cd)$", True),
        ("(ab){2}", True),
        ("(ab)?", True),
        ("(a+)+$", False),
        ("(a*)*b", False),
        ("(a{1,5})+", False),
        ("([a-z]+-?)+$", False),
        ("^(a|aa)+$", False),
        (r"(\w+)\1", False),
        ("x" * 600, False),
        ("[", False),
    ],
)
def test_regex_safety(pattern: str, safe: bool) -> None:
    if safe:
        compile_safe(pattern)
    else:
        with pytest.raises(ValueError):
            compile_safe(pattern)


def test_accepted_patterns_stay_fast_on_hostile_input() -> None:
    start = time.monotonic()
    for pattern in (r"^\d+\.\d+$", "^[a-z]+-[0-9]+$", "(ab)+c"):
        compile_safe(pattern).search("a" * MAX_SUBJECT + "!")
    assert time.monotonic() - start < 2


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((INVENTORIES / f"{name}.json").read_text())
    return data


@pytest.mark.parametrize("name", sorted(p.stem for p in INVENTORIES.glob("*.json")))
def test_fixture_inventories_validate_and_round_trip(name: str) -> None:
    inv = Inventory.model_validate(load(name))
    assert Inventory.model_validate(inv.model_dump()) == inv


def test_a_partial_inventory_validates() -> None:
    inv = Inventory.model_validate(
        {"schema_version": 1, "system": {"serial": "X"},
         "errors": [{"collector": "disks", "message": "lsblk failed"}]}
    )  # fmt: skip
    assert inv.cpu is None and inv.disks == [] and inv.errors[0].collector == "disks"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schema_version": 2}, "schema_version 2 is not supported (this ztpd reads 1)"),
        ({}, "schema_version\n  Field required"),
        ({"schema_version": 1, "cpus": {}}, "cpus\n  Extra inputs are not permitted"),
        ({"schema_version": 1, "bmc": {"address": "10.0.0.300"}}, "bmc.address"),
        ({"schema_version": 1, "boot": {"mode": "efi"}}, "boot.mode"),
        ({"schema_version": 1, "interfaces": [{"name": "e", "mac": "zz"}]}, "not a MAC"),
        ({"schema_version": 1, "sources": {"gpu": "agent"}}, "unknown sections: gpu"),
        ({"schema_version": 1, "sources": {"cpu": "guess"}}, "sources.cpu"),
        ({"schema_version": 1, "memory": {"total_bytes": -1}}, "memory.total_bytes"),
    ],
)
def test_bad_inventories_are_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        Inventory.model_validate(data)
    assert message in str(err.value)


def test_macs_are_normalised_and_facts_are_flat() -> None:
    data = load("dell-r650")
    data["interfaces"][0]["mac"] = "B4-96-91-AA-10-01"
    inv = Inventory.model_validate(data)
    assert inv.interfaces[0].mac == "b4:96:91:aa:10:01"
    f = facts("dell-r650", labels={"rack": "r12"}, relay_circuit_id="leaf1/12", dhcp_arch="efi-x64")
    assert f["cpu.count"] == 64 and f["memory.total_gb"] == 256.0
    assert f["system.firmware.version"] == "1.10.2"
    assert f["interfaces"][0]["lldp.system_name"] == "leaf-r12-a"
    assert f["labels.rack"] == "r12" and f["relay.circuit_id"] == "leaf1/12"
    assert "bmc.address" not in facts("intel-nuc")  # absent, never None
