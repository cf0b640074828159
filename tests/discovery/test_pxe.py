"""End to end through PXE with the real ``ztpd serve``: a QEMU VM (TCG) with two NICs, two disks,
a known SMBIOS identity and a BMC boots from ztpd on a LAN of network namespaces — ztpd's DHCP
(full mode) → the NIC's iPXE ROM → /boot.ipxe → /ipxe → discovery.ipxe → kernel and initrd over
HTTP — runs the real discovery image, and ztpd stores an inventory with exactly those facts.

The peers are real: lldpd on the switch announces itself on the VM's ports, and OpenIPMI's
ipmi_sim is the BMC behind the VM's KCS interface, with a LAN address and MAC of its own. The
profiles directory is empty, so the node ends ``unmatched`` and no install starts.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discovery.pxe import DISCOVERY_ARGS, SERVER, Site, missing, serve, start_vm
from tests.netns import Lan, Netns, lan, require, wait_for
from ztpd.lab.vm import Shape, VmFiles, VmSpec

__all__ = ["lan"]

pytestmark = [pytest.mark.netns, pytest.mark.vm, pytest.mark.slow]

BMC_PORT = 9002  # ipmi_sim's end of the VM's KCS interface, inside the switch namespace
BMC_IP, BMC_MAC = "10.79.0.250", "52:54:00:79:00:fe"
SWITCH = "ztpd-test-switch"
SPEC = VmSpec(
    name="pxe",
    index=1,
    firmware="bios",
    shape=Shape("pxe-e2e", cpus=1, memory_mb=512, disks_gb=(1, 2), nics=2),
    serial="ZT-PXE-0001",
    uuid="5a7e1d00-0000-4000-8000-0000000e2e01",
    macs=("52:54:00:79:00:01", "52:54:00:79:00:02"),
    taps=("zpxe0", "zpxe1"),
)
DEADLINE = 300.0  # TCG on two shared cores: firmware, downloads, kernel, DHCP, collectors
AFTER_INVENTORY = {"inspected", "unmatched", "awaiting-approval", "matched", "failed"}


@pytest.fixture
def site(lan: Lan, discovery_image: Path, tmp_path: Path) -> Iterator[Site]:
    """``ztpd serve`` in the LAN's server namespace; an agent silent for 15 s fails."""
    require()
    if problems := missing():
        pytest.skip(f"needs {'; '.join(problems)}")
    # The agent listens for LLDP while it collects; under load TCG may take seconds just to
    # start tcpdump, so the window is wide (a frame ends it at once).
    args = f"{DISCOVERY_ARGS} ztpd.lldp_wait=20"
    lifecycle = {"sweep_interval": 0.5, "agent_silence": 15}
    with serve(lan, tmp_path, discovery_image, args, lifecycle=lifecycle) as s:
        yield s


@pytest.fixture
def lldpd_dir() -> Iterator[Path]:
    """A directory for lldpd's socket and settings that lldpcli, which drops to the _lldpd
    user, can reach (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(prefix="ztpd-lldpd-") as d:
        Path(d).chmod(0o755)
        yield Path(d)


def start_bmc(switch: Netns, tmp: Path) -> None:
    """ipmi_sim as the VM's BMC: KCS from QEMU on a socket, LAN settings from a script."""
    require("ipmi_sim")
    lancontrol = tmp / "lancontrol"
    # ipmi_sim asks `lancontrol <dev> get <parm>...` and reads "<parm>:<value>" lines.
    lancontrol.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' ip_addr:{BMC_IP} ip_addr_src:static mac_addr:{BMC_MAC} "
        f"subnet_mask:255.255.255.0 default_gw_ip_addr:{SERVER} "
        "default_gw_mac_addr:00:00:00:00:00:00 backup_gw_ip_addr:0.0.0.0 "
        "backup_gw_mac_addr:00:00:00:00:00:00\n"
    )
    lancontrol.chmod(0o755)
    (tmp / "bmc.conf").write_text(
        f'name "{SPEC.name}-bmc"\n'
        "set_working_mc 0x20\n"
        "startlan 1\n"
        "  addr 127.0.0.1 623\n"
        "  priv_limit admin\n"
        "  allowed_auths_admin md5\n"
        "  guid a123456789abcdefa123456789abcdef\n"
        f'  lan_config_program "{lancontrol} eth0"\n'
        "endlan\n"
        f"serial 15 127.0.0.1 {BMC_PORT} codec VM\n"
        "startnow false\n"
        'user 2 true "admin" "not-a-secret" admin 10 md5\n'
    )
    (tmp / "bmc.emu").write_text(
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n"
    )
    (tmp / "bmc-state").mkdir()
    with (tmp / "bmc.log").open("wb") as out:
        switch.popen(
            [
                "ipmi_sim", "-n", "-c", str(tmp / "bmc.conf"), "-f", str(tmp / "bmc.emu"),
                "-s", str(tmp / "bmc-state"),
            ],
            stdout=out,
        )  # fmt: skip
    wait_for(
        lambda: switch.run(["ss", "-Hltn", f"sport = :{BMC_PORT}"]).stdout.strip(),
        "ipmi_sim to listen for the VM",
        timeout=30,
        step=0.1,
    )


