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
from ztpd.errors import Problem, SourceError

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


class HttpConfig(Section):
    listen: Addresses = ["127.0.0.1"]
    port: Port = 8080
    # The base URL nodes use to reach ztpd; derived from the first listen address when unset.
    public_url: str | None = None
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20

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


class DhcpConfig(Section):
    mode: Literal["off", "proxy", "full"] = "off"
    # Interfaces ztpd binds DHCP to; empty while mode is off. Never all interfaces implicitly.
    interfaces: list[str] = []

    @pydantic.model_validator(mode="after")
    def _interfaces_when_serving(self) -> DhcpConfig:
        if self.mode != "off" and not self.interfaces:
            raise ValueError(f"mode {self.mode!r} needs at least one entry in dhcp.interfaces")
        return self


class TimeoutsConfig(Section):
    """How long a node may stay in each in-progress state before it fails."""

    inspecting: Seconds = 900
    deploying: Seconds = 3600
    configuring: Seconds = 3600


class LifecycleConfig(Section):
    timeouts: TimeoutsConfig = TimeoutsConfig()
    # How often ztpd looks for expired deadlines (the next deadline wakes it sooner).
    sweep_interval: Seconds = 5


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Section):
    state_dir: Path = Path("/var/lib/ztpd")
    profiles_dir: Path = Path("/etc/ztpd/profiles")
    templates_dir: Path = Path("/usr/share/ztpd/boot-templates")
    images_dir: Path = Path("/var/lib/ztpd/images")
    log: LogConfig = LogConfig()
    http: HttpConfig = HttpConfig()
    tftp: TftpConfig = TftpConfig()
    dhcp: DhcpConfig = DhcpConfig()
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
        path = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
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
