"""Discovery boot time: power-on → inventory via ztpd, against a dnsmasq + static HTTP reference.

    sudo .venv/bin/python bench/discovery_boot.py [--runs 2] [--image images/discovery]
                                                  [--init OLD_INIT]

The same QEMU VM (TCG, BIOS, e1000 with QEMU's iPXE ROM, 1 CPU, 512 MB, two NICs, two disks)
boots the same discovery image, in turn, from

- ``ztpd``: the real ``ztpd serve`` (DHCP full mode, /boot.ipxe → /ipxe → discovery.ipxe, kernel
  and initrd from /files/, agent endpoints); done when ztpd has stored the inventory;
- ``reference``: dnsmasq (DHCP, ``--no-ping``, iPXE clients told an HTTP script URL) and a
  static stdlib HTTP server (one script with the same kernel arguments, the same files, and a
  stub that takes the agent's POST); done when the stub has the inventory.

``--init FILE`` adds a third path, ``ztpd+init``: ztpd serving the image with FILE as its
/init (appended to the initrd as a second cpio archive, which the kernel unpacks over the
first) — e.g. the previous init from git, for a before/after with the same VM. Everything runs
in network namespaces this script makes and removes. Per run it prints the total and where the
time went from the agent's console uptimes (kernel start → /init, drivers, DHCP, collectors,
post); firmware + iPXE + downloads is about the total minus the uptime at which the post began.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon import router_advertisements  # noqa: E402
from tests.discovery.pxe import (  # noqa: E402
    DISCOVERY_ARGS,
    PORT,
    SERVER,
    console,
    missing,
    serve,
    start_vm,
)
from tests.netns import Lan, wait_for  # noqa: E402
from ztpd.images.discovery import EPOCH, INITRD, KERNEL, cpio  # noqa: E402
from ztpd.lab.vm import Shape, VmFiles, VmSpec  # noqa: E402

SPEC = VmSpec(
    name="bench",
    index=1,
    firmware="bios",
    shape=Shape("bench", cpus=1, memory_mb=512, disks_gb=(1, 2), nics=2),
    serial="ZT-BENCH-01",
    uuid="5a7e1d00-0000-4000-8000-0000000be7c1",
    macs=("52:54:00:79:01:01", "52:54:00:79:01:02"),
    taps=("zbn0", "zbn1"),
)
DEADLINE = 300.0
REF_PORT = PORT + 1
# The console lines the init and agent print, in boot order: label → pattern of their uptime.
MARKS = {
    "init": r"ztpd-discovery: init .* uptime=([\d.]+)s",
    "drivers": r"ztpd-discovery: drivers loaded .* uptime=([\d.]+)s",
    "network": r"ztpd-agent: stage network uptime=([\d.]+)s",
    "collecting": r"ztpd-agent: stage collecting uptime=([\d.]+)s",
    "posting": r"ztpd-agent: stage posting uptime=([\d.]+)s",
}


# --- the reference's HTTP side (runs inside the server namespace) ------------------------------


class Reference(http.server.SimpleHTTPRequestHandler):
    """Static files from the current directory; the agent's POSTs are taken, the inventory kept
    (``inventory.b64``) with its arrival time (``inventory.time``); the next action is ``wait``."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/inventory"):
            Path("inventory.b64").write_bytes(body)  # the agent's bundle, to look into
            Path("inventory.time").write_text(repr(time.time()))
        self._json({"node": 1, "version": 1, "errors": 0})

    def do_GET(self) -> None:
        if self.path.startswith("/agent/v1/next"):
            self._json({"action": "wait"})
        else:
            super().do_GET()

    def _json(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_reference(directory: Path) -> None:
    os.chdir(directory)
    http.server.ThreadingHTTPServer((SERVER, REF_PORT), Reference).serve_forever()


# --- one boot ---------------------------------------------------------------------------------


def uptimes(text: str) -> dict[str, float]:
    found = {}
    for label, pattern in MARKS.items():
        m = re.search(pattern, text)
        if m:
            found[label] = float(m.group(1))
    return found


def with_init(image: Path, init: Path, out: Path) -> Path:
    """A copy of ``image`` whose /init is ``init``: a second, gzip'ed cpio archive with just
    that file after the first (the kernel unpacks both, the later entry wins)."""
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(init, Path(tmp) / "init")
        (Path(tmp) / "init").chmod(0o755)
        extra = gzip.compress(cpio(Path(tmp)), compresslevel=9, mtime=EPOCH)
    shutil.copyfile(image / KERNEL, out / KERNEL)
    (out / INITRD).write_bytes((image / INITRD).read_bytes() + extra)
    return out


def boot_ztpd(tmp: Path, image: Path) -> tuple[float, str]:
    files = VmFiles(tmp / "vm")
    with Lan(f"zb{os.getpid()}") as lan, serve(lan, tmp, image) as site:
        started = time.time()
        vm = start_vm(lan, SPEC, files)
        try:
            node = wait_for(
                lambda: (n := site.node(SPEC.macs[0])) and n.get("inventory") and n,
                "ztpd to store the inventory",
                timeout=DEADLINE,
                step=0.2,
            )
        except AssertionError as e:
            raise SystemExit(f"{e}\n{console(files)}\n{site.log()}") from None
        stored = site.api(f"/api/v1/nodes/{node['id']}/inventory")
        took = float(stored["ts"]) - started
        assert lan.switch is not None
        lan.switch.stop(vm)
    return took, console(files)


def boot_reference(tmp: Path, image: Path) -> tuple[float, str]:
    files = VmFiles(tmp / "vm")
    www = tmp / "www"
    www.mkdir()
    for name in (KERNEL, INITRD):
        shutil.copyfile(image / name, www / name)
    base = f"http://{SERVER}:{REF_PORT}"
    (www / "ref.ipxe").write_text(
        "#!ipxe\n"
        f"kernel {base}/{KERNEL} initrd={INITRD} {DISCOVERY_ARGS} ztpd.url={base} "
        "ztpd.token=reference BOOTIF=01-${netX/mac:hexhyp}\n"
        f"initrd --name {INITRD} {base}/{INITRD}\n"
        "boot\n"
    )
    with Lan(f"zr{os.getpid()}") as lan:
        srv = lan.host("srv", f"{SERVER}/24")
        router_advertisements(srv)
        srv.popen([sys.executable, __file__, "--serve-reference", str(www)])
        srv.popen(
            [
                "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--no-ping",
                "--interface=eth0", "--bind-interfaces", f"--dhcp-leasefile={tmp / 'leases'}",
                "--dhcp-range=10.79.0.100,10.79.0.150,1h", "--dhcp-match=set:ipxe,175",
                f"--dhcp-boot=tag:ipxe,{base}/ref.ipxe",
            ]
        )  # fmt: skip
        ready = ["curl", "-sf", "--max-time", "2", "-o", "/dev/null", f"{base}/ref.ipxe"]
        wait_for(lambda: srv.run(ready, check=False).returncode == 0, "the reference's HTTP")
        started = time.time()
        vm = start_vm(lan, SPEC, files)
        stamp = www / "inventory.time"
        try:
            wait_for(stamp.exists, "the reference to get the inventory", DEADLINE, 0.2)
        except AssertionError as e:
            raise SystemExit(f"{e}\n{console(files)}") from None
        took = float(stamp.read_text()) - started
        assert lan.switch is not None
        lan.switch.stop(vm)
    return took, console(files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="boots per path (alternating)")
    p.add_argument("--image", type=Path, default=ROOT / "images" / "discovery")
    p.add_argument("--init", type=Path, help="also boot ztpd with this file as the image's /init")
    p.add_argument("--serve-reference", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_reference:
        serve_reference(args.serve_reference)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    if problems := missing():
        raise SystemExit(f"needs {'; '.join(problems)}")
    if not (args.image / INITRD).is_file():
        raise SystemExit(f"no discovery image in {args.image}: run `make discovery-image`")
    print(f"image {args.image}: initrd {(args.image / INITRD).stat().st_size} bytes")
    with tempfile.TemporaryDirectory(prefix="ztpd-bench-") as tmp:
        paths = {"reference": (boot_reference, args.image), "ztpd": (boot_ztpd, args.image)}
        if args.init:
            paths["ztpd+init"] = (boot_ztpd, with_init(args.image, args.init, Path(tmp) / "old"))
        results: dict[str, list[float]] = {name: [] for name in paths}
        for run in range(args.runs):
            for name, (boot, image) in paths.items():
                work = Path(tmp) / f"{name}-{run}"
                work.mkdir()
                took, text = boot(work, image)
                results[name].append(took)
                marks = uptimes(text)
                steps = " ".join(f"{k}={v:.1f}" for k, v in marks.items())
                firmware = took - marks.get("posting", took)
                print(
                    f"{name:10} run={run + 1} power-on→inventory={took:5.1f}s "
                    f"firmware+ipxe+downloads≈{firmware:4.1f}s uptimes: {steps}",
                    flush=True,
                )
    print("\nmedian power-on → inventory")
    for name, times in results.items():
        print(f"  {name:10} {statistics.median(times):5.1f}s  ({len(times)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