def start_lldpd(switch: Netns, tmp: Path, confdir: Path) -> None:
    """lldpd on the VM's ports: a frame every second, the port ID is the port's name."""
    require("lldpd", "lldpcli")
    conf, sock = confdir / "lldpd.conf", str(confdir / "lldpd.socket")
    conf.write_text(
        f"configure system hostname {SWITCH}\n"
        f"configure system chassisid {SWITCH}\n"
        "configure lldp tx-interval 1\n"
        "configure lldp portidsubtype ifname\n"
    )
    with (tmp / "lldpd.log").open("wb") as out:
        # -O: these settings, not the host's /etc/lldpd.d. lldpd starts paused and sends its
        # first frame only once they are in (settings given after it runs let the agent, which
        # listens from link-up, catch a frame without the system name: seen in CI).
        switch.popen(
            ["lldpd", "-d", "-u", sock, "-I", ",".join(SPEC.taps), "-O", str(conf)], stdout=out
        )

    def configured() -> bool:
        shown = switch.run(["lldpcli", "-u", sock, "show", "chassis"], check=False)
        return shown.returncode == 0 and SWITCH in shown.stdout

    wait_for(configured, "lldpd to take its settings", timeout=30, step=0.2)


def wait_node(site: Site, files: VmFiles, states: set[str], what: str) -> dict[str, Any]:
    node: dict[str, Any] = wait_for(
        lambda: (n := site.node(SPEC.macs[0])) and n["state"] in states and n,
        what,
        timeout=DEADLINE,
        step=0.5,
        detail=lambda: f"--- console\n{files.console_text(3000)}\n--- ztpd\n{site.log()}",
    )
    return node


def test_pxe_vm_reports_its_hardware_bmc_and_lldp(
    site: Site, tmp_path: Path, lldpd_dir: Path
) -> None:
    switch = site.lan.switch
    assert switch is not None
    files = VmFiles(tmp_path / "vm")
    start_bmc(switch, tmp_path)
    started = time.monotonic()
    vm = start_vm(site.lan, SPEC, files, bmc=f"127.0.0.1:{BMC_PORT}")
    start_lldpd(switch, tmp_path, lldpd_dir)  # once the taps exist
    node = wait_node(site, files, AFTER_INVENTORY, "the VM's inventory")
    took = time.monotonic() - started
    assert node["state"] == "unmatched", (node, files.console_text(3000))
    print(f"power-on to inventory through PXE: {took:.1f}s")

    stored = site.api(f"/api/v1/nodes/{node['id']}/inventory")
    assert (stored["version"], stored["source"]) == (1, "agent")
    inv = stored["data"]
    system = inv["system"]
    assert (system["serial"], system["uuid"]) == (SPEC.serial, SPEC.uuid)
    assert (system["manufacturer"], system["product"]) == ("ztpd-lab", SPEC.shape.name)
    disks = {d["serial"]: d for d in inv["disks"]}
    assert {s: d["size_bytes"] for s, d in disks.items()} == {
        f"{SPEC.serial}-D{n}": gb << 30 for n, gb in enumerate(SPEC.shape.disks_gb)
    }
    assert {d["transport"] for d in disks.values()} == {"virtio"}
    nics = {i["mac"]: i for i in inv["interfaces"]}
    assert set(nics) == set(SPEC.macs)
    assert {i["driver"] for i in nics.values()} == {"e1000"}
    assert nics[SPEC.macs[0]]["ipv4"][0].startswith("10.79.0.")

    def agent_log() -> str:
        return str(site.api(f"/api/v1/nodes/{node['id']}/agent-log")["text"])

    for mac, tap in zip(SPEC.macs, SPEC.taps, strict=True):
        lldp = nics[mac].get("lldp")
        assert lldp, (mac, agent_log(), (tmp_path / "lldpd.log").read_text(errors="replace"))
        assert (lldp["chassis_id"], lldp["port_id"], lldp["system_name"]) == (SWITCH, tap, SWITCH)
    assert inv["boot"] == {"mode": "bios", "pxe_interface": SPEC.macs[0]}
    assert inv["bmc"] == {"address": BMC_IP, "mac": BMC_MAC}
    assert inv["cpu"]["count"] == 1 and inv["cpu"]["architecture"] == "x86_64"
    assert inv["memory"]["physical_bytes"] == SPEC.shape.memory_mb << 20
    assert not inv.get("errors"), inv["errors"]
    # Identity: UUID, serial and both MACs are this one node's.
    assert (node["uuid"], node["serial"]) == (SPEC.uuid, SPEC.serial)
    assert site.node(SPEC.macs[1])["id"] == node["id"]

    # The agent's console log, through the API, once the agent waits for its next action.
    text = wait_for(
        lambda: (t := agent_log()) and "inventory accepted" in t and t,
        "the agent log to reach 'inventory accepted'",
        timeout=60,
        step=0.5,
        detail=lambda: f"--- agent log\n{agent_log()}\n--- console\n{files.console_text(3000)}",
    )
    print("\n".join(ln for ln in text.splitlines() if ln.startswith("ztpd-")))
    assert "drivers loaded" in text and "ztpd.token" not in text
    switch.stop(vm)


def test_pxe_vm_whose_agent_dies_fails_with_the_reason(site: Site, tmp_path: Path) -> None:
    switch = site.lan.switch
    assert switch is not None
    files = VmFiles(tmp_path / "vm")
    vm = start_vm(site.lan, SPEC, files)
    # Kill the machine once its agent is heard from: collecting (no LLDP on this LAN, so the
    # agent listens for all of ztpd.lldp_wait before it posts).
    node = wait_node(site, files, {"inspecting"} | AFTER_INVENTORY, "the discovery script")
    wait_for(
        lambda: site.api(f"/api/v1/nodes/{node['id']}/agent-log")["text"],
        "the agent's first log lines",
        timeout=DEADLINE,
        step=0.2,
    )
    switch.stop(vm)
    killed = time.monotonic()
    node = wait_node(site, files, AFTER_INVENTORY, "the silence timeout")
    assert node["state"] == "failed", node
    assert node["reason"] == "agent silent in inspecting"
    assert time.monotonic() - killed < 60
    assert site.api(f"/api/v1/nodes/{node['id']}")["inventory"] is None
