"""The command line: the only module that reads argv and the environment, and the only one that
decides exit status (0 ok, 1 the command failed, 2 bad usage, config or store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ztpd import __version__, config, images, log, profiles
from ztpd.app import Appliance, check, make_lifecycle, open_store
from ztpd.errors import ConfigError, StoreError, ZtpdError
from ztpd.images import discovery, importer, installers
from ztpd.lab import Lab, Settings
from ztpd.lab import forward as lab_forward
from ztpd.lifecycle import Trigger
from ztpd.matcher import Matcher
from ztpd.model import Event, Node
from ztpd.store import Events, Nodes, Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

ACTIONS = {
    "retry": Trigger.RETRY,
    "reprovision": Trigger.REPROVISION,
    "retire": Trigger.RETIRE,
    "approve": Trigger.APPROVE,
}


# --- formatting ----------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _ago(ts: float, now: float) -> str:
    s = max(0, int(now - ts))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def format_event(e: Event) -> str:
    move = f" {e.from_state or '-'} -> {e.to_state}" if e.to_state else ""
    detail = " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(e.detail.items())
    )
    node = f"node={e.node_id}" if e.node_id is not None else "node=-"
    return f"{_when(e.ts)}  #{e.id} {node} {e.kind}{move} cause={e.cause} {detail}".rstrip()


def print_nodes(nodes: list[Node], out: TextIO, now: float) -> None:
    rows = [["ID", "NAME", "STATE", "PROFILE", "IP", "MACS", "IN STATE", "REASON"]]
    for n in nodes:
        rows.append(
            [
                str(n.id),
                n.name,
                n.state,
                n.profile or "-",
                n.ip or "-",
                ",".join(n.macs) or "-",
                _ago(n.state_since, now),
                n.reason or "",
            ]
        )
    _table(rows, out)


def print_node(node: Node, events: list[Event], out: TextIO) -> None:
    fields: list[tuple[str, Any]] = [
        ("id", node.id),
        ("name", node.name),
        ("state", node.state),
        ("since", _when(node.state_since)),
        ("reason", node.reason),
        ("failed in", node.failed_from),
        ("deadline", _when(node.deadline) if node.deadline else None),
        ("profile", node.profile),
        ("hostname", node.hostname),
        ("macs", ", ".join(node.macs)),
        ("uuid", node.uuid),
        ("serial", node.serial),
        ("ip", node.ip),
        ("arch", node.arch),
        ("created", _when(node.created_at)),
    ]
    for key, value in fields:
        if value not in (None, ""):
            out.write(f"{key + ':':<11}{value}\n")
    if node.facts:
        out.write("facts:\n")
        for k, v in sorted(node.facts.items()):
            out.write(f"  {k}: {json.dumps(v)}\n")
    out.write("events:\n")
    for e in events:
        out.write(f"  {format_event(e)}\n")


def _json(obj: Any, out: TextIO) -> None:
    out.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# --- commands ------------------------------------------------------------------------------------


class Ctx:
    """What every command gets: the validated config and where to write."""

    def __init__(self, cfg: config.Config, out: TextIO, err: TextIO) -> None:
        self.config = cfg
        self.out = out
        self.err = err

    def store(self) -> Store:
        return open_store(self.config)


def cmd_serve(ctx: Ctx, args: argparse.Namespace) -> int:
    log.setup(ctx.config.log.level)
    store = ctx.store()
    appliance = Appliance(ctx.config, store)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop, hup = asyncio.Event(), asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hup.set)
        await appliance.run(stop, hup)

    try:
        asyncio.run(main())
    finally:
        store.close()
    return EXIT_OK


def cmd_check(ctx: Ctx, args: argparse.Namespace) -> int:
    # Reaching here means the config itself validated (main() loaded it).
    report = check(ctx.config)
    for line in report.ok:
        ctx.out.write(f"ok: {line}\n")
    for line in report.warnings:
        ctx.out.write(f"warning: {line}\n")
    for line in report.problems:
        ctx.err.write(f"{line}\n")
    if report.problems:
        ctx.err.write(f"ztpd check: {len(report.problems)} problem(s)\n")
        return EXIT_FAILED
    return EXIT_OK


def cmd_images(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.images_cmd == "import":
        if args.file is None or not args.name:
            ctx.err.write("ztpd images import: needs FILE and --name NAME\n")
            return EXIT_USAGE
        built = importer.import_image(
            ctx.config.images_dir, args.file, args.name, replace=args.replace
        ).to_dict()
    elif args.images_cmd == "build":
        built = discovery.build(
            ctx.config.images_dir, refresh=args.refresh, firmware=args.firmware
        ).to_dict()
    else:
        built = images.fetch(ctx.config.images_dir, refresh=args.refresh).to_dict()
        for release, got in installers.fetch(ctx.config.images_dir, refresh=args.refresh).items():
            for name, entry in got.files.items():
                built["files"][f"{installers.INSTALLERS}/{release}/{name}"] = entry
    if args.json:
        _json(built, ctx.out)
    else:
        for name in sorted(built.get("files", {})):
            ctx.out.write(f"{name}\n")
    return EXIT_OK


def cmd_match(ctx: Ctx, args: argparse.Namespace) -> int:
    store = ctx.store()
    node = Nodes(store).find(args.node)
    catalog = profiles.ProfileCatalog(ctx.config.profiles_dir)
    catalog.reload()
    for p in catalog.problems:
        ctx.err.write(f"{p}\n")
    result = Matcher(store, make_lifecycle(ctx.config, store), catalog).explain(node)
    if args.json:
        _json(result.to_json(), ctx.out)
    elif args.explain:
        ctx.out.write(profiles.format_explanation(result))
    else:
        ctx.out.write(f"{node.name}: {result.winner or 'no profile'} ({result.reason})\n")
    return EXIT_OK


def cmd_simulate(ctx: Ctx, args: argparse.Namespace) -> int:
    report = profiles.simulate(args.profiles_dir or ctx.config.profiles_dir, args.inventories)
    if args.json:
        _json(report.to_json(), ctx.out)
    else:
        ctx.out.write(profiles.format_simulation(report, explain=args.explain).rstrip("\n") + "\n")
    return EXIT_OK


def cmd_nodes(ctx: Ctx, args: argparse.Namespace) -> int:
    store = ctx.store()
    nodes = Nodes(store)
    if args.nodes_cmd == "show":
        node = nodes.find(args.node)
        events = Events(store).list(node_id=node.id, limit=args.limit)
        if args.json:
            _json({**node.to_dict(), "events": [e.to_dict() for e in events]}, ctx.out)
        else:
            print_node(node, events, ctx.out)
        return EXIT_OK
    found = nodes.list(states=args.state or ())
    if args.json:
        _json([n.to_dict() for n in found], ctx.out)
    elif found:
        print_nodes(found, ctx.out, store.clock())
    else:
        ctx.out.write("no nodes\n")
    return EXIT_OK


def cmd_events(ctx: Ctx, args: argparse.Namespace) -> int:
    store = ctx.store()
    events = Events(store)
    node_id = Nodes(store).find(args.node).id if args.node else None
    shown = list(reversed(events.list(node_id=node_id, limit=args.limit, newest_first=True)))

    def emit(batch: list[Event]) -> None:
        for e in batch:
            ctx.out.write(
                (json.dumps(e.to_dict(), sort_keys=True) if args.json else format_event(e)) + "\n"
            )
        ctx.out.flush()

    emit(shown)
    if not args.follow:
        return EXIT_OK
    last = shown[-1].id if shown else events.last_id()
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        batch = events.list(node_id=node_id, after=last, limit=500)
        if batch:
            emit(batch)
            last = batch[-1].id
        else:
            time.sleep(args.interval)
    return EXIT_OK


def cmd_node(ctx: Ctx, args: argparse.Namespace) -> int:
    store = ctx.store()
    node = Nodes(store).find(args.node)
    detail: dict[str, Any] = {"by": "cli"}
    lifecycle = make_lifecycle(ctx.config, store)
    if args.action == "retire":  # --wipe, else the profile's os.wipe.on_retire
        t = lifecycle.retire(node.id, args.wipe, cause="retire", detail=detail, reason=args.reason)
    else:
        t = lifecycle.fire(
            node.id, ACTIONS[args.action], cause=args.action, detail=detail, reason=args.reason
        )
    if args.json:
        _json(t.node.to_dict(), ctx.out)
    else:
        ctx.out.write(f"node {t.node.id} ({t.node.name}): {t.from_state} -> {t.to_state}\n")
    return EXIT_OK


def cmd_lab(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.lab_cmd == "forward":
        host, _, port = args.to.rpartition(":")
        lab_forward.run(args.fd, host, int(port))
        return EXIT_OK
    cfg = ctx.config
    lab = Lab(
        Settings(
            state=args.state.resolve(),
            profiles_dir=cfg.profiles_dir,
            templates_dir=cfg.templates_dir,
            images_dir=cfg.images_dir,
            port=args.port,
            python=sys.executable,
            env=dict(os.environ),
            name=args.name,
            build_discovery=not args.no_discovery_build,
        ),
        ctx.out,
    )
    if args.lab_cmd == "up":
        return lab.up(args.nodes, args.firmware, args.timeout, args.dhcp)
    if args.lab_cmd == "down":
        lab.down()
        return EXIT_OK
    if args.lab_cmd == "restart-ztpd":
        lab.restart_ztpd(signal.SIGKILL if args.kill else signal.SIGTERM)
        return EXIT_OK
    if args.lab_cmd == "reboot":
        lab.reboot(args.vm)
        return EXIT_OK
    return lab.status()


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: $ZTPD_CONFIG, else /etc/ztpd/ztpd.yaml if it "
        "exists, else the embedded demo default)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="ztpd",
        description="Zero-touch provisioning for edge sites: DHCP/PXE, boot delivery, discovery, "
        "profile matching and OS install for bare-metal nodes.",
        epilog="Config keys can be overridden with ZTPD_<SECTION>__<KEY>=value, e.g. "
        "ZTPD_HTTP__PORT=8081 or ZTPD_STATE_DIR=/tmp/ztpd.",
    )
    p.add_argument("--version", action="version", version=f"ztpd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "serve",
        parents=[common],
        help="run the daemon in the foreground",
        description="Run ztpd: DHCP/TFTP/HTTP services and lifecycle workers in "
        "one process. SIGTERM/SIGINT stop it cleanly; SIGHUP reloads "
        "profiles and templates.",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "check",
        parents=[common],
        help="validate config, profiles and templates",
        description="Validate the config, profiles, templates and boot files. "
        "Lists every problem as file:line:column; exit 1 if any.",
    )
    s.set_defaults(func=cmd_check)

    s = sub.add_parser(
        "images",
        parents=[common],
        help="fetch the boot loaders, build the discovery image, import OS images",
        description="fetch: take the iPXE loaders (undionly.kpxe, ipxe.efi, snponly.efi) from "
        "Debian's ipxe package (apt-get download + dpkg -x), record their sha256 in "
        "images_dir/manifest.json; and the installers Debian packages carry (the netboot "
        "installer into images_dir/installers/debian-12/). build: assemble the discovery "
        "kernel and initrd from Debian packages (images_dir/discovery/). Both re-run offline "
        "from their cached packages. import FILE --name NAME: register a disk image (raw, "
        "raw.gz, raw.zst or qcow2) for os.method image as images_dir/os/NAME/ (raw, raw.zst, "
        "manifest.json); importing the same file again changes nothing.",
    )
    s.add_argument("images_cmd", choices=["fetch", "build", "import"], metavar="fetch|build|import")
    s.add_argument("file", nargs="?", type=Path, metavar="FILE", help="import: the image file")
    s.add_argument("--name", help="import: the image's name (what profiles put in os.image)")
    s.add_argument(
        "--replace",
        action="store_true",
        help="import: overwrite an image registered under NAME with other content",
    )
    s.add_argument("--refresh", action="store_true", help="download the package again")
    s.add_argument(
        "--firmware",
        action="store_true",
        help="build: add the non-free NIC firmware the drivers name (Debian non-free-firmware)",
    )
    s.set_defaults(func=cmd_images)

    s = sub.add_parser(
        "match",
        parents=[common],
        help="which profile a node gets, and why",
        description="Evaluate the current profiles against a node's latest inventory and facts, "
        "without changing anything. --explain shows every profile, every condition, the node's "
        "actual value and pass/fail, and why the winner won.",
    )
    s.add_argument("node", metavar="NODE")
    s.add_argument("--explain", action="store_true", help="show every condition")
    s.set_defaults(func=cmd_match)

    s = sub.add_parser(
        "simulate",
        parents=[common],
        help="run profiles against saved inventories",
        description="Match every inventory JSON file in DIR against the profiles and print "
        "which profile each would get and why: test a profile change before any machine is "
        "powered on.",
    )
    s.add_argument("inventories", type=Path, metavar="DIR")
    s.add_argument(
        "--profiles",
        dest="profiles_dir",
        type=Path,
        metavar="DIR",
        help="profiles to test (default: profiles_dir from the config)",
    )
    s.add_argument("--explain", action="store_true", help="show every condition")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser(
        "nodes",
        parents=[common],
        help="list nodes or show one",
        description="List nodes (optionally by state) or show one node with its "
        "events. NODE is an id, MAC, UUID, serial or hostname.",
    )
    nsub = s.add_subparsers(dest="nodes_cmd", metavar="list|show")
    ls = nsub.add_parser("list", parents=[common], help="list nodes")
    ls.add_argument("--state", action="append", help="only nodes in this state (repeatable)")
    sh = nsub.add_parser("show", parents=[common], help="show one node and its events")
    sh.add_argument("node", metavar="NODE")
    sh.add_argument("--limit", type=int, default=50, help="events to show (default 50)")
    s.set_defaults(func=cmd_nodes, nodes_cmd="list", state=None)

    s = sub.add_parser(
        "events",
        parents=[common],
        help="print the event log",
        description="Print recent events, oldest first; --follow keeps printing "
        "new ones as they are committed (also those of a running "
        "daemon) until interrupted.",
    )
    s.add_argument("--node", metavar="NODE", help="only this node's events")
    s.add_argument("--limit", type=int, default=50, help="how many recent events (default 50)")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    s.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_events)

    s = sub.add_parser(
        "node",
        parents=[common],
        help="act on a node (retry, reprovision, ...)",
        description="Apply a lifecycle action: retry (re-enter the state a failed "
        "node failed in), reprovision (back to matched: install "
        "again), retire (end its life), approve (a node awaiting "
        "approval). An action the lifecycle does not allow exits 1.",
    )
    s.add_argument("action", choices=sorted(ACTIONS))
    s.add_argument("node", metavar="NODE")
    s.add_argument("--reason", help="recorded with the event")
    s.add_argument(
        "--wipe",
        choices=["none", "metadata", "full"],
        help="with retire: what to erase on the node's disks (default: its profile's "
        "os.wipe.on_retire, none without one)",
    )
    s.set_defaults(func=cmd_node)

    s = sub.add_parser(
        "lab",
        parents=[common],
        help="a virtual edge LAN of QEMU VMs served by ztpd (root)",
        description="Build an isolated LAN from network namespaces, run ztpd on it (DHCP, TFTP, "
        "HTTP) and power on VMs that PXE boot from it; the status page is forwarded to "
        "127.0.0.1 only. Profiles, templates and images come from the config's directories.",
    )
    s.add_argument("--state", type=Path, default=Path("state/lab"), help="default state/lab")
    s.add_argument("--name", default="ztpd-lab", help="namespace prefix (default ztpd-lab)")
    s.add_argument("--port", type=int, default=8480, help="host port of the page (default 8480)")
    lsub = s.add_subparsers(
        dest="lab_cmd", required=True, metavar="up|down|status|restart-ztpd|reboot"
    )
    up = lsub.add_parser("up", help="start the lab (idempotent) and follow its nodes")
    up.add_argument("--nodes", type=int, default=3, help="how many VMs (default 3)")
    up.add_argument("--firmware", choices=["bios", "uefi", "mixed"], default="mixed")
    up.add_argument("--timeout", type=float, default=2400, help="seconds to follow (default 2400)")
    up.add_argument(
        "--dhcp",
        choices=["full", "proxy"],
        default="full",
        help="full: ztpd hands out addresses; proxy: dnsmasq does, ztpd only the boot",
    )
    up.add_argument(
        "--no-discovery-build",
        action="store_true",
        help="do not build a missing discovery image (VMs stop at the discovery boot)",
    )
    lsub.add_parser("down", help="remove every namespace, process and file of the lab")
    lsub.add_parser("status", help="what the lab runs, and where its nodes are")
    rz = lsub.add_parser("restart-ztpd", help="stop ztpd (SIGTERM) and start it again")
    rz.add_argument("--kill", action="store_true", help="SIGKILL instead: a crash")
    rb = lsub.add_parser("reboot", help="power-cycle a VM (it PXE boots again)")
    rb.add_argument("vm", metavar="VM", help="e.g. vm1")
    fw = lsub.add_parser("forward")  # internal: started by `lab up` inside the lab
    fw.add_argument("--fd", type=int, required=True)
    fw.add_argument("--to", required=True)
    s.set_defaults(func=cmd_lab, no_discovery_build=False)
    return p


def resolve_config_path(arg: Path | None, env: Mapping[str, str]) -> Path | None:
    if arg is not None:
        return arg
    if env.get("ZTPD_CONFIG"):
        return Path(env["ZTPD_CONFIG"])
    return config.DEFAULT_PATH if config.DEFAULT_PATH.exists() else None


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    func: Callable[[Ctx, argparse.Namespace], int] = args.func
    try:
        cfg = config.load(resolve_config_path(args.config, env), env, Path.cwd())
        return func(Ctx(cfg, out, err), args)
    except (ConfigError, StoreError) as e:
        err.write(f"ztpd: {e}\n")
        return EXIT_USAGE
    except ZtpdError as e:
        err.write(f"ztpd: {e.message}\n")
        return EXIT_FAILED
    except BrokenPipeError:
        return EXIT_OK
