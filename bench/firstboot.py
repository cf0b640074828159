"""First boot of the Debian OS image: power-on → GRUB → kernel → userspace → cloud-init → callback.

    flock /tmp/ztpd-heavy.lock .venv/bin/python bench/firstboot.py [--firmware bios|uefi]
        [--cpus 1] [--memory 512] [--image images/os/debian-12/debian-12.raw] [--keep DIR]

One QEMU VM (TCG, the lab's edge-small shape by default: 1 CPU, 512 MB, a 20 GB virtio disk;
BIOS with an e1000 NIC, UEFI with OVMF and virtio-net, as the lab's VMs) boots a copy of the
image with the NoCloud seed written where the agent writes it (the root partition's
``/var/lib/cloud/seed/nocloud/``, through a loop device over that partition), rendered by ztpd's
own renderer for the kubeedge-edge example profile (its packages included: like the lab, the
guest reaches no mirror). The guest's network is QEMU's restricted user network: it reaches
nothing but a stub on this host's loopback (one forwarded address) that records the time of
the ``firstboot`` callback.

The copy also gets a report unit (bench only, never in the image): once cloud-final is done it
prints the guest's uptime, wall clock, systemd's boot timestamps, each first-boot unit's start
and end, ``systemd-analyze blame`` and ``critical-chain`` to the serial console and powers the
VM off. Every console line is stamped on arrival; the guest's uptime ties its monotonic clock
(kernel start = 0) to power-on. cloud-init's own log, read from the disk afterwards, gives the
slowest modules. Prints seconds from power-on to each stage; ``--json`` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.boot.conftest import free_tcp_port  # noqa: E402
from tests.install.conftest import MIRRORS, TEMPLATES, example_os, inventory  # noqa: E402
from ztpd.http.install import _host_keys  # noqa: E402
from ztpd.install.render import Renderer, Target  # noqa: E402
from ztpd.lab.vm import DISK_OPTS, OVMF_CODE, OVMF_VARS, QEMU  # noqa: E402
from ztpd.model import Node  # noqa: E402

IMAGE = ROOT / "images" / "os" / "debian-12" / "debian-12.raw"
GUEST_ZTPD = "10.0.2.100"  # the address the guest reaches the stub at (QEMU guestfwd)
MAC = "52:54:00:12:34:56"  # the PXE interface of tests/fixtures/inventories/qemu-vm.json
NODE_URL = f"http://{GUEST_ZTPD}/install/1/token/"
DISK_GB = 20
DEADLINE = 900.0
# The units of a first boot, in order; each gets a start and an end from systemd.
UNITS = (
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "networking.service",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-config.service",
    "cloud-final.service",
    "ssh.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
)
REPORT_FILE = "var/log/ztpd-bench.txt"
REPORT = f"""#!/bin/sh
# Bench only: waits for cloud-final, writes where the first boot went, powers off.
i=0
while [ $i -lt 1800 ]; do
  s=$(systemctl show -P ActiveState cloud-final.service)
  [ "$s" = active ] || [ "$s" = failed ] && break
  i=$((i + 1)); sleep 1
done
exec >/{REPORT_FILE} 2>&1
echo "clock $(cut -d' ' -f1 /proc/uptime) $(date +%s.%N)"
for p in InitRDTimestampMonotonic UserspaceTimestampMonotonic FinishTimestampMonotonic; do
  echo "manager $p $(systemctl show -P $p)"
done
for u in {" ".join(UNITS)}; do
  echo "unit $u $(systemctl show -P InactiveExitTimestampMonotonic $u)" \\
    "$(systemctl show -P ActiveEnterTimestampMonotonic $u) $(systemctl show -P ActiveState $u)"
