"""The shipped profiles pass `ztpd check` and send realistic machines where they should go."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ztpd.profiles import (
    check,
    format_explanation,
    format_simulation,
    load_profiles,
    schema_text,
    simulate,
)

from .conftest import INVENTORIES, ROOT, SHIPPED, facts, write

EXPECTED = {
    "dell-r650": ("k3s-server", "k3s-7xk4q53"),
    "supermicro-storage": ("storage-node", "stor-a01234"),
    "gpu-server": ("gpu-node", "gpu-j30012ab"),
    "intel-nuc": ("kubeedge-edge", "edge-48210b304050"),
    "whitebox-bogus-serial": ("hold-unknown", None),
    "qemu-vm": ("kubeedge-edge", "edge-525400123456"),
}


def test_shipped_profiles_pass_check() -> None:
    assert check(SHIPPED) == []


@pytest.mark.parametrize("machine", sorted(EXPECTED))
def test_fixture_machines_get_the_expected_profile(machine: str) -> None:
    profiles = load_profiles(SHIPPED)
    f = facts(machine)
    result = profiles.match(f, {})
    profile, hostname = EXPECTED[machine]
    assert result.winner == profile, format_explanation(result)
    assert profiles.get(profile).hostname(f) == hostname
    json.dumps(result.to_json())  # stored with the match event as JSON


def test_the_fourth_control_plane_candidate_becomes_an_agent() -> None:
    profiles = load_profiles(SHIPPED)
    result = profiles.match(facts("dell-r650"), {"k3s-server": 3})
    assert result.winner == "k3s-agent"
    assert result.verdict("k3s-server").status == "full"
    assert result.verdict("k3s-server").reason == "max_count reached (3 of 3)"


def test_the_catch_all_waits_for_an_operator_and_installs_nothing() -> None:
    profiles = load_profiles(SHIPPED)
    result = profiles.match(facts("whitebox-bogus-serial"), {})
    assert (result.winner, result.approve) == ("hold-unknown", "manual")
    assert profiles.get("hold-unknown").spec.os is None
    k3s = result.verdict("k3s-agent")
    assert k3s.status == "failed"
    serial = next(o for o in k3s.outcomes if o.field == "system.serial")
    assert (serial.passed, serial.actual) == (False, "To Be Filled By O.E.M.")


def test_defaults_and_extends_are_applied() -> None:
    profiles = load_profiles(SHIPPED)
    agent = profiles.get("k3s-agent").spec
    gpu = profiles.get("gpu-node").spec
    assert agent.max_count is None  # k3s-agent clears what it inherits from k3s-server
    assert agent.platform is not None and agent.platform.playbook == "k3s.yml"
    assert agent.platform.vars == {"k3s_role": "agent", "k3s_version": "v1.30.4+k3s1"}
    assert agent.os is not None and [u.name for u in agent.os.users] == ["ops"]
    assert gpu.register_ is not None and gpu.register_.targets[0].role == "agent"
    assert gpu.os is not None and "nvidia-driver" in gpu.os.packages


def test_simulate_reports_every_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    shutil.copytree(INVENTORIES, inv)
    (inv / "zz-broken.json").write_text('{"schema_version": 2}')
    (inv / "zz-wrapped.json").write_text(
        json.dumps(
            {
                "inventory": json.loads((INVENTORIES / "dell-r650.json").read_text()),
                "node": {"labels": {"rack": "r12"}, "dhcp_arch": "efi-x64"},
            }
        )
    )
    report = simulate(SHIPPED, inv)
    got = {n.file: (n.result.winner if n.result else None) for n in report.nodes}
    assert got == {f"{k}.json": v[0] for k, v in EXPECTED.items()} | {
        "zz-broken.json": None,
        "zz-wrapped.json": "k3s-server",
    }
    text = format_simulation(report)
    assert "dell-r650.json" in text and "-> k3s-server hostname=k3s-7xk4q53" in text
    assert "zz-broken.json" in text and "schema_version 2 is not supported" in text
    explained = format_simulation(report, explain=True)
    assert "FAIL cpu.count le 8 (actual 64)" in explained
    json.dumps(report.to_json())


def test_simulate_fills_max_count_in_arrival_order(tmp_path: Path) -> None:
    inv = tmp_path / "inv"
    inv.mkdir()
    for i in range(5):
        shutil.copy(INVENTORIES / "dell-r650.json", inv / f"dell-{i}.json")
    report = simulate(SHIPPED, inv)
    assert [n.result.winner for n in report.nodes if n.result] == [
        "k3s-server", "k3s-server", "k3s-server", "k3s-agent", "k3s-agent",
    ]  # fmt: skip


def test_explanation_text() -> None:
    result = load_profiles(SHIPPED).match(facts("intel-nuc"), {})
    text = format_explanation(result)
    assert text.splitlines()[0] == "profile: kubeedge-edge (approve: auto)"
    assert "why: highest priority among matching profiles: 150 over hold-unknown (-1000)" in text
    assert "pass memory.total_gb le 32 (actual 16.0)" in text
    assert "FAIL cpu.count ge 16 (actual 8)" in text


def test_shipped_json_schema_is_generated_from_the_models() -> None:
    shipped = ROOT / "ztpd" / "data" / "profile.schema.json"
    assert shipped.read_text() == schema_text(), (
        'regenerate: .venv/bin/python -c "from ztpd.profiles import schema_text; '
        "print(schema_text(), end='')\" > ztpd/data/profile.schema.json"
    )


def test_json_schema_accepts_the_shipped_examples() -> None:
    # Without a JSON Schema validator installed, check the shape editors rely on.
    schema = json.loads(schema_text())
    profile = schema["$defs"]["Profile"]
    assert profile["additionalProperties"] is False
    assert {"name", "match", "os", "platform", "register", "max_count"} <= set(
        profile["properties"]
    )
    assert "regex" in schema["$defs"]["Condition"]["properties"]["op"]["enum"]


def test_a_list_file_and_a_single_file_load_alike(pdir: Path) -> None:
    write(
        pdir,
        {
            "many.yaml": "- name: a\n  priority: 1\n- name: b\n  priority: 2\n",
            "one.yml": "name: c\npriority: 3\n",
            ".hidden.yaml": "garbage: [",
            "_notes.yaml": "not: read",
            "README.md": "# not a profile",
        },
    )
    assert load_profiles(pdir).names == ["c", "b", "a"]
