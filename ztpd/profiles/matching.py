"""Deterministic, explained matching of one node's facts against a loaded profile set.

Order: among the profiles whose conditions all hold and that are not full, the highest
``priority`` wins, then the one with more conditions (the most specific), then the first by
name. ``match`` is pure: it reads the facts and ``counts`` (how many nodes already hold each
profile) and does no I/O, so the store can call it inside the transaction that assigns the
profile (see ``ProfileSet.match``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jinja2

from ztpd.errors import NotFound
from ztpd.profiles.conditions import Compiled, Outcome
from ztpd.profiles.facts import Facts
from ztpd.profiles.model import Profile
from ztpd.profiles.templates import render_hostname

Status = Literal["won", "outranked", "full", "failed"]


@dataclass(frozen=True)
class CompiledProfile:
    spec: Profile  # the validated profile, defaults and extends applied
    conditions: tuple[Compiled, ...]
    hostname_template: jinja2.Template | None
    source: str  # file:line where the profile starts

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sort_key(self) -> tuple[int, int, str]:
        return (-self.spec.priority, -len(self.conditions), self.spec.name)

    def hostname(self, facts: Facts) -> str | None:
        """The node's host name from ``os.hostname``; None when the profile sets none."""
        if self.hostname_template is None:
            return None
        return render_hostname(self.hostname_template, facts, self.name)


@dataclass(frozen=True)
class Verdict:
    """One profile's side of a match: every condition's outcome and where it ended."""

    profile: str
    source: str
    priority: int
    specificity: int  # number of conditions
    status: Status
    outcomes: tuple[Outcome, ...]
    held: int  # nodes already holding the profile
    max_count: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "source": self.source,
            "priority": self.priority,
            "specificity": self.specificity,
            "status": self.status,
            "held": self.held,
            "max_count": self.max_count,
            "reason": self.reason,
            "conditions": [o.to_json() for o in self.outcomes],
        }


@dataclass(frozen=True)
class MatchResult:
    """The decision for one node; ``to_json()`` is what is stored with the match event."""

    winner: str | None
    approve: Literal["auto", "manual"] | None  # the winner's approve, None without a winner
    reason: str
    verdicts: tuple[Verdict, ...]  # every profile, in match order

    def verdict(self, profile: str) -> Verdict:
        for v in self.verdicts:
            if v.profile == profile:
                return v
        raise NotFound(f"profile {profile!r} was not part of this match")

    def to_json(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "approve": self.approve,
            "reason": self.reason,
            "profiles": [v.to_json() for v in self.verdicts],
        }


def _why_won(winner: CompiledProfile, runner_up: CompiledProfile | None) -> str:
    p = winner.spec.priority
    n = len(winner.conditions)
    if runner_up is None:
        return f"the only matching profile (priority {p}, {n} conditions)"
    q, m = runner_up.spec.priority, len(runner_up.conditions)
    if p != q:
        return f"highest priority among matching profiles: {p} over {runner_up.name} ({q})"
    if n != m:
        return (
            f"same priority as {runner_up.name} ({p}) but more specific: {n} conditions against {m}"
        )
    return f"same priority and specificity as {runner_up.name}; first by name"


class ProfileSet:
    """A validated, immutable set of profiles, kept in match order."""

    def __init__(self, profiles: list[CompiledProfile], digest: str = "") -> None:
        self.profiles = tuple(sorted(profiles, key=lambda p: p.sort_key))
        self.digest = digest  # identifies the files the set was loaded from
        self._by_name = {p.name: p for p in self.profiles}

    def __len__(self) -> int:
        return len(self.profiles)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    def get(self, name: str) -> CompiledProfile:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(f"no profile named {name!r}") from None

    def match(self, facts: Facts, counts: Mapping[str, int] | None = None) -> MatchResult:
        """Pick the profile for a node. Pure; evaluates every condition of every profile.

        ``counts`` maps a profile name to the number of *other* nodes holding it now; a
        profile whose ``max_count`` is reached is skipped as full. To make ``max_count``
        atomic the caller must read ``counts``, call ``match`` and record the winner while
        holding one lock or one write transaction (SQLite ``BEGIN IMMEDIATE``), and must not
        count the node being matched itself (it is re-evaluated, not added twice).
        """
        counts = counts or {}
        evaluated = []
        for p in self.profiles:
            outcomes = tuple(c.evaluate(facts) for c in p.conditions)
            held = counts.get(p.name, 0)
            passed = all(o.passed for o in outcomes)
            full = p.spec.max_count is not None and held >= p.spec.max_count
            evaluated.append((p, outcomes, held, passed, full))
        eligible = [p for p, _, _, passed, full in evaluated if passed and not full]
        winner = eligible[0] if eligible else None
        runner_up = eligible[1] if len(eligible) > 1 else None
        verdicts = []
        for p, outcomes, held, passed, full in evaluated:
            status: Status
            if not passed:
                failed = sum(not o.passed for o in outcomes)
                status, reason = "failed", f"{failed} of {len(outcomes)} conditions failed"
            elif full:
                status, reason = "full", f"max_count reached ({held} of {p.spec.max_count})"
            elif p is winner:
                status, reason = "won", _why_won(p, runner_up)
            else:
                assert winner is not None
                status, reason = "outranked", f"matched, but {winner.name} comes first"
            verdicts.append(
                Verdict(
                    p.name,
                    p.source,
                    p.spec.priority,
                    len(p.conditions),
                    status,
                    outcomes,
                    held,
                    p.spec.max_count,
                    reason,
                )
            )
        if winner is not None:
            return MatchResult(
                winner.name, winner.spec.approve, _why_won(winner, runner_up), tuple(verdicts)
            )
        full_names = [v.profile for v in verdicts if v.status == "full"]
        if full_names:
            reason = "every matching profile is full: " + ", ".join(full_names)
        else:
            reason = "no profile matched" if self.profiles else "no profiles are loaded"
        return MatchResult(None, None, reason, tuple(verdicts))
