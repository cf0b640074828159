"""Loading a profiles directory into a ProfileSet, reporting every problem with its location.

Files: every ``*.yaml``/``*.yml`` directly in the directory, in name order; each holds one
profile (a mapping) or a list of them. ``_defaults.yaml`` holds keys every profile starts from
(approve, os, platform, register); other names starting with ``_`` or ``.`` are not read.
``extends: NAME`` starts a profile from another one. Mappings merge key by key, a list or a
value replaces what it overrides. Precedence: defaults < parent chain < the profile itself.

A problem found anywhere refuses the whole set (``SourceError`` with every problem, sorted by
file, line and column): a half-loaded set could send a node to the wrong profile.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pydantic

from ztpd import yamlsrc
from ztpd.errors import Problem, SourceError
from ztpd.profiles import templates
from ztpd.profiles.conditions import Compiled, Leaf, compile_conditions
from ztpd.profiles.matching import CompiledProfile, ProfileSet
from ztpd.profiles.model import DEFAULTS_KEYS, Condition, Profile

Path_ = tuple[str | int, ...]
DEFAULTS_FILES = ("_defaults.yaml", "_defaults.yml")
MAX_FILES = 1000
_CONDITIONS = pydantic.TypeAdapter(list[Condition])


def profile_files(directory: Path) -> list[Path]:
    """The profile files of ``directory`` in load order (defaults excluded)."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(("_", ".")) and p.is_file()
    )


def watched_files(directory: Path) -> list[Path]:
    """Every file whose change means the set must be reloaded."""
    files = profile_files(directory) if directory.is_dir() else []
    return files + [directory / n for n in DEFAULTS_FILES if (directory / n).is_file()]


@dataclass
class _Raw:
    """One profile as written: its data and where it sits in which document."""

    data: dict[str, Any]
    doc: yamlsrc.Doc
    base: Path_

    @property
    def name(self) -> str | None:
        n = self.data.get("name")
        return n if isinstance(n, str) else None

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        return self.doc.problem(self.base + path, message, key=key)


class _Merged(yamlsrc.Doc):
    """A profile after defaults and extends: each path located in the file it came from."""

    def __init__(self, raw: _Raw, data: dict[str, Any], sources: dict[Path_, _Raw]) -> None:
        super().__init__(file=raw.doc.file, data=data, root=None)
        self.own = raw
        self.sources = sources

    def locate(self, path: Path_, *, key: bool = False) -> Problem:
        for n in range(len(path), 0, -1):
            src = self.sources.get(path[:n])
            if src is not None:
                return src.doc.locate(src.base + path, key=key)
        return self.own.doc.locate(self.own.base + path, key=key)


def _overlay(target: dict[str, Any], layer: _Raw, data: dict[str, Any], path: Path_,
             sources: dict[Path_, _Raw]) -> None:  # fmt: skip
    for k, v in data.items():
        p = (*path, k)
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            _overlay(target[k], layer, v, p, sources)
        else:
            target[k] = copy.deepcopy(v)
            for stale in [s for s in sources if s[: len(p)] == p]:
                del sources[stale]
        sources[p] = layer  # the last layer to touch a path is where its problems point


