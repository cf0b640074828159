"""Checks a rendered install config must pass before it is served.

Each check raises ``RenderError`` naming the file and what is wrong, or returns None:

- autoinstall ``user-data``: a ``#cloud-config`` YAML mapping whose ``autoinstall`` section
  passes ``AUTOINSTALL_SCHEMA`` (the parts of subiquity's published JSON schema that ztpd
  writes, taken from the autoinstall reference) plus subiquity's own rules the schema cannot
  say: ``identity`` or ``user-data`` must be present, and no autoinstall key may sit outside
  the ``autoinstall`` section of a cloud-config (subiquity refuses that since 24.04).
- cloud-config (``meta-data``, ``vendor-data``, the image seed): YAML mappings.
- preseed: ``debconf-set-selections --checkonly`` (Debian's debconf). Where the tool is not
  installed the check is skipped with a warning, as the issue allows; the appliance and CI
  have it.
- kickstart: pykickstart's parser for the release's syntax version (what ``ksvalidator``
  runs), with warnings (deprecated or removed commands) treated as errors.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import warnings
from typing import Any

import jsonschema
import yaml
from pykickstart.errors import KickstartError
from pykickstart.parser import KickstartParser
from pykickstart.version import makeVersion

from ztpd.errors import RenderError

log = logging.getLogger("ztpd.install.checks")

_COMMANDS: dict[str, Any] = {
    "type": "array",
    "items": {"type": ["string", "array"], "items": {"type": "string"}},
}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_MATCH: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("name", "macaddress", "driver")},
    "additionalProperties": False,
}
# Subiquity's autoinstall schema (autoinstall-schema.json in its repository), the keys ztpd
# uses; a key ztpd does not know is refused, so a template typo cannot slip through unseen.
AUTOINSTALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "interactive-sections": _STRINGS,
        "early-commands": _COMMANDS,
        "late-commands": _COMMANDS,
        "error-commands": _COMMANDS,
        "reporting": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"type": {"type": "string"}},
                "required": ["type"],
            },
        },
        "user-data": {"type": "object"},
        "packages": _STRINGS,
        "locale": {"type": "string"},
        "timezone": {"type": "string"},
        "keyboard": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("layout", "variant", "toggle")},
            "required": ["layout"],
            "additionalProperties": False,
        },
        "refresh-installer": {
            "type": "object",
            "properties": {"update": {"type": "boolean"}, "channel": {"type": "string"}},
            "additionalProperties": False,
        },
        "network": {
            "type": "object",
            "properties": {
                "version": {"type": "integer", "minimum": 2, "maximum": 2},
                "ethernets": {
                    "type": "object",
                    "additionalProperties": {"type": "object", "properties": {"match": _MATCH}},
                },
                "vlans": {"type": "object"},
                "bonds": {"type": "object"},
                "bridges": {"type": "object"},
            },
            "required": ["version"],
        },
        "proxy": {"type": ["string", "null"]},
        "apt": {
            "type": "object",
            "properties": {
                "preserve_sources_list": {"type": "boolean"},
                "primary": {"type": "array"},
                "geoip": {"type": "boolean"},
                "sources": {"type": "object"},
                "fallback": {"enum": ["abort", "continue-anyway", "offline-install"]},
            },
        },
        "storage": {"type": "object"},
        "identity": {
            "type": "object",
            "properties": {
                k: {"type": "string"} for k in ("realname", "username", "hostname", "password")
            },
            "required": ["username", "hostname", "password"],
            "additionalProperties": False,
        },
        "ssh": {
            "type": "object",
            "properties": {
                "install-server": {"type": "boolean"},
                "authorized-keys": _STRINGS,
                "allow-pw": {"type": "boolean"},
            },
            "additionalProperties": False,
        },
        "shutdown": {"enum": ["reboot", "poweroff"]},
    },
    "required": ["version"],
    "additionalProperties": False,
}
AUTOINSTALL_KEYS = frozenset(AUTOINSTALL_SCHEMA["properties"])


def _yaml_mapping(name: str, text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RenderError(f"{name}: not valid YAML: {e}", detail={"file": name}) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RenderError(f"{name}: expected a YAML mapping", detail={"file": name})
    return data


def check_cloud_config(name: str, text: str) -> dict[str, Any]:
    if not text.startswith("#cloud-config\n"):
        raise RenderError(f"{name}: a cloud-config must start with #cloud-config")
    return _yaml_mapping(name, text)


def check_yaml(name: str, text: str) -> None:
    _yaml_mapping(name, text)


def check_autoinstall(name: str, text: str) -> None:
    doc = check_cloud_config(name, text)
    misplaced = sorted(AUTOINSTALL_KEYS & (set(doc) - {"autoinstall"}))
    if misplaced:
        raise RenderError(f"{name}: autoinstall keys outside autoinstall: {', '.join(misplaced)}")
    section = doc.get("autoinstall")
    if not isinstance(section, dict):
        raise RenderError(f"{name}: no autoinstall section")
    errors = sorted(
        jsonschema.Draft7Validator(AUTOINSTALL_SCHEMA).iter_errors(section),
        key=lambda e: list(e.absolute_path),
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "autoinstall"
        raise RenderError(f"{name}: {where}: {errors[0].message}", detail={"file": name})
    if "identity" not in section and "user-data" not in section:
        raise RenderError(f"{name}: autoinstall needs identity or user-data")


def check_preseed(name: str, text: str) -> None:
    tool = shutil.which("debconf-set-selections")
    if tool is None:
        log.warning("install check skipped file=%s reason=no debconf-set-selections", name)
        return
    try:
        done = subprocess.run(
            [tool, "--checkonly"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RenderError(f"{name}: debconf-set-selections failed: {e}") from None
    if done.returncode != 0 or done.stderr.strip():
        reason = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[0]
        raise RenderError(f"{name}: debconf-set-selections --checkonly: {reason}")


def check_kickstart(name: str, text: str, syntax: str) -> None:
    """``syntax`` is a pykickstart version name: RHEL8, RHEL9, F40 ..."""
    try:
        handler = makeVersion(syntax)
    except KickstartError as e:
        raise RenderError(f"{name}: no kickstart syntax {syntax}: {e}") from None
    parser = KickstartParser(handler, followIncludes=False, unknownSectionIsFatal=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parser.readKickstartFromString(text)
        except KickstartError as e:
            first = str(e).strip().splitlines()
            raise RenderError(f"{name}: kickstart: {' '.join(first)[:300]}") from None
    if caught:
        raise RenderError(f"{name}: kickstart ({syntax}): {caught[0].message}")