done
echo "begin blame"
systemd-analyze blame --no-pager | head -25
echo "begin chain"
systemd-analyze critical-chain --no-pager cloud-final.service
echo "end"
sync
systemctl poweroff
"""
# multi-user.target, which cloud-final comes after, must not wait for it: simple, not oneshot.
UNIT = """[Unit]
Description=ztpd bench: first-boot report
[Service]
Type=simple
ExecStart=/usr/local/sbin/ztpd-bench-report
"""
# Console lines the kernel stamps with its uptime: "[  141.491785] ..."
KERNEL_STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")
# cloud-init's reporting events in its log: "<time> - handlers.py[DEBUG]: start: <name>: ..."
CI_EVENT = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - handlers\.py\[DEBUG\]: (start|finish): ([^:]+):"
)


def seed(hostname: str = "edge-bench") -> dict[str, str]:
    """The seed ztpd serves for an image deploy of the kubeedge-edge example profile."""
    node = Node(id=1, state="deploying", macs=(MAC,), hostname=hostname)
    renderer = Renderer(TEMPLATES, MIRRORS)
    renderer.load()
    target = Target(
        example_os("kubeedge-edge", "image"),
        node,
        inventory("qemu-vm"),
        f"http://{GUEST_ZTPD}",
        NODE_URL,
    )
    return {f: renderer.render(target, f) for f in renderer.files("image")}


def _root_partition(disk: Path) -> tuple[int, int]:
    """(offset, size) in bytes of the image's last partition (its root)."""
    table = json.loads(
        subprocess.run(
            ["sfdisk", "-J", str(disk)], check=True, capture_output=True, text=True
        ).stdout
    )
    last = table["partitiontable"]["partitions"][-1]
    return last["start"] * 512, last["size"] * 512


@contextmanager
def mounted(disk: Path, mnt: Path) -> Iterator[Path]:
    """The root filesystem of the image file ``disk``, mounted at ``mnt`` through a loop device."""
    offset, size = _root_partition(disk)
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size),
         str(disk)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    try:
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "ext4", loop, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


def prepare(image: Path, work: Path) -> Path:
    """A copy of the image with the seed and the report unit in it; a qcow2 overlay of the lab's
    disk size on top (cloud-init grows the root into it). Returns the overlay."""
    base = work / "base.raw"
    subprocess.run(["cp", "--sparse=always", str(image), str(base)], check=True)
    with mounted(base, work / "mnt") as root:
        nocloud = root / "var/lib/cloud/seed/nocloud"
        nocloud.mkdir(parents=True, exist_ok=True)
        for name, text in seed().items():
            (nocloud / name).write_text(text)
        (nocloud / "user-data").chmod(0o600)
        report = root / "usr/local/sbin/ztpd-bench-report"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(REPORT)
        report.chmod(0o755)
        (root / "etc/systemd/system/ztpd-bench.service").write_text(UNIT)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "ztpd-bench.service").symlink_to("/etc/systemd/system/ztpd-bench.service")
    disk = work / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk),
         f"{DISK_GB}G"],
        check=True,
    )  # fmt: skip
    return disk


def argv(work: Path, disk: Path, firmware: str, port: int, *, cpus: int, memory: int) -> list[str]:
    machine = ["-machine", "pc"]
    nic = "e1000"
    if firmware == "uefi":
        shutil.copyfile(OVMF_VARS, work / "vars.fd")
        machine = [
            "-machine", "q35",
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={work / 'vars.fd'}",
        ]  # fmt: skip
        nic = "virtio-net-pci"
    return [
        QEMU, "-accel", "tcg", "-smp", str(cpus), "-m", str(memory),
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        *machine,
        "-drive", f"if=none,id=d0,format=qcow2,file={disk},{DISK_OPTS}",
        "-device", "virtio-blk-pci,drive=d0,bootindex=1",
        # restrict=on: no way out but the one forward to the stub, one nc per connection.
        "-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_ZTPD}:80-"
                   f"cmd:busybox nc 127.0.0.1 {port}",
        "-device", f"{nic},netdev=n0,mac={MAC},romfile=",
    ]  # fmt: skip


