"""Ordering, determinism (hypothesis), max_count under concurrency, and catalog reloads."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ztpd.profiles import ProfileCatalog, load_profiles
from ztpd.profiles.catalog import signature

from .conftest import BROKEN, SHIPPED, facts, write

GENERAL = "match:\n  - {field: cpu.count, op: ge, value: 1}\n"


def test_priority_then_specificity_then_name(pdir: Path) -> None:
    write(
        pdir,
        {
            "a.yaml": "name: low\npriority: 1\n" + GENERAL,
            "b.yaml": "name: specific\npriority: 5\n" + GENERAL
            + "  - {field: memory.total_gb, op: ge, value: 1}\n",
            "c.yaml": "name: general\npriority: 5\n" + GENERAL,
        },
    )  # fmt: skip
    profiles = load_profiles(pdir)
    result = profiles.match(facts("dell-r650"))
    assert result.winner == "specific"
    assert result.reason == (
        "same priority as general (5) but more specific: 2 conditions against 1"
    )
    assert [v.status for v in result.verdicts] == ["won", "outranked", "outranked"]
    assert profiles.match({}).winner is None
    assert profiles.match({}).reason == "no profile matched"


def test_every_profile_full(pdir: Path) -> None:
    write(pdir, {"a.yaml": "name: only\nmax_count: 1\n"})
    result = load_profiles(pdir).match({}, {"only": 1})
    assert (result.winner, result.reason) == (None, "every matching profile is full: only")


PROFILE_TEXTS = [
    "name: p{i}\npriority: {prio}\nmatch:\n  - {{field: cpu.count, op: ge, value: {n}}}\n"
    "  - {{field: memory.total_gb, op: ge, value: {m}}}\n",
    "name: p{i}\npriority: {prio}\nmatch:\n  - {{field: cpu.count, op: le, value: {n}}}\n",
    "name: p{i}\npriority: {prio}\nmax_count: 1\n",
]
MACHINES = ["dell-r650", "intel-nuc", "qemu-vm", "gpu-server", "supermicro-storage"]


@settings(max_examples=40, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1000), st.integers(1, 64), st.integers(1, 256)),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[1],  # distinct priorities: no ambiguity refusals
    ),
    order=st.randoms(use_true_random=False),
    machine=st.sampled_from(MACHINES),
    held=st.integers(0, 1),
)
def test_matching_is_deterministic_and_ignores_file_order(
    tmp_path_factory: object, specs: list[tuple[int, int, int, int]], order: object,
    machine: str, held: int,
) -> None:  # fmt: skip
    texts = [
        PROFILE_TEXTS[kind].format(i=i, prio=prio, n=n, m=m)
        for i, (kind, prio, n, m) in enumerate(specs)
    ]
    shuffled = list(texts)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    base = Path(tmp_path_factory.mktemp("h"))  # type: ignore[attr-defined]
    one = write(base / "one", {f"{i:02d}.yaml": t for i, t in enumerate(texts)})
    two = write(base / "two", {f"f{i:02d}.yaml": t for i, t in enumerate(shuffled)})
    listed = write(base / "list", {"all.yaml": "".join(
        "- " + t.replace("\n", "\n  ").rstrip() + "\n" for t in shuffled)})  # fmt: skip
    f = facts(machine)
    counts = {f"p{i}": held for i in range(len(specs))}
    results = [load_profiles(d).match(f, counts).to_json() for d in (one, two, listed)]
    for r in results:
        for p in r["profiles"]:
            p.pop("source")
    assert results[0] == results[1] == results[2]
    again = load_profiles(one).match(f, counts).to_json()
    for p in again["profiles"]:
        p.pop("source")
    assert again == results[0]


def test_max_count_holds_when_threads_race_for_the_last_slots() -> None:
    """The store's pattern: lock, read counts, match, record the winner, unlock."""
    profiles = load_profiles(SHIPPED)
    f = facts("dell-r650")
    counts: dict[str, int] = {}
    lock = threading.Lock()
    winners: list[str | None] = []
    start = threading.Barrier(16)

    def node() -> None:
        start.wait(timeout=30)
        for _ in range(5):
            with lock:
                result = profiles.match(f, dict(counts))
                if result.winner:
                    counts[result.winner] = counts.get(result.winner, 0) + 1
                winners.append(result.winner)

    threads = [threading.Thread(target=node) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 80
    assert winners.count("k3s-server") == 3
    assert winners.count("k3s-agent") == 77


def test_reload_keeps_the_old_set_when_the_new_one_is_broken(pdir: Path) -> None:
    shutil.copytree(SHIPPED, pdir)
    catalog = ProfileCatalog(pdir)
    assert catalog.reload() is True
    first = catalog.current
    assert catalog.status().generation == 1 and catalog.status().problems == ()
    shutil.copy(BROKEN / "bad-regex.yaml", pdir)
    assert catalog.changed()
    assert catalog.reload_if_changed() is False
    assert catalog.current is first
    status = catalog.status()
    assert status.generation == 1
    assert len(status.problems) == 3
    assert status.profiles == tuple(first.names)
    assert not catalog.changed()
    (pdir / "bad-regex.yaml").unlink()
    assert catalog.changed()
    assert catalog.reload_if_changed() is False  # same files as the serving set: no swap
    assert catalog.current is first and catalog.status().problems == ()


def test_reload_picks_up_a_change(pdir: Path) -> None:
    write(pdir, {"a.yaml": "name: a\n"})
    catalog = ProfileCatalog(pdir)
    assert catalog.reload()
    before = signature(pdir)
    write(pdir, {"b.yaml": "name: b\npriority: 3\n"})
    assert signature(pdir) != before
    assert catalog.reload_if_changed() is True
    assert catalog.current.names == ["b", "a"]
    assert catalog.status().generation == 2
    assert catalog.reload_if_changed() is False


def test_a_catalog_that_never_loaded_serves_nothing(pdir: Path) -> None:
    write(pdir, {"a.yaml": "name: A\n"})
    catalog = ProfileCatalog(pdir)
    assert catalog.reload() is False
    assert catalog.current.names == []
    assert catalog.current.match({}).reason == "no profiles are loaded"
    assert "a profile name is lower-case" in str(catalog.status().problems[0])
