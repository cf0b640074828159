"""The configuration: one YAML file, validated at start, with ``ZTPD_*`` environment overrides.

This module only turns text into a typed, frozen ``Config``; it never reads the process
environment itself (``cli.py`` passes it in), so every other module receives what it needs
through its constructor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from ztpd import yamlsrc
from ztpd.dhcp.arch import KINDS
from ztpd.errors import ConfigError, Problem, SourceError
from ztpd.identity import normalize_mac

DEFAULT_PATH = Path("/etc/ztpd/ztpd.yaml")
EMBEDDED = "embedded default"
ENV_PREFIX = "ZTPD_"
# Variables that choose *which* config to read rather than overriding a key in it.
ENV_NOT_KEYS = frozenset({"ZTPD_CONFIG"})

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_addresses(values: list[str]) -> list[str]:
    for v in values:
        ipaddress.ip_address(v)
    return values


Addresses = Annotated[list[str], pydantic.AfterValidator(_check_addresses)]


def _check_ipv4(value: str) -> str:
    return str(ipaddress.IPv4Address(value))


def _check_ipv4_net(value: str) -> str:
    return str(ipaddress.IPv4Network(value, strict=True))


IPv4 = Annotated[str, pydantic.AfterValidator(_check_ipv4)]
IPv4Network = Annotated[str, pydantic.AfterValidator(_check_ipv4_net)]
Mac = Annotated[str, pydantic.AfterValidator(normalize_mac)]


class ApiToken(Section):
    """A bearer token for the API and the page; ``token`` inline or ``token_file`` (one of them).

    A token file must be readable by ztpd only (mode 0600 or 0400); its content is the token.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]  # who; shown in logs
    role: Literal["viewer", "admin"]
    token: Annotated[pydantic.SecretStr, Field(min_length=16)] | None = None
    token_file: Path | None = None

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token, token_file")
        if self.token_file is not None and not self.token_file.is_absolute():
            raise ValueError("token_file must be an absolute path")
        return self

    def secret(self) -> str:
        """The token; reads token_file (ConfigError naming the token if it is unusable)."""
        if self.token is not None:
            return self.token.get_secret_value()
        assert self.token_file is not None
        where = f"http.auth.tokens name={self.name} token_file {self.token_file}"
        try:
            mode = self.token_file.stat().st_mode
            value = self.token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from None
        if mode & 0o077:
            raise ConfigError(f"{where}: readable by others (mode {mode & 0o777:o}); chmod 600")
        if len(value) < 16:
            raise ConfigError(f"{where}: the token must be at least 16 characters")
        return value


class AuthConfig(Section):
    """Who may read (viewer) and act (admin) through the API and the page."""

    tokens: list[ApiToken] = []
    # Reads without a token (a lab on a closed network); actions always need an admin.
    anonymous_read: bool = False
    # Prometheus scrapes /metrics without a token unless this is false.
    anonymous_metrics: bool = True
    session_ttl: Seconds = 8 * 3600  # how long a page login lasts

    @pydantic.model_validator(mode="after")
    def _unique_names(self) -> AuthConfig:
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"token name {dup[0]!r} is used twice")
        return self


class HttpConfig(Section):
    listen: Addresses = ["127.0.0.1"]
    port: Port = 8080
    # The base URL nodes use to reach ztpd; derived from the first listen address when unset.
    public_url: str | None = None
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    # Seconds a connection may take to send a whole request's headers (also the idle time
    # between keep-alive requests): slow or dead clients are closed, not held forever.
    request_timeout: Annotated[float, Field(gt=0, le=3600)] = 30
    auth: AuthConfig = AuthConfig()

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.listen[0] if self.listen else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class TftpConfig(Section):
    enabled: bool = False
    listen: Addresses = ["127.0.0.1"]
    port: Port = 69
    # Seconds before a block is sent again, and how often, before a transfer is abandoned
    # (a client's RFC 2349 `timeout` option overrides the first, per transfer).
    timeout: Annotated[float, Field(gt=0, le=255)] = 2
    retries: Annotated[int, Field(ge=1, le=20)] = 5
    # Transfers at once; more are refused with a TFTP error instead of slowing everyone.
    max_transfers: Annotated[int, Field(ge=1, le=4096)] = 256


