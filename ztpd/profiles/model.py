"""The typed shape of a profile file: what pydantic checks before ztpd checks the meaning.

Field names, types and allowed words live here; ``ztpd/data/profile.schema.json`` is generated
from these models (``json_schema()``), so editors complete and check exactly what ztpd accepts.
The meaning of conditions (facts, operators, units, regexes) and of the hostname template is
checked in ``conditions`` and ``templates``, which need the fact registry.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from ztpd.profiles.facts import FIELDS
from ztpd.profiles.ops import COMPARISONS, OPERATORS
from ztpd.profiles.units import parse_size

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def _name(value: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise ValueError("a profile name is lower-case letters, digits and '-' (at most 63)")
    return value


Name = Annotated[
    str,
    pydantic.AfterValidator(_name),
    Field(json_schema_extra={"pattern": NAME_PATTERN}, description="lower-case letters, digits, -"),
]
Size = Annotated[
    int,
    pydantic.BeforeValidator(parse_size, json_schema_input_type=int | str),
    Field(description="bytes, or a quantity such as 480GB or 64GiB"),
]
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SSH_KEY = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")
_CRYPT = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7)\$\S+$")


def _relative_path(value: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or not value:
        raise ValueError("must be a relative path inside the site directory, without '..'")
    return value


def _url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("must be an http:// or https:// URL")
    return value


RelPath = Annotated[str, pydantic.AfterValidator(_relative_path)]
Url = Annotated[str, pydantic.AfterValidator(_url)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CountSpec(Strict):
    """How many list elements (those passing ``where``) there must be."""

    op: str = Field(description="a comparison", json_schema_extra={"enum": list(COMPARISONS)})
    value: Annotated[int, Field(ge=0)]


class Condition(Strict):
    """One requirement; exactly one of op, count, any, all."""

    field: str = Field(
        description="a fact name such as cpu.count or disks",
        json_schema_extra={"examples": [name for name in sorted(FIELDS)]},
    )
    op: str | None = Field(
        default=None,
        description="an operator for a single-valued fact",
        json_schema_extra={"enum": [*OPERATORS, None]},
    )
    value: Any = Field(
        default=None, description="what op compares with; units accepted where they apply"
    )
    count: CountSpec | None = Field(default=None, description="for lists: how many elements")
    where: list[Condition] | None = Field(
        default=None, description="with count: which elements count"
    )
    any: list[Condition] | None = Field(
        default=None, description="for lists: some element meets all"
    )
    all: list[Condition] | None = Field(
        default=None, description="for lists: every element meets all"
    )


class RootDisk(Strict):
    """Which disk the OS goes on: the hints narrow the candidates, prefer picks among them."""

    prefer: Literal["smallest", "largest", "smallest-ssd", "largest-ssd", "first"] = "smallest"
    name: str | None = None
    serial: str | None = None
    wwn: str | None = None
    by_path: str | None = None
    model: str | None = None
    rotational: bool | None = None
    min_size: Size | None = None
    max_size: Size | None = None

    @pydantic.model_validator(mode="after")
    def _sizes_in_order(self) -> RootDisk:
        low, high = self.min_size, self.max_size
        if low is not None and high is not None and low > high:
            raise ValueError("min_size is larger than max_size: no disk could fit")
        return self


class User(Strict):
    name: str
    ssh_keys: list[str] = []
    sudo: bool = False
    shell: str = "/bin/bash"
    groups: list[str] = []
    # A crypt(3) hash, never a clear-text password; omit it for key-only logins.
    password_hash: str | None = None

    @pydantic.field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _USER.match(v):
            raise ValueError("not a valid user name (lower-case letters, digits, _ and -)")
        return v

    @pydantic.field_validator("ssh_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if not _SSH_KEY.match(k.strip()):
                raise ValueError("not an SSH public key (expected 'ssh-ed25519 AAAA... comment')")
        return keys

    @pydantic.field_validator("password_hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is not None and not _CRYPT.match(v):
            raise ValueError(
                "must be a crypt hash such as $6$... (mkpasswd -m sha-512), "
                "never a clear-text password"
            )
        return v


class Network(Strict):
    mode: Literal["dhcp", "static"] = "dhcp"
    # "pxe" = the interface the node booted from; else a kernel name or a MAC.
    interface: str = "pxe"
    address: ipaddress.IPv4Interface | None = Field(
        default=None, description="with prefix, 10.0.0.5/24"
    )
    gateway: ipaddress.IPv4Address | None = None
    dns: list[ipaddress.IPv4Address] = []
    vlan: Annotated[int, Field(ge=1, le=4094)] | None = None
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = None

    @pydantic.model_validator(mode="after")
    def _static_needs_address(self) -> Network:
        if self.mode == "static" and self.address is None:
            raise ValueError("mode static needs an address (e.g. 10.0.0.5/24)")
        if self.mode == "dhcp" and (self.address is not None or self.gateway is not None):
            raise ValueError("address and gateway apply only to mode static")
        return self


WipeLevel = Literal["none", "metadata", "full"]


class Wipe(Strict):
    # metadata: partition tables and signatures; full: every byte.
    on_install: WipeLevel = Field(default="none", description="disks other than the root disk")
    on_retire: WipeLevel = "metadata"


class Os(Strict):
    method: Literal["image", "autoinstall", "preseed", "kickstart"]
    release: str | None = Field(default=None, description="e.g. ubuntu-24.04, debian-12, rocky-9")
    image: str | None = Field(default=None, description="a registered image, for method image")
    root_disk: RootDisk = RootDisk()
    hostname: str | None = Field(
        default=None, description="jinja2 over facts: edge-{{ system.serial }}"
    )
    users: list[User] = []
    network: Network = Network()
    packages: list[str] = []
    wipe: Wipe = Wipe()

    @pydantic.model_validator(mode="after")
    def _method_needs(self) -> Os:
        if self.method == "image" and not self.image:
            raise ValueError("method image needs image: (the name of a registered image)")
        if self.method != "image" and not self.release:
            raise ValueError(f"method {self.method} needs release: (e.g. debian-12)")
        names = [u.name for u in self.users]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"user {dup[0]!r} is listed twice")
        return self


class Platform(Strict):
    """What runs after the OS is up: an Ansible playbook or role with variables."""

    playbook: RelPath | None = None
    role: str | None = None
    vars: dict[str, Any] = {}

    @pydantic.model_validator(mode="after")
    def _something_to_run(self) -> Platform:
        if not self.playbook and not self.role:
            raise ValueError("platform needs a playbook or a role")
        return self


class Target(Strict):
    """Where a ready node is announced. Secrets are named by file, never written inline."""

    type: Literal["webhook", "k3s", "kubeedge"]
    url: Url | None = Field(default=None, description="webhook: where to POST the node")
    secret_file: str | None = Field(default=None, description="webhook: HMAC key file")
    role: Literal["server", "agent"] | None = Field(
        default=None, description="k3s: server or agent"
    )
    server: Url | None = Field(default=None, description="k3s: join URL; unset = the first server")
    token_file: str | None = Field(default=None, description="k3s/kubeedge: join token file")
    cloudcore: str | None = Field(default=None, description="kubeedge: cloudcore host:port")

    @pydantic.model_validator(mode="after")
    def _fields_for_type(self) -> Target:
        needs = {"webhook": ("url",), "k3s": ("role",), "kubeedge": ("cloudcore",)}[self.type]
        allowed = {
            "webhook": {"url", "secret_file"},
            "k3s": {"role", "server", "token_file"},
            "kubeedge": {"cloudcore", "token_file"},
        }[self.type]
        for name in needs:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.type} target needs {name}")
        extra = sorted((self.model_fields_set - {"type"}) - allowed)
        if extra:
            raise ValueError(f"{', '.join(extra)} does not apply to a {self.type} target")
        return self


class Register(Strict):
    targets: list[Target] = []


class Profile(Strict):
    """One kind of machine: which nodes it takes and what they become."""

    name: Name
    description: str = ""
    extends: Name | None = Field(default=None, description="another profile this one starts from")
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    max_count: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="stop after N nodes"
    )
    approve: Literal["auto", "manual"] = "auto"
    match: list[Condition] = []
    os: Os | None = None
    platform: Platform | None = None
    # "register" would shadow BaseModel's ABC method, hence the alias.
    register_: Register | None = Field(default=None, alias="register")


# Keys _defaults.yaml may set: what profiles do, never which nodes they take.
DEFAULTS_KEYS = ("approve", "os", "platform", "register")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a profile file (one profile or a list), for editors."""
    one = Profile.model_json_schema(ref_template="#/$defs/{model}")
    defs = one.pop("$defs", {})
    defs["Profile"] = one
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ztpd.invalid/profile.schema.json",
        "title": "ztpd profile file",
        "description": "One profile, or a list of profiles (see profiles/README.md).",
        "anyOf": [
            {"$ref": "#/$defs/Profile"},
            {"type": "array", "items": {"$ref": "#/$defs/Profile"}},
        ],
        "$defs": defs,
    }
