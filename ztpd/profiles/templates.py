"""Hostname templates: jinja2 over the facts, sandboxed, strict, checked when profiles load.

``edge-{{ system.serial[-6:] | lower }}`` is checked at load time: every fact it names must be
in the registry (``check_references``), private attributes are refused, and a trial render with
sample facts surfaces the sandbox's refusals. Rendering happens per node with StrictUndefined,
so a fact the node did not report is a RenderError, never an empty string; the result must be a
valid host name.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ztpd.errors import RenderError
from ztpd.profiles import facts as F
from ztpd.yamlsrc import did_you_mean

HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_MAX_REPEAT = 256  # 'x' * n in a template: refuse anything that could exhaust memory


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        sizes = [x for x in (left, right) if isinstance(x, int) and not isinstance(x, bool)]
        if any(isinstance(x, str | list | tuple) for x in (left, right)) and any(
            abs(n) > _MAX_REPEAT for n in sizes
        ):
            raise SecurityError(f"repetition longer than {_MAX_REPEAT}")
        return operator.mul(left, right)


ENV = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False)
ENV.globals.clear()  # range, lipsum, cycler ...: a host name needs only the facts
# Every name a template may start from: the facts and the namespaces above them.
NAMES = sorted({".".join(n.split(".")[:i]) for n in F.FIELDS for i in range(1, 4)} | {"labels"})


def _chain(node: nodes.Node) -> tuple[nodes.Node, list[str | int]]:
    """The base of an attribute/item chain and the constant parts after it, outermost last."""
    parts: list[str | int] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str | int)
        ):
            parts.append(node.arg.value)
            node = node.node
        else:
            return node, parts[::-1]


def _check_path(parts: list[str | int]) -> str | None:
    """None when ``parts`` reads a known fact (or a namespace of them), else the bad name
    quoted, with a did-you-mean."""
    scope = dict(F.FIELDS)
    dotted: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            return None  # indexing a text fact; list elements are checked via their list name
        dotted.append(part)
        name = ".".join(dotted)
        if name == "labels" or name.startswith(F.LABELS):
            return None
        spec = scope.get(name)
        if spec is not None and spec.elements is not None:
            rest = parts[i + 1 :]
            if rest and isinstance(rest[0], int):
                element = [p for p in rest[1:] if isinstance(p, str)]
                sub = _check_element(element, spec.elements)
                if sub is None:
                    return None
                return f"'{name}[].{sub}'{did_you_mean(sub, list(spec.elements))}"
            return None
        if spec is not None:
            return None  # a complete fact: what follows are methods on its value
        if not any(k.startswith(name + ".") for k in scope):
            return f"{name!r}{did_you_mean(name, NAMES)}"
        i += 1
    return None


def _check_element(parts: list[str], elements: dict[str, F.Field] | Any) -> str | None:
    dotted: list[str] = []
    for part in parts:
        dotted.append(part)
        name = ".".join(dotted)
        if name in elements:
            return None
        if not any(k.startswith(name + ".") for k in elements):
            return name
    return None


def _walk(node: nodes.Node, local: set[str]) -> Iterator[tuple[nodes.Node, list[str | int]]]:
    if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
        base, parts = _chain(node)
        if isinstance(base, nodes.Name) and base.ctx == "load" and base.name not in local:
            yield base, [base.name, *parts]
            if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
                yield from _walk(node.arg, local)
            return
        if base is not node:
            yield from _walk(base, local)
            return
    for child in node.iter_child_nodes():
        yield from _walk(child, local)


def _private(ast: nodes.Template) -> str | None:
    for n in ast.find_all(nodes.Getattr):
        if n.attr.startswith("_"):
            return n.attr
    for g in ast.find_all(nodes.Getitem):
        if isinstance(g.arg, nodes.Const) and str(g.arg.value).startswith("_"):
            return str(g.arg.value)
    return None


def _sample(kind: F.Kind) -> Any:
    return {
        "int": 8, "number": 64.0, "str": "SAMPLE0123", "bool": True, "size": 10**12,
        "speed": 10000, "ip": "192.0.2.10", "mac": "52:54:00:12:34:56",
        "strs": ("sample",), "ips": ("192.0.2.10/24",), "list": (),
    }[kind]  # fmt: skip


def sample_facts() -> dict[str, Any]:
    """A node that reported every fact: for trial renders and the editor's preview."""
    out = {name: _sample(spec.kind) for name, spec in F.FIELDS.items()}
    for name, spec in F.FIELDS.items():
        if spec.elements is not None:
            out[name] = ({k: _sample(s.kind) for k, s in spec.elements.items()},)
    return out


def check(source: str, report: Callable[[str], None]) -> jinja2.Template | None:
    """Compile a template, reporting each problem; None if there was any."""
    try:
        ast = ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        report(f"template syntax: {e.message} (template line {e.lineno})")
        return None
    private = _private(ast)
    if private is not None:
        report(f"template may not use private attribute {private!r}")
        return None
    local = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    local.add("loop")  # jinja's loop variable inside for
    bad = False
    for _, parts in _walk(ast, local):
        unknown = _check_path(parts)
        if unknown is not None:
            report(f"template references unknown fact {unknown}")
            bad = True
    if bad:
        return None
    template = ENV.from_string(ast)
    try:
        template.render(F.nested(sample_facts()))
    except SecurityError as e:
        report(f"template is not allowed: {e}")
        return None
    except jinja2.TemplateError:
        pass  # depends on the node's real facts; reported when rendered for a node
    return template


def render_hostname(template: jinja2.Template, facts: F.Facts, profile: str) -> str:
    """The host name for one node; RenderError names what was missing or wrong."""
    try:
        out = template.render(F.nested(facts)).strip()
    except SecurityError as e:
        raise RenderError(f"profile {profile}: hostname template refused: {e}") from None
    except jinja2.UndefinedError as e:
        raise RenderError(
            f"profile {profile}: hostname template: {e.message} (a fact this node did not report)"
        ) from None
    except jinja2.TemplateError as e:
        raise RenderError(f"profile {profile}: hostname template: {e.message}") from None
    except (TypeError, ValueError, ArithmeticError) as e:
        raise RenderError(f"profile {profile}: hostname template: {e}") from None
    if not HOSTNAME.match(out):
        shown = out if len(out) <= 80 else out[:77] + "..."
        raise RenderError(
            f"profile {profile}: hostname {shown!r} is not a valid host name "
            "(lower-case letters, digits and -, labels up to 63 characters)"
        )
    return out
