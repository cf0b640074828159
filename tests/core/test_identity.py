"""A node is one machine, not one MAC: resolution by MACs, UUID and serial."""

from __future__ import annotations

import pytest

from ztpd.identity import Identity, normalize_mac, normalize_serial, normalize_uuid
from ztpd.store import Events, Nodes, Store

UUID_A = "4c4c4544-0042-3510-8053-b4c04f4b4e31"
UUID_B = "4c4c4544-0042-3510-8053-b4c04f4b4e32"
BOGUS_UUID = "03000200-0400-0500-0006-000700080009"


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("52:54:00:AB:cd:01", "52:54:00:ab:cd:01"),
        ("52-54-00-AB-CD-01", "52:54:00:ab:cd:01"),
        ("5254.00ab.cd01", "52:54:00:ab:cd:01"),
        ("01-52-54-00-ab-cd-01", "52:54:00:ab:cd:01"),  # pxelinux/iPXE hardware-type prefix
    ],
)
def test_mac_normalisation(raw: str, norm: str) -> None:
    assert normalize_mac(raw) == norm


@pytest.mark.parametrize(
    "bad", ["", "52:54:00", "zz:54:00:ab:cd:01", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"]
)
def test_bad_macs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="MAC"):
        normalize_mac(bad)


def test_placeholder_uuids_and_serials_identify_nothing() -> None:
    assert normalize_uuid(BOGUS_UUID) is None
    assert normalize_uuid("00000000-0000-0000-0000-000000000000") is None
    assert normalize_uuid("not-a-uuid") is None
    assert normalize_uuid(UUID_A.upper()) == UUID_A
    for s in ("To Be Filled By O.E.M.", "Default string", "0000000", "  ", "System Serial Number"):
        assert normalize_serial(s) is None, s
    assert normalize_serial(" CZ2345ABC ") == "CZ2345ABC"


def test_several_nics_are_one_node(nodes: Nodes) -> None:
    """First seen by DHCP on one NIC, then the inventory reports four: still one node."""
    first = nodes.observe(Identity.of(["52:54:00:00:00:01"]), cause="dhcp")
    inv = Identity.of([f"52:54:00:00:00:0{i}" for i in range(1, 5)], uuid=UUID_A, serial="SN1")
    same = nodes.observe(inv, cause="inventory")
    assert same.id == first.id
    assert len(same.macs) == 4
    assert len(nodes.list()) == 1
    for i in range(1, 5):
        node = nodes.by_mac(f"52:54:00:00:00:0{i}")
        assert node is not None and node.id == first.id


def test_found_by_any_identifier(nodes: Nodes) -> None:
    n = nodes.observe(Identity.of(["52:54:00:00:00:01"], uuid=UUID_A, serial="SN1"), cause="t")
    assert nodes.observe(Identity.of(uuid=UUID_A), cause="t").id == n.id
    assert nodes.observe(Identity.of(serial="SN1"), cause="t").id == n.id
    assert nodes.find("SN1").id == n.id
    assert nodes.find(UUID_A).id == n.id
    assert nodes.find("52-54-00-00-00-01").id == n.id
    assert nodes.find(str(n.id)).id == n.id


def test_nic_swap_keeps_the_node(nodes: Nodes, store: Store) -> None:
    """The NIC was replaced: new MAC, same UUID → same node, new MAC linked."""
    n = nodes.observe(Identity.of(["52:54:00:00:00:01"], uuid=UUID_A), cause="t")
    again = nodes.observe(Identity.of(["52:54:00:00:00:99"], uuid=UUID_A), cause="dhcp")
    assert again.id == n.id
    assert "52:54:00:00:00:99" in again.macs


def test_nic_moved_to_another_machine_follows_the_uuid(nodes: Nodes, store: Store) -> None:
    a = nodes.observe(
        Identity.of(["52:54:00:00:00:01", "52:54:00:00:00:02"], uuid=UUID_A), cause="t"
    )
    # The card with ...:02 now sits in machine B (a different UUID).
    b = nodes.observe(Identity.of(["52:54:00:00:00:02"], uuid=UUID_B), cause="inventory")
    assert b.id != a.id
    assert nodes.get(a.id).macs == ("52:54:00:00:00:01",)
    assert b.macs == ("52:54:00:00:00:02",)
    moved = [e for e in Events(store).list(node_id=b.id) if e.kind == "identity"]
    assert moved[0].detail == {"mac": "52:54:00:00:00:02", "moved_from": a.id}


def test_same_bogus_serial_different_machines_stay_two(nodes: Nodes) -> None:
    """White-box boards ship the same serial; their UUIDs and MACs differ → two nodes."""
    a = nodes.observe(Identity.of(["52:54:00:00:00:01"], uuid=UUID_A, serial="123456"), cause="t")
    b = nodes.observe(Identity.of(["52:54:00:00:00:02"], uuid=UUID_B, serial="123456"), cause="t")
    assert a.id != b.id
    assert len(nodes.list()) == 2
    # A lookup by that serial alone is ambiguous and says so.
    with pytest.raises(Exception, match="several nodes"):
        nodes.find("123456")


def test_placeholder_uuid_does_not_merge_machines(nodes: Nodes) -> None:
    a = nodes.observe(Identity.of(["52:54:00:00:00:01"], uuid=BOGUS_UUID), cause="t")
    b = nodes.observe(Identity.of(["52:54:00:00:00:02"], uuid=BOGUS_UUID), cause="t")
    assert a.id != b.id
    assert a.uuid is None


def test_two_early_sightings_merge_when_the_inventory_links_them(
    nodes: Nodes, store: Store
) -> None:
    """DHCP saw NIC1 and NIC2 as two unknown machines; the inventory (token of node A) says both
    are its own: B is merged into A and disappears from the node list, its events kept."""
    a = nodes.observe(Identity.of(["52:54:00:00:00:01"]), cause="dhcp")
    b = nodes.observe(Identity.of(["52:54:00:00:00:02"]), cause="dhcp")
    nodes.observe(
        Identity.of(["52:54:00:00:00:01", "52:54:00:00:00:02"], uuid=UUID_A),
        cause="inventory",
        node_id=a.id,
    )
    assert [n.id for n in nodes.list()] == [a.id]
    assert any(e.detail.get("merged_into") == a.id for e in Events(store).list(node_id=b.id))


def test_a_sighting_needs_an_identifier(nodes: Nodes) -> None:
    with pytest.raises(Exception, match="at least one MAC"):
        nodes.observe(Identity.of(["not-a-mac"], uuid=BOGUS_UUID, serial="N/A"), cause="t")