async def boot(cmd: list[str], port: int, log: Path) -> float | None:
    """Run the VM until it powers off, its console stamped in seconds since its start into
    ``log``; the callback's time."""
    callback: list[float] = []

    async def firstboot(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if not request.path.endswith("/firstboot"):
            return web.Response(status=404)
        # ztpd's own reading of the callback: a post it would refuse is no callback here.
        try:
            if not _host_keys(form):
                raise ValueError("no SSH host key")
        except ValueError as e:
            print(f"callback refused: {e}", file=sys.stderr)
            return web.Response(status=400, text=str(e))
        if not callback:
            callback.append(time.monotonic() - start)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", firstboot)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    start = time.monotonic()
    qemu = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert qemu.stdout is not None
    try:
        with log.open("w", buffering=1) as out:
            async with asyncio.timeout(DEADLINE):
                while raw := await qemu.stdout.readline():
                    text = raw.decode(errors="replace").replace("\r", "").rstrip("\n")
                    at = time.monotonic() - start
                    out.write(f"{at:8.2f} {text}\n")
            await qemu.wait()
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()
        await runner.cleanup()
    return callback[0] if callback else None


def _first(lines: list[tuple[float, str]], pattern: str) -> float | None:
    found = re.compile(pattern)
    return next((at for at, text in lines if found.search(text)), None)


def stages(lines: list[tuple[float, str]], callback: float | None, report: str) -> dict[str, Any]:
    """Seconds from power-on to each stage, from the console and the guest's report."""
    out: dict[str, Any] = {
        "grub": _first(lines, r"GNU GRUB|Welcome to GRUB"),
        "callback": callback,
    }
    # A stamped line reaches the host a little after the guest wrote it: the smallest
    # difference is the closest to when the guest's clock started.
    offsets = [at - float(m[1]) for at, text in lines if (m := KERNEL_STAMP.match(text))]
    if not offsets:
        return out
    kernel = out["kernel"] = min(offsets)
    for line in report.splitlines():
        words = line.split()
        if words[:1] == ["clock"]:
            out["guest_wall_at_kernel"] = float(words[2]) - float(words[1])
        elif words[:1] == ["manager"] and len(words) == 3 and words[2].isdigit():
            name = {"InitRDTimestampMonotonic": "initrd", "UserspaceTimestampMonotonic":
                    "userspace", "FinishTimestampMonotonic": "boot_finished"}[words[1]]  # fmt: skip
            out[name] = kernel + int(words[2]) / 1e6 if int(words[2]) else None
        elif words[:1] == ["unit"] and len(words) >= 4:
            begin, end = (int(w) if w.isdigit() else 0 for w in words[2:4])
            out[words[1]] = {
                "start": round(kernel + begin / 1e6, 1) if begin else None,
                "end": round(kernel + end / 1e6, 1) if end else None,
                "state": words[4] if len(words) > 4 else "?",
            }
    return out


def cloud_init_events(
    log: str, wall_at_kernel: float, kernel: float
) -> list[tuple[str, float, float]]:
    """(event, seconds from power-on at its start, duration) of cloud-init's reported events."""
    starts: dict[str, float] = {}
    found = []
    for line in log.splitlines():
        m = CI_EVENT.match(line)
        if not m:
            continue
        when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
        at = kernel + when - wall_at_kernel
        if m[2] == "start":
            starts[m[3]] = at
        elif m[3] in starts:
            found.append((m[3], starts[m[3]], at - starts[m[3]]))
    return found


def section(report: str, name: str) -> list[str]:
    """The lines of the report between "begin <name>" and the next "begin" or "end"."""
    lines = report.splitlines()
    if f"begin {name}" not in lines:
        return []
    rest = lines[lines.index(f"begin {name}") + 1 :]
    return list(itertools.takewhile(lambda t: not t.startswith(("begin ", "end")), rest))


def analyze(work: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything from a finished run's directory: console.log, callback.txt, the disk."""
    lines = []
    for line in (work / "console.log").read_text(errors="replace").split("\n"):
        at, _, text = line.replace("\r", "").strip().partition(" ")
        if not re.fullmatch(r"\d+\.\d+", at):
            continue
        lines.append((float(at), text))
    stamp = work / "callback.txt"
    callback = float(stamp.read_text()) if stamp.is_file() else None
    disk = work / "disk.qcow2"
    if disk.is_file():
        subprocess.run(["qemu-img", "commit", "-q", "-d", str(disk)], check=True)
        disk.unlink()
    with mounted(work / "base.raw", work / "mnt") as root:
        report_file = root / REPORT_FILE
        report = report_file.read_text(errors="replace") if report_file.is_file() else ""
        ci_log = (root / "var/log/cloud-init.log").read_text(errors="replace")
    result = {**meta, **stages(lines, callback, report)}
    # Without a report (a run that never finished), cloud-init's own "Up N seconds" line ties
    # its wall clock to the guest's uptime, to the second.
    up = re.search(r"running 'init-local' at (.+?)\. Up ([\d.]+) seconds", ci_log)
    if "guest_wall_at_kernel" not in result and up:
        wall = datetime.strptime(up[1], "%a, %d %b %Y %H:%M:%S %z").timestamp()
        result["guest_wall_at_kernel"] = wall - float(up[2])
    events = []
    if "guest_wall_at_kernel" in result:
        events = cloud_init_events(ci_log, result["guest_wall_at_kernel"], result["kernel"])
    result["cloud_init_slowest"] = [
        (name, round(at, 1), round(d, 1)) for name, at, d in sorted(events, key=lambda e: -e[2])
    ][:25]
    result["blame"] = section(report, "blame")
    result["critical_chain"] = section(report, "chain")
    return result


def show(result: dict[str, Any]) -> None:
    print(f"first boot: {result['firmware']}, {result['cpus']} CPU, {result['memory']} MB, "
          f"{result['image']}")  # fmt: skip
    print("seconds from power-on:")
    for key, value in result.items():
        if isinstance(value, float):
            print(f"  {key:32s} {value:7.1f}")
        elif isinstance(value, dict):
            print(f"  {key:32s} {value['start']} → {value['end']} ({value['state']})")
    print("cloud-init events, slowest (name, at, seconds):")
    for name, at, d in result["cloud_init_slowest"]:
        print(f"  {name:56s} {at:7.1f} {d:6.1f}")
    print("systemd-analyze blame:", *result["blame"], sep="\n  ")
    print("critical chain:", *result["critical_chain"], sep="\n  ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--firmware", choices=("bios", "uefi"), default="bios")
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=512)
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--keep", type=Path, help="work directory to keep (console.log, disk)")
    ap.add_argument("--analyze", type=Path, help="only analyze a kept work directory again")
    ap.add_argument("--json", type=Path, help="also write the stages here")
    args = ap.parse_args()
    work = args.analyze or args.keep or Path(tempfile.mkdtemp(prefix="ztpd-firstboot-"))
    meta_file = work / "meta.json"
    try:
        if args.analyze is None:
            work.mkdir(parents=True, exist_ok=True)
            meta = {"firmware": args.firmware, "cpus": args.cpus, "memory": args.memory,
                    "image": str(args.image)}  # fmt: skip
            meta_file.write_text(json.dumps(meta))
            disk = prepare(args.image, work)
            port = free_tcp_port()
            cmd = argv(work, disk, args.firmware, port, cpus=args.cpus, memory=args.memory)
            callback = asyncio.run(boot(cmd, port, work / "console.log"))
            if callback is not None:
                (work / "callback.txt").write_text(f"{callback:.2f}\n")
        result = analyze(work, json.loads(meta_file.read_text()))
        show(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["callback"] is not None else 1
    finally:
        if args.keep is None and args.analyze is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
