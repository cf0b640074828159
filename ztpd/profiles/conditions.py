"""Conditions compiled from a profile's ``match`` list, and what evaluating them says.

``compile_conditions`` checks each written condition against the fact registry and the operator
registry, reporting every problem through a callback with its path in the profile (so the
loader can turn it into file:line:column); it returns conditions whose ``evaluate(facts)`` is
pure and cheap and returns an ``Outcome``: the fact's actual value, pass/fail and a note.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ztpd.profiles import facts as F
from ztpd.profiles.model import Condition
from ztpd.profiles.ops import COMPARISONS, KIND_TEXT, OPERATORS, Pred, coerce
from ztpd.profiles.units import human_size
from ztpd.yamlsrc import did_you_mean

Path_ = tuple[str | int, ...]
Report = Callable[[Path_, str], None]
LIST_MODES = ("count", "any", "all")


def _json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class ElementOutcome:
    element: str  # the element's name (disk /dev/sda, interface eno1 ...) or its index
    passed: bool
    failed: tuple[str, ...]  # the sub-conditions it failed, as "field op value (actual x)"

    def to_json(self) -> dict[str, Any]:
        return {"element": self.element, "passed": self.passed, "failed": list(self.failed)}


@dataclass(frozen=True)
class Outcome:
    """One condition evaluated against one node."""

    field: str
    op: str  # an operator, or count / any / all
    expected: Any  # the value as written in the profile
    actual: Any  # the node's value (JSON-safe); for lists the matching count
    passed: bool
    note: str = ""
    elements: tuple[ElementOutcome, ...] = ()

    @property
    def text(self) -> str:
        """One line for people: ``size_bytes ge "4TB" (actual 480103981056 = 480.1 GB)``."""
        shown = "missing" if self.actual is None else json.dumps(self.actual)
        note = f" = {self.note}" if self.note and self.actual is not None else ""
        return f"{self.field} {self.op} {json.dumps(self.expected)} (actual {shown}{note})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "field": self.field,
            "op": self.op,
            "expected": _json(self.expected),
            "actual": _json(self.actual),
            "passed": self.passed,
        }
        if self.note:
            out["note"] = self.note
        if self.elements:
            out["elements"] = [e.to_json() for e in self.elements]
        return out


@dataclass(frozen=True)
class Leaf:
    """A single-valued condition: ``field op value``."""

    field: str
    op: str
    expected: Any
    pred: Pred
    kind: F.Kind
    # For eq/in: every value that passes, so the loader can prove two profiles disjoint.
    allowed: frozenset[Any] | None = None

    def evaluate(self, facts: F.Facts) -> Outcome:
        actual = facts.get(self.field)
        if self.op == "exists":
            return Outcome(
                self.field, self.op, self.expected, _json(actual), self.pred(actual is not None)
            )
        if actual is None:
            return Outcome(self.field, self.op, self.expected, None, False, "not reported")
        try:
            passed = bool(self.pred(actual))
        except (TypeError, ValueError):  # a fact of the wrong type from an odd source
            return Outcome(
                self.field,
                self.op,
                self.expected,
                _json(actual),
                False,
                "value has the wrong type for this operator",
            )
        note = human(self.kind, actual)
        return Outcome(self.field, self.op, self.expected, _json(actual), passed, note)


def human(kind: F.Kind, actual: Any) -> str:
    """The actual value in the unit people wrote, for sizes and speeds."""
    if isinstance(actual, bool) or not isinstance(actual, int):
        return ""
    if kind == "size":
        return human_size(actual)
    if kind == "speed":
        return f"{actual / 1000:g} Gbit/s" if actual >= 1000 else f"{actual} Mbit/s"
    return ""


_LABEL_KEYS = ("name", "address", "pci_address", "collector", "product")


def _label(element: Mapping[str, Any], index: int) -> str:
    for key in _LABEL_KEYS:
        if element.get(key):
            return str(element[key])
    return f"#{index}"


@dataclass(frozen=True)
class ListCondition:
    """``count``/``any``/``all`` over a list fact, each element tested by ``where``."""

    field: str
    op: str  # count, any or all
    expected: Any
    where: tuple[Leaf, ...]
    count: Callable[[int], bool] | None = None

    def evaluate(self, facts: F.Facts) -> Outcome:
        items = facts.get(self.field)
        if items is None:
            return Outcome(self.field, self.op, self.expected, None, False, "not reported")
        elements = []
        for i, item in enumerate(items):
            failed = tuple(o.text for o in (c.evaluate(item) for c in self.where) if not o.passed)
            elements.append(ElementOutcome(_label(item, i), not failed, failed))
        k, n = sum(e.passed for e in elements), len(elements)
        if self.op == "count":
            assert self.count is not None
            passed = self.count(k)
        else:
            passed = k >= 1 if self.op == "any" else k == n
        return Outcome(
            self.field,
            self.op,
            self.expected,
            k,
            passed,
            f"{k} of {n} {self.field} match",
            tuple(elements),
        )


Compiled = Leaf | ListCondition


def _written(cond: Condition) -> dict[str, Any]:
    """A condition as written, normalised (exists without a value reads as exists: true)."""
    if cond.count is not None:
        out: dict[str, Any] = {"op": cond.count.op, "value": cond.count.value}
        if cond.where:
            out["where"] = [_written(c) for c in cond.where]
        return {"field": cond.field, "count": out}
    if cond.op is not None:
        value = cond.value if "value" in cond.model_fields_set else True
        return {"field": cond.field, "op": cond.op, "value": value}
    mode = "any" if cond.any is not None else "all"
    return {"field": cond.field, mode: [_written(c) for c in getattr(cond, mode) or []]}


# What people bring from other tools (ironic inspection rules, code) and what ztpd calls it.
ALIASES = {
    "matches": "regex", "in-net": "in-cidr", "one-of": "in", "gte": "ge", "lte": "le",
    ">=": "ge", "<=": "le", ">": "gt", "<": "lt", "==": "eq", "=": "eq", "!=": "ne",
    "not_in": "not-in", "in_cidr": "in-cidr",
}  # fmt: skip


def suggest(word: str, names: list[str]) -> str:
    """A did-you-mean: known aliases first, then close spellings, then a name it begins."""
    if word in ALIASES and ALIASES[word] in names:
        return f" (did you mean {ALIASES[word]!r}?)"
    close = did_you_mean(word, names)
    if close:
        return close
    longer = sorted(n for n in names if n.startswith(word))
    return f" (did you mean {longer[0]!r}?)" if longer else ""


class _Compiler:
    def __init__(self, report: Report) -> None:
        self.report = report

    def leaf(self, cond: Condition, spec: F.Field, path: Path_) -> Leaf | None:
        assert cond.op is not None
        op = OPERATORS.get(cond.op)
        if op is None:
            names = ", ".join(OPERATORS)
            self.report(
                (*path, "op"),
                f"unknown operator {cond.op!r}{suggest(cond.op, list(OPERATORS))} "
                f"(operators: {names})",
            )
            return None
        if spec.kind not in op.kinds:
            fits = ", ".join(n for n, o in OPERATORS.items() if spec.kind in o.kinds)
            self.report(
                (*path, "op"),
                f"operator {cond.op!r} does not apply to {cond.field} "
                f"({KIND_TEXT[spec.kind]}); use one of: {fits}",
            )
            return None
        given = "value" in cond.model_fields_set
        if not given and cond.op != "exists":
            self.report(path, f"operator {cond.op!r} needs a value")
            return None
        value: Any = cond.value if given else True
        try:
            pred = op.compile(spec.kind, value)
        except ValueError as e:
            self.report((*path, "value"), f"{cond.field} {cond.op}: {e}")
            return None
        allowed = None
        if cond.op in ("eq", "in"):
            allowed = frozenset(
                coerce(spec.kind, v) for v in (value if cond.op == "in" else [value])
            )
        return Leaf(cond.field, cond.op, value, pred, spec.kind, allowed)

    def one(
        self,
        cond: Condition,
        path: Path_,
        scope: Callable[[str], F.Field | None],
        names: Sequence[str],
        within: str = "",
    ) -> Compiled | None:
        modes = [m for m in ("op", *LIST_MODES) if getattr(cond, m) is not None]
        if len(modes) != 1:
            self.report(
                path,
                "a condition needs exactly one of op, count, any or all"
                + (f" (it has {', '.join(modes)})" if modes else ""),
            )
            return None
        if cond.where is not None and cond.count is None:
            self.report(
                (*path, "where"),
                "where applies only together with count "
                "(for any/all, put the conditions in the any/all list)",
            )
            return None
        spec = scope(cond.field)
        if spec is None:
            what = f"field of {within}:" if within else "fact"
            self.report(
                (*path, "field"),
                f"unknown {what} {cond.field!r}{suggest(cond.field, list(names))}",
            )
            return None
        mode = modes[0]
        if spec.kind == "list":
            if mode == "op":
                self.report((*path, "op"), f"{cond.field} is a list: use count, any or all")
                return None
            return self.listed(cond, spec, mode, path)
        if mode != "op":
            lists = ", ".join(n for n in names if (s := scope(n)) and s.kind == "list")
            self.report(
                (*path, mode),
                f"{mode} applies to lists ({lists}), not to {cond.field} ({KIND_TEXT[spec.kind]})",
            )
            return None
        return self.leaf(cond, spec, path)

    def listed(self, cond: Condition, spec: F.Field, mode: str, path: Path_) -> Compiled | None:
        assert spec.elements is not None
        elements = spec.elements
        subs = (cond.where if mode == "count" else getattr(cond, mode)) or []
        sub_path = (*path, "where" if mode == "count" else mode)
        if mode != "count" and not subs:
            self.report(sub_path, f"{mode} needs at least one condition on the {cond.field}")
            return None
        compiled = [
            self.one(c, (*sub_path, i), elements.get, list(elements), cond.field)
            for i, c in enumerate(subs)
        ]
        leaves = tuple(c for c in compiled if isinstance(c, Leaf))
        if len(leaves) != len(subs):
            if any(isinstance(c, ListCondition) for c in compiled):
                self.report(sub_path, "lists inside lists are not supported")
            return None
        count = None
        if cond.count is not None:
            fn = COMPARISONS.get(cond.count.op)
            if fn is None:
                self.report(
                    (*path, "count", "op"),
                    f"count: unknown comparison "
                    f"{cond.count.op!r}{suggest(cond.count.op, list(COMPARISONS))}"
                    f" (use {', '.join(COMPARISONS)})",
                )
                return None
            n = cond.count.value
            count = lambda k: fn(k, n)  # noqa: E731 - a closure over this condition's bound
        return ListCondition(cond.field, mode, _written(cond)[mode], leaves, count)


def compile_conditions(
    conditions: Sequence[Condition], report: Report, base: Path_ = ("match",)
) -> tuple[Compiled, ...] | None:
    """All conditions compiled, or None after reporting every problem found."""
    c = _Compiler(report)
    names = sorted(F.FIELDS)
    out = [c.one(cond, (*base, i), F.lookup, names) for i, cond in enumerate(conditions)]
    if any(x is None for x in out):
        return None
    return tuple(x for x in out if x is not None)
