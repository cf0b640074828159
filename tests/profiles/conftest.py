from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ztpd.inventory import Inventory
from ztpd.profiles import NodeFacts, build_facts

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "profiles"
INVENTORIES = ROOT / "tests" / "fixtures" / "inventories"
BROKEN = Path(__file__).parent / "broken"


def inventory(name: str) -> Inventory:
    return Inventory.model_validate(json.loads((INVENTORIES / f"{name}.json").read_text()))


def facts(name: str, **node: Any) -> dict[str, Any]:
    return build_facts(inventory(name), NodeFacts(**node))


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    return tmp_path / "profiles"
