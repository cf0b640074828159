"""``ztpd lab up|down|status``: a virtual edge LAN whose VMs boot as far as ztpd takes them.

Layout (``<name>`` is ``ztpd-lab`` unless told otherwise)::

    host 127.0.0.1:<port> ─ forwarder ─┐ (its upstream sockets live in <name>-srv)
    <name>-srv:  eth0 10.231.0.1/24, ztpd serve (DHCP full or proxy, TFTP, HTTP)
    <name>-dhcp: eth0 10.231.0.2/24, dnsmasq: IPv6 router advertisements, and in ``--dhcp
                 proxy`` mode the addresses (nothing about booting)
    <name>-br:   br0 (STP off, forward delay 0, no bridge netfilter), a veth to each of the
                 above, one tap per VM NIC, and the QEMU processes

Everything the lab starts runs in its own session and survives ``up``; ``lab.json`` in the state
directory records each process with its start time (so a reused pid is never signalled), the VM
specs and when each VM was powered on. ``timings.json`` holds, per VM, the seconds from
power-on to each step (written whenever ``up`` stops following). ``down`` works from
``lab.json`` and, when it is gone or stale, from the namespace names alone: it stops every
recorded process, kills whatever still runs in the lab's namespaces, deletes them (which removes
their links), and removes the files it made.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from ztpd import images
from ztpd.errors import ZtpdError
from ztpd.lab.net import BRIDGE, Lan, Netns, delete_namespace, ip, namespaces, stop_group
from ztpd.lab.vm import VmFiles, VmSpec, accelerator, missing_tools, plan, prepare, qemu_argv
from ztpd.lab.watch import Progress

NAME = "ztpd-lab"
SUBNET = "10.231.0.0/24"
SERVER_IP = "10.231.0.1"
DHCP_IP = "10.231.0.2"  # dnsmasq: router advertisements; the addresses in proxy mode
# iPXE configures IPv4 and IPv6 together and waits ~15 s for a router advertisement that a LAN
# without an IPv6 router never sends, at every network boot; dnsmasq advertises this prefix.
PREFIX6 = "fd31:0:0:231::"
DHCP_MODES = ("full", "proxy")
# UEFI VMs load snponly.efi (over PXE and over OVMF's HTTP boot, which it tries next): it drives
# only the NIC the firmware booted from through the firmware's own SNP. With ipxe.efi (its own
# drivers on every NIC) a two-NIC VM hung for good after the local-disk `exit 1`, never reaching
# the disk that comes after the NIC's boot entries.
BOOT_FILES = {"files": {"uefi-x86_64": "snponly.efi", "uefi-x86_64-http": "snponly.efi"}}
POOL = ("10.231.0.100", "10.231.0.199")
HTTP_PORT = 8080
STATE_FILE = "lab.json"
TIMINGS_FILE = "timings.json"
# Every file and directory ``up`` makes in the state directory (``down`` removes exactly these).
MADE = (
    STATE_FILE,
    TIMINGS_FILE,
    "ztpd.yaml",
    "ztpd.log",
    "forward.log",
    "dnsmasq.log",
    "dnsmasq.leases",
    "admin-token",
    "kvm-probe.log",  # left by an `up` killed while it probed KVM
    "ztpd",
    "vms",
)


@dataclass(frozen=True)
class Settings:
    """What ``up`` needs besides the node count: paths from the ztpd config, the host port."""

    state: Path
    profiles_dir: Path
    templates_dir: Path
    images_dir: Path
    port: int
    python: str
    env: Mapping[str, str]
    name: str = NAME
    build_discovery: bool = True


@dataclass
class Proc:
    pid: int
    start: str  # /proc/<pid>/stat starttime: tells our process from a later one with its pid

    def alive(self) -> bool:
        return proc_start(self.pid) == self.start


@dataclass
class LabState:
    name: str
    port: int
    accel: str
    vms: list[VmSpec]
    dhcp: str = "full"
    procs: dict[str, Proc] = field(default_factory=dict)
    powered_on: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "accel": self.accel,
            "dhcp": self.dhcp,
            "vms": [v.to_dict() for v in self.vms],
            "procs": {k: {"pid": p.pid, "start": p.start} for k, p in self.procs.items()},
            "powered_on": self.powered_on,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabState:
        return cls(
            name=d["name"],
            port=d["port"],
            accel=d["accel"],
            vms=[VmSpec.from_dict(v) for v in d["vms"]],
            dhcp=d.get("dhcp", "full"),
            procs={k: Proc(p["pid"], p["start"]) for k, p in d["procs"].items()},
            powered_on=d["powered_on"],
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def wanted(self) -> set[str]:
        """The processes a healthy lab runs."""
        return {"ztpd", "forward", "dnsmasq", *(v.name for v in self.vms)}


def proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its ")" are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _track(proc: subprocess.Popen[bytes]) -> Proc:
    start = proc_start(proc.pid)
    if start is None:
        raise ZtpdError(f"lab: {proc.args!r} exited at once (exit {proc.poll()})")
    return Proc(proc.pid, start)


class Lab:
    def __init__(self, settings: Settings, out: TextIO) -> None:
        if os.geteuid() != 0:
            raise ZtpdError("lab: needs root (it creates network namespaces and tap devices)")
        self.s = settings
        self.out = out
        self.switch_ns = f"{settings.name}-br"
        self.server_ns = f"{settings.name}-srv"
        self.dhcp_ns = f"{settings.name}-dhcp"
        self.all_ns = (self.server_ns, self.dhcp_ns, self.switch_ns)

    # --- state -----------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.s.state / STATE_FILE

    def load(self) -> LabState | None:
        try:
            return LabState.from_dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, lab: LabState) -> None:
        self.s.state.mkdir(parents=True, exist_ok=True)
        part = self.state_file.with_suffix(".part")
        part.write_text(json.dumps(lab.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(part, self.state_file)

    def running(self) -> LabState | None:
        """The recorded lab when every one of its processes and namespaces is still there."""
        lab = self.load()
        if lab is None or not lab.procs:
            return None
        present = set(namespaces(self.s.name))
        if set(self.all_ns) - present:
            return None
        if lab.wanted - set(lab.procs) or not all(p.alive() for p in lab.procs.values()):
            return None
        return lab

    def _built(self) -> LabState:
        """The recorded lab with its namespaces (some processes may have died: restartable)."""
        lab = self.load()
        if lab is None or {self.switch_ns, self.server_ns} - set(namespaces(self.s.name)):
            raise ZtpdError(f"lab {self.s.name}: not up (`ztpd lab status` shows what is left)")
        return lab

    def vm_files(self, spec: VmSpec) -> VmFiles:
        return VmFiles(self.s.state / "vms" / spec.name)

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    # --- up --------------------------------------------------------------------------------

    def up(self, nodes: int, firmware: str, timeout: float, dhcp: str = "full") -> int:
        """Build (or find) the lab, follow its nodes until settled or ``timeout``; exit status:
        0 only when every node is installed (deployed or later)."""
        if dhcp not in DHCP_MODES:
            raise ZtpdError(f"lab: --dhcp must be one of {', '.join(DHCP_MODES)}, not {dhcp!r}")
        lab = self.running()
        if lab is not None:
            self._say(
                f"lab {self.s.name} is already up with {len(lab.vms)} VMs "
                f"(`ztpd lab down` first to change it)"
            )
        else:
            if self.load() is not None or set(namespaces(self.s.name)) & set(self.all_ns):
                self._say(f"lab {self.s.name}: removing what a previous run left behind")
                self.down(quiet=True)
            vms = plan(nodes, firmware, self.s.name)
            try:
                lab = self._build(vms, dhcp)
            except BaseException:
                self._say(f"lab {self.s.name}: start failed; removing what was made")
                self.down(quiet=True)
                raise
        self._say(f"status page: {lab.url}  (admin token in {self.s.state / 'admin-token'})")
        self._say("following the nodes; Ctrl-C stops following, the lab keeps running")
        progress = self.progress(lab, self._say)
        try:
            settled = progress.follow(timeout)
        except KeyboardInterrupt:
            self._write_timings(progress)
            self._say("stopped following; `ztpd lab status` shows the lab, `ztpd lab down` ends it")
            return 0
        self._write_timings(progress)
        self.out.write(progress.summary())
        if not settled:
            self._say(f"timeout after {timeout:.0f}s; the lab keeps running")
        self._say(f"timings: {self.s.state / TIMINGS_FILE}")
        return 0 if progress.all_installed() else 1

    def progress(self, lab: LabState, say: Callable[[str], None]) -> Progress:
        return Progress(self.s.state / "ztpd" / "ztpd.db", lab.vms, lab.powered_on, say)

    def _write_timings(self, progress: Progress) -> None:
        part = (self.s.state / TIMINGS_FILE).with_suffix(".part")
        part.write_text(json.dumps(progress.timings(), indent=2, sort_keys=True) + "\n")
        os.replace(part, self.s.state / TIMINGS_FILE)

    def _build(self, vms: list[VmSpec], dhcp: str) -> LabState:
        firmwares = {v.firmware for v in vms}
        problems = missing_tools(firmwares)
        if shutil.which("dnsmasq") is None:
            problems.append("dnsmasq (apt-get install dnsmasq-base)")
        if problems:
            raise ZtpdError("lab: this host lacks " + "; ".join(problems))
        self._images()
        self.s.state.mkdir(parents=True, exist_ok=True)
        accel, why = accelerator(self.s.state, self.s.images_dir / "discovery" / "vmlinuz")
        self._say(f"accelerator: {accel} ({why})")
        lab = LabState(self.s.name, self.s.port, accel, vms, dhcp)
        listen = self._bind()  # before anything is built: a busy port fails early and cleanly
        self.save(lab)  # from here on, `down` can undo a half-built lab
        lan = Lan(self.s.name).start()
        try:
            server = Netns(self.server_ns)
            lan.plug(server, "srv0")
            ip("-n", server.name, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0")
            ip("-n", server.name, "link", "set", "eth0", "up")
            lab.procs["dnsmasq"] = _track(self._start_dnsmasq(lan, dhcp))
            self.save(lab)
            lab.procs["ztpd"] = _track(self._start_ztpd(server, dhcp))
            self.save(lab)
            lab.procs["forward"] = _track(self._start_forward(server, listen))
            self.save(lab)
        finally:
            listen.close()
        self._wait_healthy(lab)
        for spec in vms:
            for tap in spec.taps:
                lan.tap(tap)
            prepare(spec, self.vm_files(spec))
            self._power_on(lab, spec)
            self._say(
                f"powered on {spec.name}: {spec.firmware}, {spec.shape.name} "
                f"({spec.shape.cpus} CPU, {spec.shape.memory_mb} MB, disks "
                f"{'+'.join(f'{g}G' for g in spec.shape.disks_gb)}, {spec.shape.nics} NIC), "
                f"serial {spec.serial}, mac {spec.macs[0]}"
            )
        return lab

    def _power_on(self, lab: LabState, spec: VmSpec) -> None:
        files = self.vm_files(spec)
        with files.qemu_log.open("ab") as log:
            proc = Netns.attach(self.switch_ns).popen(
                qemu_argv(spec, files, lab.accel), stdout=log, stderr=subprocess.STDOUT
            )
        lab.procs[spec.name] = _track(proc)
        lab.powered_on.setdefault(spec.name, time.time())  # timings count from the first one
        self.save(lab)

    def reboot(self, vm: str) -> None:
        """Power-cycle one VM (its disks and firmware variables stay): it PXE boots again."""
        lab = self._built()
        spec = next((v for v in lab.vms if v.name == vm), None)
        if spec is None:
            raise ZtpdError(f"lab: no VM {vm!r} (the lab has {', '.join(v.name for v in lab.vms)})")
        self._stop(lab.procs.pop(spec.name, None), signal.SIGKILL)  # a power cut, not a shutdown
        self._power_on(lab, spec)
        self._say(f"power-cycled {vm}")

    def restart_ztpd(self, sig: int = signal.SIGTERM) -> None:
        """Stop ztpd with ``sig`` (SIGKILL: a crash) and start it again on the same state."""
        lab = self._built()
        self._stop(lab.procs.pop("ztpd", None), sig)
        self.save(lab)
        lab.procs["ztpd"] = _track(self._start_ztpd(Netns.attach(self.server_ns), lab.dhcp))
        self.save(lab)
        self._wait_healthy(lab)
        self._say(f"restarted ztpd after {signal.Signals(sig).name} (pid {lab.procs['ztpd'].pid})")

    @staticmethod
    def _stop(proc: Proc | None, sig: int, timeout: float = 30.0) -> None:
        """Signal ``proc``'s group and wait until it is gone (SIGKILL after ``timeout``); a
        process that is gone already (its pid maybe reused) is left alone."""
        if proc is None or not proc.alive():
            return
        stop_group(proc.pid, sig)
        deadline = time.monotonic() + timeout
        while proc.alive():
            if time.monotonic() > deadline:
                stop_group(proc.pid, signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.05)

    def _images(self) -> None:
        loaders = list(images.LOADERS)
        if images.missing(self.s.images_dir, loaders):
            self._say(f"fetching the iPXE loaders into {self.s.images_dir}")
            images.fetch(self.s.images_dir)
        kernel = self.s.images_dir / "discovery" / "vmlinuz"
        initrd = self.s.images_dir / "discovery" / "initrd.img"
        if kernel.is_file() and initrd.is_file():
            return
        # The discovery image builder is optional: without it VMs stop at the discovery boot.
        build: Callable[[Path], Any] | None = None
        with contextlib.suppress(ImportError):
            build = getattr(importlib.import_module("ztpd.images.discovery"), "build", None)
        if build is not None and self.s.build_discovery:
            self._say(f"building the discovery image into {self.s.images_dir / 'discovery'}")
            try:
                build(self.s.images_dir)
                return
            except ZtpdError as e:
                self._say(f"the discovery image could not be built: {e.message}")
        self._say(
            "WARNING: no discovery image (images/discovery/vmlinuz, initrd.img): VMs will get "
            "DHCP and iPXE and then stop at the discovery boot until it is built"
        )

    def _config(self, dhcp: str) -> Path:
        token = self.s.state / "admin-token"
        if not token.exists():
            token.touch(mode=0o600)
            token.write_text(secrets.token_urlsafe(24) + "\n")
        cfg = {
            "state_dir": str(self.s.state / "ztpd"),
            "profiles_dir": str(self.s.profiles_dir),
            "templates_dir": str(self.s.templates_dir),
            "images_dir": str(self.s.images_dir),
            "http": {
                "listen": [SERVER_IP],
                "port": HTTP_PORT,
                "auth": {
                    "anonymous_read": True,  # the page is on the host's loopback only
                    "tokens": [{"name": "lab", "role": "admin", "token_file": str(token)}],
                },
            },
            "tftp": {"enabled": True, "listen": [SERVER_IP], "port": 69},
            # proxy: dnsmasq hands out the addresses, ztpd only the boot.
            "dhcp": {"mode": "proxy", "interfaces": ["eth0"], "boot": BOOT_FILES}
            if dhcp == "proxy"
            else {
                "mode": "full",
                "interfaces": ["eth0"],
                "boot": BOOT_FILES,
                "subnets": [
                    {
                        "subnet": SUBNET,
                        "pools": [{"start": POOL[0], "end": POOL[1]}],
                        "router": SERVER_IP,
                    }
                ],
            },
        }
        path = self.s.state / "ztpd.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _child_env(self) -> dict[str, str]:
        # The lab's config is complete: the caller's ZTPD_* overrides must not reshape it.
        return {k: v for k, v in self.s.env.items() if not k.startswith("ZTPD_")}

    def _start_ztpd(self, server: Netns, dhcp: str) -> subprocess.Popen[bytes]:
        config = self._config(dhcp)
        with (self.s.state / "ztpd.log").open("ab") as log:
            return server.popen(
                [self.s.python, "-m", "ztpd", "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
            )

    def _start_dnsmasq(self, lan: Lan, dhcp: str) -> subprocess.Popen[bytes]:
        """The LAN's IPv6 router advertisements (stateless: no DHCPv6), and in proxy mode its
        plain DHCP server: addresses and a router, nothing about booting."""
        ns = Netns(self.dhcp_ns)
        lan.plug(ns, "dhcp0")
        ip("-n", ns.name, "addr", "add", f"{DHCP_IP}/24", "dev", "eth0")
        ip("-n", ns.name, "addr", "add", f"{PREFIX6}2/64", "dev", "eth0", "nodad")
        ip("-n", ns.name, "link", "set", "eth0", "up")
        argv = [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",  # no DNS
            "--interface=eth0",
            "--bind-interfaces",
            "--enable-ra",
            f"--dhcp-range={PREFIX6},ra-only",
            f"--dhcp-leasefile={self.s.state / 'dnsmasq.leases'}",
            "--log-dhcp",
            "--log-facility=-",
        ]
        if dhcp == "proxy":
            argv += [
                f"--dhcp-range={POOL[0]},{POOL[1]},1h",
                f"--dhcp-option=option:router,{SERVER_IP}",
            ]
        with (self.s.state / "dnsmasq.log").open("ab") as log:
            return ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def _bind(self) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.s.port))
        except OSError as e:
            sock.close()
            raise ZtpdError(
                f"lab: cannot listen on 127.0.0.1:{self.s.port} ({e.strerror}); choose --port"
            ) from None
        sock.listen(64)
        return sock

    def _start_forward(self, server: Netns, listen: socket.socket) -> subprocess.Popen[bytes]:
        fd = listen.fileno()
        argv = [self.s.python, "-m", "ztpd", "lab", "forward", "--fd", str(fd)]
        argv += ["--to", f"{SERVER_IP}:{HTTP_PORT}"]
        with (self.s.state / "forward.log").open("ab") as log:
            return server.popen(
                argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,), env=self._child_env()
            )

    def _wait_healthy(self, lab: LabState, timeout: float = 60.0) -> None:
        """Poll /healthz through the forwarder: both ztpd and the port forward answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not lab.procs["ztpd"].alive():
                tail = (self.s.state / "ztpd.log").read_text(errors="replace")[-2000:]
                raise ZtpdError(f"lab: ztpd exited while starting; its log ends:\n{tail}")
            try:
                with urllib.request.urlopen(f"{lab.url}healthz", timeout=2) as r:  # noqa: S310 (http)
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise ZtpdError(f"lab: ztpd did not answer on {lab.url}healthz within {timeout:.0f}s")

    # --- down ------------------------------------------------------------------------------

    def down(self, quiet: bool = False) -> list[str]:
        """Remove every process, namespace and file of the lab; what was removed, by name."""
        removed: list[str] = []
        lab = self.load()
        procs = lab.procs if lab else {}
        # VMs first, ztpd last: its final lease writes are not cut off by a dying network.
        for name, p in sorted(procs.items(), key=lambda kv: kv[0] == "ztpd"):
            if p.alive():
                stop_group(p.pid, signal.SIGTERM)
                removed.append(f"process {name} ({p.pid})")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(p.alive() for p in procs.values()):
            time.sleep(0.1)
        for p in procs.values():
            if p.alive():
                stop_group(p.pid, signal.SIGKILL)
        present = set(namespaces(self.s.name))
        for ns in self.all_ns:
            if ns in present:
                delete_namespace(ns)
                removed.append(f"namespace {ns}")
        for entry in MADE:
            path = self.s.state / entry
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(f"{path}/")
            elif path.exists():
                path.unlink()
                removed.append(str(path))
        self.state_file.with_suffix(".part").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.s.state.rmdir()  # only when empty: it may be a directory the user keeps
        if not quiet:
            self._say("\n".join(f"removed {r}" for r in removed) or "nothing to remove")
        return removed

    # --- status ----------------------------------------------------------------------------

    def status(self) -> int:
        lab = self.load()
        present = [n for n in namespaces(self.s.name) if n in self.all_ns]
        if lab is None and not present:
            self._say(f"lab {self.s.name}: not running")
            return 1
        ok = self.running() is not None
        self._say(f"lab {self.s.name}: {'up' if ok else 'BROKEN (run `ztpd lab down`)'}")
        self._say(f"namespaces: {', '.join(present) or '-'}")
        if lab is None:
            return 1
        self._say(
            f"status page: {lab.url}  accelerator: {lab.accel}  dhcp: {lab.dhcp}  "
            f"state: {self.s.state}"
        )
        for name, p in lab.procs.items():
            self._say(f"  {name:<8} pid {p.pid:<8} {'running' if p.alive() else 'gone'}")
        taps = self._taps() if self.switch_ns in present else []
        self._say(f"taps on {BRIDGE}: {', '.join(taps) or '-'}")
        db = self.s.state / "ztpd" / "ztpd.db"
        if db.exists():
            self.out.write(self.progress(lab, lambda _: None).table())
        return 0 if ok else 1

    def _taps(self) -> list[str]:
        out = Netns.attach(self.switch_ns).run(["ip", "-br", "link", "show", "type", "tun"])
        return [line.split("@")[0].split()[0] for line in out.stdout.splitlines() if line.strip()]
