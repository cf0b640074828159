"""The operator registry: how a condition's written value is read and compared with a fact.

Each operator names the fact kinds it applies to and a compiler that turns the value written in
the profile into a predicate over the fact's actual value; a value it cannot read raises
ValueError with the message an admin sees. Compilation happens once, when profiles load, so
matching only calls predicates. A predicate never sees None: a missing fact fails the
condition before that (only ``exists`` looks at absence).
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ztpd.inventory.schema import normalize_mac
from ztpd.profiles.facts import Kind
from ztpd.profiles.safe_regex import MAX_SUBJECT, compile_safe
from ztpd.profiles.units import parse_size, parse_speed

Pred = Callable[[Any], bool]

SCALARS: frozenset[Kind] = frozenset({"int", "number", "str", "bool", "size", "speed", "ip", "mac"})
ORDERED: frozenset[Kind] = frozenset({"int", "number", "size", "speed"})
KIND_TEXT: Mapping[Kind, str] = {
    "int": "a whole number",
    "number": "a number",
    "str": "text",
    "bool": "true or false",
    "size": "a size",
    "speed": "a link speed",
    "ip": "an IP address",
    "mac": "a MAC address",
    "strs": "a list of text",
    "ips": "a list of IP addresses",
    "list": "a list of items",
}


def coerce(kind: Kind, value: Any) -> Any:
    """The written ``value`` as the fact kind's type; ValueError saying what was expected."""
    if kind in ("size", "speed"):
        return parse_size(value) if kind == "size" else parse_speed(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool):  # YAML reads yes/no/on/off as booleans: almost always a slip
        raise ValueError(f"expected {KIND_TEXT[kind]}, got {value!r} (quote it if it is text)")
    if kind == "int":
        if not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if kind == "number":
        if not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        return value
    if kind == "ip":
        return ipaddress.ip_address(str(value))
    if kind == "mac":
        return normalize_mac(str(value))
    if isinstance(value, int | float | str):  # str, strs: a number written unquoted is text
        return str(value)
    raise ValueError(f"expected {KIND_TEXT[kind]}, got {type(value).__name__}")


def _normal(kind: Kind, actual: Any) -> Any:
    """The actual fact in the same type as coerced values (facts from nodes are plain JSON)."""
    if kind == "ip":
        return ipaddress.ip_address(actual)
    if kind == "mac":
        return normalize_mac(actual)
    return actual


def _compare(fn: Callable[[Any, Any], bool]) -> Callable[[Kind, Any], Pred]:
    def build(kind: Kind, value: Any) -> Pred:
        want = coerce(kind, value)
        return lambda actual: fn(_normal(kind, actual), want)

    return build


def _members(kind: Kind, value: Any) -> frozenset[Any]:
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of values, e.g. [a, b]")
    return frozenset(coerce(kind, v) for v in value)


def _in(kind: Kind, value: Any) -> Pred:
    members = _members(kind, value)
    return lambda actual: _normal(kind, actual) in members


def _not_in(kind: Kind, value: Any) -> Pred:
    members = _members(kind, value)
    return lambda actual: _normal(kind, actual) not in members


def _regex(kind: Kind, value: Any) -> Pred:
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression as text, got {value!r}")
    pattern = compile_safe(value)
    return lambda actual: len(str(actual)) <= MAX_SUBJECT and bool(pattern.search(str(actual)))


def _contains(kind: Kind, value: Any) -> Pred:
    if kind == "str":
        text = coerce("str", value)
        return lambda actual: text in actual
    if kind == "ips":
        address = coerce("ip", value)
        return lambda actual: any(ipaddress.ip_interface(a).ip == address for a in actual)
    item = coerce("str", value)
    return lambda actual: item in actual


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError("expected a network such as 10.0.0.0/24, or a list of them")
    try:
        return tuple(ipaddress.ip_network(v, strict=True) for v in values)
    except ValueError as e:
        raise ValueError(f"not a network: {e}") from None


def _in_cidr(kind: Kind, value: Any) -> Pred:
    nets = _networks(value)

    def inside(address: str) -> bool:
        ip = ipaddress.ip_interface(address).ip
        return any(ip in n for n in nets)

    if kind == "ips":
        return lambda actual: any(inside(a) for a in actual)
    return inside


def _exists(kind: Kind, value: Any) -> Pred:
    if not isinstance(value, bool):
        raise ValueError(f"exists takes true or false, got {value!r}")
    return lambda present: bool(present) == value


@dataclass(frozen=True)
class Operator:
    kinds: frozenset[Kind]
    compile: Callable[[Kind, Any], Pred]
    doc: str


OPERATORS: Mapping[str, Operator] = {
    "eq": Operator(SCALARS, _compare(operator.eq), "equal to value"),
    "ne": Operator(SCALARS, _compare(operator.ne), "not equal to value"),
    "lt": Operator(ORDERED, _compare(operator.lt), "less than value"),
    "le": Operator(ORDERED, _compare(operator.le), "at most value"),
    "gt": Operator(ORDERED, _compare(operator.gt), "greater than value"),
    "ge": Operator(ORDERED, _compare(operator.ge), "at least value"),
    "in": Operator(SCALARS - {"bool"}, _in, "one of the listed values"),
    "not-in": Operator(SCALARS - {"bool"}, _not_in, "none of the listed values"),
    "regex": Operator(frozenset({"str", "mac", "ip"}), _regex, "regular expression search"),
    "contains": Operator(
        frozenset({"str", "strs", "ips"}),
        _contains,
        "text contains value / list has value as an element",
    ),
    "exists": Operator(
        frozenset(KIND_TEXT) - {"list"}, _exists, "the fact was reported (value: false for absent)"
    ),
    "in-cidr": Operator(
        frozenset({"ip", "ips"}),
        _in_cidr,
        "address inside a network (or any of a list of networks)",
    ),
}
COMPARISONS: Mapping[str, Callable[[int, int], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
    "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}  # fmt: skip