class DhcpOption(Section):
    """One extra option by number; exactly one value key says how it is encoded."""

    code: Annotated[int, Field(ge=1, le=254)]
    text: str | None = None
    ip: Addresses | None = None  # one or more IPv4 addresses
    u8: Annotated[int, Field(ge=0, le=0xFF)] | None = None
    u16: Annotated[int, Field(ge=0, le=0xFFFF)] | None = None
    u32: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    hex: Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2}[:]?)*$")] | None = None

    @pydantic.model_validator(mode="after")
    def _one_value(self) -> DhcpOption:
        given = [
            k for k in ("text", "ip", "u8", "u16", "u32", "hex") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError("give exactly one of text, ip, u8, u16, u32, hex")
        return self


class DhcpPool(Section):
    start: IPv4
    end: IPv4

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> DhcpPool:
        if ipaddress.IPv4Address(self.start) > ipaddress.IPv4Address(self.end):
            raise ValueError(f"pool start {self.start} is after its end {self.end}")
        return self


class DhcpReservation(Section):
    mac: Mac
    ip: IPv4
    hostname: str | None = None


class DhcpSubnet(Section):
    """A subnet ztpd is authoritative for in full mode (on an interface or behind a relay)."""

    subnet: IPv4Network
    pools: list[DhcpPool] = []
    reservations: list[DhcpReservation] = []
    router: IPv4 | None = None  # option 3
    dns: Addresses = []  # option 6
    domain: str | None = None  # option 15
    ntp: Addresses = []  # option 42
    lease_time: Annotated[int, Field(ge=60)] | None = None  # option 51; dhcp.lease_time if unset
    options: list[DhcpOption] = []

    @pydantic.model_validator(mode="after")
    def _inside(self) -> DhcpSubnet:
        net = ipaddress.IPv4Network(self.subnet)
        inside = [p.start for p in self.pools] + [p.end for p in self.pools]
        inside += [r.ip for r in self.reservations] + ([self.router] if self.router else [])
        for a in inside:
            if ipaddress.IPv4Address(a) not in net:
                raise ValueError(f"{a} is outside subnet {self.subnet}")
        return self


class DhcpBootConfig(Section):
    """What PXE, UEFI HTTP boot and iPXE clients are told to load."""

    # Firmware kind -> file on TFTP (and under http_boot_base for UEFI HTTP boot).
    files: dict[str, str] = {}
    # Option 93 architecture code -> firmware kind, overriding ztpd/dhcp/arch.py's table.
    arch: dict[Annotated[int, Field(ge=0, le=0xFFFF)], str] = {}
    # TFTP next-server (siaddr); the appliance's address on the receiving interface when unset.
    tftp_server: IPv4 | None = None
    # iPXE gets this script URL; <http.public_url>/boot.ipxe when unset.
    script_url: str | None = None
    # UEFI HTTP boot clients get <http_boot_base>/<file>; <http.public_url>/ipxe when unset.
    http_boot_base: str | None = None

    @pydantic.model_validator(mode="after")
    def _known_kinds(self) -> DhcpBootConfig:
        unknown = sorted({*self.arch.values(), *self.files} - KINDS)
        if unknown:
            raise ValueError(f"unknown firmware kinds {unknown}; known: {sorted(KINDS)}")
        return self


class DhcpRateLimit(Section):
    """Per-MAC token bucket: ``burst`` packets at once, refilled at ``per_second``."""

    per_second: Annotated[float, Field(gt=0)] = 10
    burst: Annotated[int, Field(ge=1)] = 20


class DhcpConfig(Section):
    mode: Literal["off", "proxy", "full"] = "off"
    # Interfaces ztpd binds DHCP to; empty while mode is off. Never all interfaces implicitly.
    interfaces: list[str] = []
    subnets: list[DhcpSubnet] = []  # full mode only
    lease_time: Annotated[int, Field(ge=60)] = 3600
    offer_timeout: Seconds = 60  # how long an offered address stays held for its client
    decline_quarantine: Seconds = 3600  # how long a declined (conflicting) address stays unused
    # When an ACK may leave: "full", once its lease is on disk (fsync: survives power loss);
    # "normal", once it is in the database file's WAL (survives ztpd being killed, as Kea's
    # memfile does, and commits cost far less; a power cut may forget the last leases).
    lease_sync: Literal["full", "normal"] = "full"
    boot: DhcpBootConfig = DhcpBootConfig()
    rate_limit: DhcpRateLimit = DhcpRateLimit()

    @pydantic.model_validator(mode="after")
    def _interfaces_when_serving(self) -> DhcpConfig:
        if self.mode != "off" and not self.interfaces:
            raise ValueError(f"mode {self.mode!r} needs at least one entry in dhcp.interfaces")
        if self.mode == "full" and not self.subnets:
            raise ValueError("mode 'full' needs at least one entry in dhcp.subnets")
        nets = [ipaddress.IPv4Network(s.subnet) for s in self.subnets]
        for i, a in enumerate(nets):
            for b in nets[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(f"subnets {a} and {b} overlap")
        return self


class TimeoutsConfig(Section):
    """How long a node may stay in each in-progress state before it fails."""

    inspecting: Seconds = 900
    # The whole stay, all phases; each phase also has its own limit (install.phases).
    deploying: Seconds = 3 * 3600
    configuring: Seconds = 3600
    retiring: Seconds = 12 * 3600  # the agent wipes the disks (a full wipe of big disks: hours)


class LifecycleConfig(Section):
    timeouts: TimeoutsConfig = TimeoutsConfig()
    # How often ztpd looks for expired deadlines (the next deadline wakes it sooner).
    sweep_interval: Seconds = 5
    # An inspecting node whose agent has spoken fails ("agent silent in inspecting") when it
    # is not heard from for this long; the agent heartbeats every 10 s by default.
    agent_silence: Seconds = 120


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class BootConfig(Section):
    """What the second-stage iPXE scripts (boot-templates/) put in front of a node."""

    # The discovery kernel and initrd, relative to images_dir (served under /files/).
    discovery_kernel: str = "discovery/vmlinuz"
    discovery_initrd: str = "discovery/initrd.img"
    # Extra kernel arguments for discovery; ztpd adds its URL, the node id and a token.
    discovery_args: str = "console=tty0 console=ttyS0,115200n8"
    # How long the one-time token in a discovery script stays valid, seconds.
    token_ttl: Seconds = 3600
    # What a failed or retired node does after saying why: boot its disk, or wait and ask again.
    on_failed: Literal["local", "wait"] = "local"
    on_retired: Literal["local", "wait"] = "wait"
    wait_seconds: Annotated[int, Field(ge=5, le=3600)] = 60


class InstallPhases(Section):
    """The phases of ``deploying``, each with its own deadline and reason when it passes. The
    first (image write or installer) starts when the node enters deploying; the agent's
    "written" or the installer's "finished" starts the first boot. A progress report moves the
    deadline of its phase to this long from then; lifecycle.timeouts.deploying caps them all."""

    image_write: Seconds = 1800  # to the agent's first report, and between its reports
    installer: Seconds = 3600  # to the installer's first report, between reports, to finished
    first_boot: Seconds = 1800  # from written/finished to the first-boot callback


class InstallConfig(Section):
    """What the distribution installers are told (autoinstall, preseed, kickstart)."""

    # Package mirror per distribution, as installers reach it. Upstream until the cache issue
    # lands; then ztpd's own cache URL.
    mirrors: dict[str, str] = {
        "debian": "http://deb.debian.org/debian",
        "ubuntu": "http://archive.ubuntu.com/ubuntu",
        "rocky": "http://dl.rockylinux.org/pub/rocky",
        "almalinux": "http://repo.almalinux.org/almalinux",
    }
    # An HTTP proxy the installers use for packages, e.g. http://10.0.0.1:3142.
    proxy: str | None = None
    # How long an install token stays valid after each use (config fetch, progress report),
    # seconds: an installer that keeps reporting keeps it; one silent this long loses it.
    token_ttl: Seconds = 4 * 3600
    phases: InstallPhases = InstallPhases()


class Config(Section):
    state_dir: Path = Path("/var/lib/ztpd")
    profiles_dir: Path = Path("/etc/ztpd/profiles")
    # How often ztpd looks for changed profile files (SIGHUP reloads at once), seconds.
    profiles_poll_interval: Seconds = 2
    templates_dir: Path = Path("/usr/share/ztpd/boot-templates")
    images_dir: Path = Path("/var/lib/ztpd/images")
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    tftp: TftpConfig = TftpConfig()
    dhcp: DhcpConfig = DhcpConfig()
    boot: BootConfig = BootConfig()
    install: InstallConfig = InstallConfig()
    lifecycle: LifecycleConfig = LifecycleConfig()
    # Where this config came from, for messages; not a key in the file.
    source: str = Field(default=EMBEDDED, exclude=True)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ztpd.db"


PATH_KEYS = ("state_dir", "profiles_dir", "templates_dir", "images_dir")


def embedded_text() -> bytes:
    return resources.files("ztpd").joinpath("data/default.yaml").read_bytes()


def _env_overrides(doc: yamlsrc.Doc, env: Mapping[str, str]) -> list[Problem]:
    """Apply ``ZTPD_SECTION__KEY=value`` onto doc.data; a value is read as a YAML scalar/flow."""
    problems: list[Problem] = []
    if not isinstance(doc.data, dict):
        return problems
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        origin = f"environment variable {name}"
        try:
            value = yaml.safe_load(env[name]) if env[name] != "" else ""
        except yaml.YAMLError:
            problems.append(Problem(origin, 0, 0, "value is not valid YAML"))
            continue
        target = doc.data
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                problems.append(Problem(origin, 0, 0, f"{part!r} is not a section"))
                break
        else:
            target[path[-1]] = value
            doc.origins[path] = origin
    return problems


def parse(raw: bytes, source: str, env: Mapping[str, str], base_dir: Path) -> Config:
    doc = yamlsrc.parse(raw, source)
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise SourceError([doc.problem((), "the config must be a mapping of keys to values")])
    problems = _env_overrides(doc, env)
    if problems:
        raise SourceError(problems)
    data: dict[str, Any] = dict(doc.data)
    for key in PATH_KEYS:  # relative paths are relative to the file that names them
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[key] = str(base_dir / value)
    data["source"] = source
    return yamlsrc.validate(Config, doc, data)


def load(path: Path | None, env: Mapping[str, str], cwd: Path) -> Config:
    """Read ``path``, or the embedded default when it is None (relative paths from ``cwd``)."""
    if path is None:
        return parse(embedded_text(), EMBEDDED, env, cwd)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SourceError([Problem(str(path), 0, 0, f"cannot read config: {e.strerror}")]) from None
    return parse(raw, str(path), env, (cwd / path).parent)
