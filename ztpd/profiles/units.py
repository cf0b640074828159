"""Quantities as people write them: ``64GiB``, ``1.92TB``, ``900 GB`` sizes and ``10G`` speeds.

Sizes become bytes and speeds Mbit/s (the unit of ``interfaces.speed_mbps``). A bare number is
taken in the base unit. A size written with a bare ``G``/``T`` is refused because it is
ambiguous (GB = 10^9 bytes, disk vendors; GiB = 2^30, memory); a speed has no such ambiguity.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
}  # fmt: skip
_AMBIGUOUS = {"k", "m", "g", "t", "p"}
SPEED_UNITS: dict[str, int] = {"m": 1, "g": 1000, "t": 1_000_000}
_SPEED_SUFFIXES = ("", "b", "bps", "bit", "bit/s", "b/s", "bits")

_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z/]*)\s*$")


class UnitError(ValueError):
    pass


def _split(text: str, what: str) -> tuple[Decimal, str]:
    m = _QUANTITY.match(text)
    if not m:
        raise UnitError(f"{text!r} is not a {what} (write a number and a unit, e.g. {_eg(what)})")
    try:
        return Decimal(m.group(1)), m.group(2)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        raise UnitError(f"{text!r} is not a number") from None


def _eg(what: str) -> str:
    return "64GiB or 1.92TB" if what == "size" else "10G or 2500M"


def _whole(value: Decimal, text: str) -> int:
    if value != value.to_integral_value():
        raise UnitError(f"{text!r} is not a whole number of the base unit")
    return int(value)


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``64GiB``, ``1.92TB``, ``512`` (bytes)."""
    if isinstance(value, bool):
        raise UnitError("a size cannot be true/false")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a size cannot be negative")
        return value
    if isinstance(value, float):
        return parse_size(repr(value))
    if not isinstance(value, str):
        raise UnitError(f"expected a size like 64GiB, got {type(value).__name__}")
    number, unit = _split(value, "size")
    u = unit.lower()
    if u in _AMBIGUOUS:
        raise UnitError(
            f"{value!r}: unit {unit!r} is ambiguous; write {unit.upper()}B (powers of 1000, "
            f"as disks are sold) or {unit.upper()}iB (powers of 1024, as memory is)"
        )
    if u == "":
        return _whole(number, value)
    if u not in SIZE_UNITS:
        raise UnitError(
            f"{value!r}: unknown size unit {unit!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return _whole(number * SIZE_UNITS[u], value)


def parse_speed(value: object) -> int:
    """Mbit/s from an int or a string such as ``10G``, ``25Gbps``, ``2.5G``, ``100M``."""
    if isinstance(value, bool):
        raise UnitError("a speed cannot be true/false")
    if isinstance(value, int):
        if value < 0:
            raise UnitError("a speed cannot be negative")
        return value
    if isinstance(value, float):
        return parse_speed(repr(value))
    if not isinstance(value, str):
        raise UnitError(f"expected a speed like 10G, got {type(value).__name__}")
    number, unit = _split(value, "speed")
    u = unit.lower()
    if u == "":
        return _whole(number, value)
    for prefix, factor in SPEED_UNITS.items():
        if u[:1] == prefix and u[1:] in _SPEED_SUFFIXES:
            return _whole(number * factor, value)
    raise UnitError(f"{value!r}: unknown speed unit {unit!r} (use M or G, e.g. 100M, 10G)")


def human_size(n: int) -> str:
    """Bytes the way disks are labelled (decimal units, one decimal): 480.1 GB, 1.9 TB."""
    for unit in ("PB", "TB", "GB", "MB", "KB"):
        f = SIZE_UNITS[unit.lower()]
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"
