"""Profiles: which machines become what. The language is documented in profiles/README.md.

The API the daemon and the CLI use:

- ``load_profiles(dir) -> ProfileSet``: load and check a directory; ``SourceError`` lists
  every problem as file:line:column. ``check(dir) -> list[Problem]`` is the same for
  ``ztpd check`` (empty list: the set would load).
- ``build_facts(inventory, NodeFacts(...)) -> facts``: the flat view conditions read.
- ``ProfileSet.match(facts, counts) -> MatchResult``: pure and deterministic. ``counts`` maps
  profile name -> nodes (other than this one) holding it. For ``max_count`` to hold under
  concurrency the caller reads counts, matches and records the winner in one critical section
  (one lock, or one ``BEGIN IMMEDIATE`` SQLite transaction). ``MatchResult.to_json()`` is
  the explanation to store with the match event; ``result.approve == "manual"`` means the node
  waits in awaiting-approval. ``ProfileSet.get(name).hostname(facts)`` renders os.hostname
  (RenderError when the node lacks a fact the template needs).
- ``ProfileCatalog(dir)``: the serving set (``.current``), ``.reload()`` (keeps the previous
  set and records ``.problems`` when the new one is refused), ``.reload_if_changed()`` for a
  timer, ``.status()`` for the page.
- ``simulate(profiles_dir, inventory_dir) -> SimulationReport`` and
  ``format_simulation(report, explain=...)`` for ``ztpd simulate DIR``;
  ``format_explanation(result)`` for ``ztpd match NODE --explain``.
- ``json_schema()`` / ``schema_text()``: the JSON Schema shipped as
  ztpd/data/profile.schema.json (regenerate with
  ``python -c "from ztpd.profiles import schema_text; print(schema_text(), end='')"``).
"""

from __future__ import annotations

import json

from ztpd.profiles.catalog import ProfileCatalog, Status
from ztpd.profiles.conditions import Outcome
from ztpd.profiles.facts import FIELDS, Facts, NodeFacts, build_facts
from ztpd.profiles.loader import check, load_profiles
from ztpd.profiles.matching import CompiledProfile, MatchResult, ProfileSet, Verdict
from ztpd.profiles.model import Profile, json_schema
from ztpd.profiles.simulate import (
    SimulationReport,
    format_explanation,
    format_simulation,
    simulate,
)


def schema_text() -> str:
    """The exact text of ztpd/data/profile.schema.json (a test keeps the file equal to it)."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


__all__ = [
    "FIELDS",
    "CompiledProfile",
    "Facts",
    "MatchResult",
    "NodeFacts",
    "Outcome",
    "Profile",
    "ProfileCatalog",
    "ProfileSet",
    "SimulationReport",
    "Status",
    "Verdict",
    "build_facts",
    "check",
    "format_explanation",
    "format_simulation",
    "json_schema",
    "load_profiles",
    "schema_text",
    "simulate",
]