class _Loader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def read(self, path: Path) -> yamlsrc.Doc | None:
        try:
            return yamlsrc.load(path)
        except SourceError as e:
            self.problems.extend(e.problems)
            return None

    def profiles_in(self, doc: yamlsrc.Doc) -> list[_Raw]:
        data = doc.data
        if data is None:
            self.problems.append(doc.problem((), "the file holds no profile"))
            return []
        items: list[tuple[Any, Path_]] = (
            list(zip(data, [(i,) for i in range(len(data))], strict=True))
            if isinstance(data, list)
            else [(data, ())]
        )
        out = []
        for item, base in items:
            if isinstance(item, dict):
                out.append(_Raw(item, doc, base))
            else:
                self.problems.append(
                    doc.problem(
                        base,
                        "a profile file holds one profile (a mapping of keys to "
                        "values) or a list of them",
                    )
                )
        return out

    def defaults(self, directory: Path) -> _Raw | None:
        for name in DEFAULTS_FILES:
            path = directory / name
            if not path.is_file():
                continue
            doc = self.read(path)
            if doc is None or doc.data is None:
                return None
            if not isinstance(doc.data, dict):
                self.problems.append(doc.problem((), "_defaults must be a mapping of keys"))
                return None
            raw = _Raw(doc.data, doc, ())
            for key in raw.data:
                if key not in DEFAULTS_KEYS:
                    hint = yamlsrc.did_you_mean(str(key), list(DEFAULTS_KEYS))
                    self.problems.append(
                        raw.problem(
                            (key,),
                            f"{key!r} cannot be a default{hint} "
                            f"(defaults may set {', '.join(DEFAULTS_KEYS)})",
                            key=True,
                        )
                    )
            return raw
        return None

    def chain(self, raw: _Raw, by_name: dict[str, _Raw]) -> list[_Raw] | None:
        """The profile and its ancestors, root first; None after reporting a broken chain."""
        chain = [raw]
        while True:
            parent = chain[0].data.get("extends")
            if parent is None:
                return chain
            if not isinstance(parent, str):
                return chain  # the model reports the type
            if parent not in by_name:
                hint = yamlsrc.did_you_mean(parent, sorted(by_name))
                self.problems.append(
                    chain[0].problem(
                        ("extends",), f"extends names unknown profile {parent!r}{hint}"
                    )
                )
                return None
            if by_name[parent] in chain:
                loop = " -> ".join([parent, *(r.name or "?" for r in chain)])
                self.problems.append(chain[0].problem(("extends",), f"extends loops: {loop}"))
                return None
            chain.insert(0, by_name[parent])

    def build(self, raw: _Raw, layers: list[_Raw]) -> CompiledProfile | None:
        data: dict[str, Any] = {}
        sources: dict[Path_, _Raw] = {}
        for layer in layers:
            own = {
                k: v for k, v in layer.data.items() if layer is raw or k not in ("name", "extends")
            }
            _overlay(data, layer, own, (), sources)
        doc = _Merged(raw, data, sources)
        before = len(self.problems)
        try:
            spec = yamlsrc.validate(Profile, doc)
        except SourceError as e:
            self.problems.extend(e.problems)
            self.semantics_anyway(doc)
            return None
        conditions = compile_conditions(
            spec.match, lambda path, msg: self.problems.append(doc.problem(path, msg))
        )
        template = self.hostname(spec.os.hostname if spec.os else None, doc)
        if conditions is None or len(self.problems) > before:
            return None
        where = raw.doc.locate(raw.base)
        source = f"{where.file}:{where.line}"
        return CompiledProfile(spec, conditions, template, source)

    def semantics_anyway(self, doc: _Merged) -> None:
        """After a type error elsewhere, still check conditions and the hostname template, so
        one run shows every problem."""
        try:
            match = _CONDITIONS.validate_python(doc.data.get("match", []))
        except pydantic.ValidationError:
            pass  # already reported by the profile's own validation
        else:
            compile_conditions(match, lambda p, m: self.problems.append(doc.problem(p, m)))
        os_ = doc.data.get("os")
        if isinstance(os_, dict) and isinstance(os_.get("hostname"), str):
            self.hostname(os_["hostname"], doc)

    def hostname(self, source: str | None, doc: _Merged) -> jinja2.Template | None:
        if source is None:
            return None
        path = ("os", "hostname")
        return templates.check(
            source, lambda msg: self.problems.append(doc.problem(path, f"os.hostname: {msg}"))
        )

    def duplicates(self, raws: list[_Raw]) -> dict[str, _Raw]:
        by_name: dict[str, _Raw] = {}
        for raw in raws:
            name = raw.name
            if name is None:
                continue  # the model reports the missing or mistyped name
            if name in by_name:
                first = by_name[name].problem(("name",), "")
                self.problems.append(
                    raw.problem(
                        ("name",),
                        f"duplicate profile name {name!r} (first defined at "
                        f"{first.file}:{first.line})",
                    )
                )
            else:
                by_name[name] = raw
        return by_name

    def ambiguities(self, built: list[tuple[_Raw, CompiledProfile]]) -> None:
        seen: dict[tuple[int, int], list[tuple[_Raw, CompiledProfile]]] = {}
        for raw, p in sorted(built, key=lambda b: b[1].name):
            key = (p.spec.priority, len(p.conditions))
            for _, other in seen.get(key, []):
                if not _disjoint(p.conditions, other.conditions):
                    where = "priority" if "priority" in raw.data else "name"
                    self.problems.append(
                        raw.problem(
                            (where,),
                            (
                                f"ambiguous: {other.name} and {p.name} both have priority "
                                f"{key[0]} and {key[1]} conditions, so a node matching both goes "
                                f"to {other.name} only by name order; give one a different priority"
                            ),
                            key=where == "name",
                        )
                    )
                    break
            seen.setdefault(key, []).append((raw, p))


def _disjoint(a: Iterable[Compiled], b: Iterable[Compiled]) -> bool:
    """True when some fact must equal different values for a and b: no node matches both."""
    allowed_a = {c.field: c.allowed for c in a if isinstance(c, Leaf) and c.allowed is not None}
    return any(
        isinstance(c, Leaf)
        and c.allowed is not None
        and c.field in allowed_a
        and not (c.allowed & allowed_a[c.field])
        for c in b
    )


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()[:16]


def load_profiles(directory: Path) -> ProfileSet:
    """Load and check every profile in ``directory``; SourceError lists every problem."""
    loader = _Loader()
    if not directory.is_dir():
        raise SourceError([Problem(str(directory), 0, 0, "profiles directory does not exist")])
    files = profile_files(directory)
    if len(files) > MAX_FILES:
        raise SourceError([Problem(str(directory), 0, 0, f"more than {MAX_FILES} profile files")])
    defaults = loader.defaults(directory)
    raws = [
        r for f in files if (doc := loader.read(f)) is not None for r in loader.profiles_in(doc)
    ]
    by_name = loader.duplicates(raws)
    built = []
    for raw in raws:
        chain = loader.chain(raw, by_name)
        if chain is None:
            continue
        layers = ([defaults] if defaults is not None else []) + chain
        compiled = loader.build(raw, layers)
        if compiled is not None:
            built.append((raw, compiled))
    loader.ambiguities(built)
    if loader.problems:
        unique = sorted(set(loader.problems), key=lambda p: (p.file, p.line, p.column, p.message))
        raise SourceError(unique)
    names = [p.name for _, p in built]
    return ProfileSet(
        [p for _, p in built if names.count(p.name) == 1], _digest(watched_files(directory))
    )


def check(directory: Path) -> list[Problem]:
    """Every problem in ``directory`` (empty when the set would load): for ``ztpd check``."""
    try:
        load_profiles(directory)
    except SourceError as e:
        return e.problems
    return []
