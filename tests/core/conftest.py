from __future__ import annotations

from pathlib import Path

import pytest

from ztpd.lifecycle import Lifecycle
from ztpd.store import Nodes, Store

TIMEOUTS = {"inspecting": 60.0, "deploying": 600.0, "configuring": 300.0}


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Store:
    s = Store(tmp_path / "ztpd.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def nodes(store: Store) -> Nodes:
    return Nodes(store)


@pytest.fixture
def lifecycle(store: Store) -> Lifecycle:
    return Lifecycle(store, TIMEOUTS)
