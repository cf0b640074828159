"""Operator-written YAML: safe loading that remembers where every value came from.

Config and profiles are typed with pydantic; this module loads the YAML (bounded in size, depth
and alias expansion, duplicate keys refused) and turns pydantic's error paths back into
``file:line:column`` so every message points at the character an admin must change.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ztpd.errors import Problem, SourceError

MAX_BYTES = 1 << 20  # 1 MiB: far beyond any sane profile or config
MAX_NODES = 100_000  # values after alias expansion: stops "billion laughs"
MAX_DEPTH = 64

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass
class Doc:
    """A parsed YAML document plus the node tree to locate any path in it."""

    file: str
    data: Any
    root: Node | None
    # Paths whose value came from elsewhere (e.g. an environment variable): path -> origin text.
    origins: dict[Path_, str] = field(default_factory=dict)

    def locate(self, path: Path_, *, key: bool = False) -> Problem:
        """A Problem skeleton (empty message) at ``path``; ``key`` points at the mapping key."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.origins:
                return Problem(self.origins[path[:n]], 0, 0, "")
        node = self.root
        key_node: Node | None = None
        for part in path:
            if isinstance(node, MappingNode):
                for k, v in node.value:
                    if isinstance(k, ScalarNode) and k.value == str(part):
                        key_node, node = k, v
                        break
                else:
                    break
            elif isinstance(node, SequenceNode) and isinstance(part, int):
                if 0 <= part < len(node.value):
                    key_node, node = None, node.value[part]
                else:
                    break
            else:
                break
        target = key_node if key and key_node is not None else node
        if target is None:
            return Problem(self.file, 1, 1, "")
        mark = target.start_mark
        return Problem(self.file, mark.line + 1, mark.column + 1, "")

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        p = self.locate(path, key=key)
        return Problem(p.file, p.line, p.column, message)


class _Builder:
    """Constructs plain Python data from a composed node tree, with limits."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.scalars = SafeConstructor()

    def fail(self, node: Node, message: str) -> SourceError:
        m = node.start_mark
        return SourceError([Problem(self.file, m.line + 1, m.column + 1, message)])

    def build(self, node: Node, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(
                node,
                f"document expands to more than {MAX_NODES} values "
                "(aliases expanding exponentially?)",
            )
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, ScalarNode):
            return self.scalars.construct_object(node)
        if isinstance(node, SequenceNode):
            return [self.build(item, depth + 1) for item in node.value]
        if isinstance(node, MappingNode):
            out: dict[Any, Any] = {}
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    raise self.fail(k, "merge keys (<<) are not supported; use extends: instead")
                key = self.build(k, depth + 1)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise self.fail(k, "mapping keys must be plain scalars")
                if key in out:
                    raise self.fail(k, f"duplicate key {key!r}")
                out[key] = self.build(v, depth + 1)
            return out
        raise self.fail(node, "unsupported YAML node")


def parse(text: bytes | str, file: str) -> Doc:
    """Parse one YAML document; every failure is a SourceError naming file:line:column."""
    if isinstance(text, bytes):
        raw = text
        if len(raw) > MAX_BYTES:
            raise SourceError([Problem(file, 0, 0, f"file is larger than {MAX_BYTES} bytes")])
        if b"\0" in raw:
            raise SourceError([Problem(file, 0, 0, "file is binary (contains NUL bytes)")])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise SourceError(
                [Problem(file, line, 1, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})")]
            ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = " ".join(x for x in (e.context, e.problem) if x) or "YAML syntax error"
        raise SourceError([Problem(file, where[0], where[1], f"YAML syntax: {what}")]) from None
    except yaml.YAMLError as e:
        raise SourceError([Problem(file, 0, 0, f"YAML: {e}")]) from None
    data = None if root is None else _Builder(file).build(root)
    return Doc(file=file, data=data, root=root)


def load(path: Path) -> Doc:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SourceError([Problem(str(path), 0, 0, f"cannot read: {e.strerror}")]) from None
    return parse(raw, str(path))


# --- pydantic errors -> located problems -------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete classes behind Optional/Union/Annotated/list/dict annotations."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(annotation) for c in _unwrap(a)]
    return [annotation]


def _model_at(model: type[pydantic.BaseModel], loc: Path_) -> type[pydantic.BaseModel] | None:
    """The model class that owns the mapping at ``loc`` (for did-you-mean suggestions)."""
    current: Any = model
    for part in loc:
        nxt: Any = None
        for cls in _unwrap(current):
            origin = typing.get_origin(cls)
            if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
                f = cls.model_fields.get(str(part))
                if f is not None:
                    nxt = f.annotation
                    break
                for f in cls.model_fields.values():  # a field addressed by its alias
                    if f.alias == part:
                        nxt = f.annotation
                        break
            elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
                nxt = typing.get_args(cls)[0]
                break
            elif origin in (dict, Mapping):
                nxt = typing.get_args(cls)[1]
                break
        if nxt is None:
            return None
        current = nxt
    for cls in _unwrap(current):
        if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
            return cls
    return None


def field_names(model: type[pydantic.BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def problems_from(
    err: pydantic.ValidationError, doc: Doc, model: type[pydantic.BaseModel]
) -> list[Problem]:
    out: list[Problem] = []
    for e in err.errors(include_url=False):
        loc: Path_ = tuple(p for p in e["loc"] if isinstance(p, str | int))
        # Tagged unions add the tag as a path element that is not in the document; drop it.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(document)"
        kind = e["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            hint = did_you_mean(str(loc[-1]), field_names(owner)) if owner else ""
            out.append(doc.problem(loc, f"unknown key {dotted!r}{hint}", key=True))
        elif kind == "missing":
            out.append(doc.problem(loc[:-1], f"missing required key {dotted!r}"))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            out.append(doc.problem(loc, f"{dotted}: {msg}{shown}"))
    return out


def validate(model: type[M], doc: Doc, data: Any = None) -> M:
    """Validate ``data`` (default: the document) as ``model``; located SourceError on failure."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except pydantic.ValidationError as e:
        raise SourceError(problems_from(e, doc, model)) from None
