"""The store: migrations, refusal of a newer schema, and durability across kill -9."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ztpd.errors import SchemaTooNew, StoreError
from ztpd.store import SCHEMA_VERSION, Events, Store


def test_new_database_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    s = Store(tmp_path / "z.db")
    assert s.schema_version == SCHEMA_VERSION
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r["name"] for r in s.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"nodes", "node_macs", "events", "leases", "inventories", "tokens", "runs"} <= tables
    s.close()
    # Opening again applies nothing twice.
    assert Store(tmp_path / "z.db").schema_version == SCHEMA_VERSION


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(SchemaTooNew, match="newer than this ztpd"):
        Store(db)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store(db)
    assert db.read_bytes() == b"this is not a database" * 100


WRITER = textwrap.dedent("""
    import sys
    from ztpd.store import Store
    store = Store(sys.argv[1])
    for i in range(100000):
        event_id = store.add_event(node_id=None, kind="test", cause=f"n{i}")
        # Printed only after the commit returned: every printed id must survive.
        print(event_id, flush=True)
""")


def test_committed_events_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    Store(db).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed: list[int] = []
    for line in proc.stdout:
        committed.append(int(line))
        if len(committed) >= 200:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    committed.extend(int(x) for x in proc.stdout.read().split())
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    stored = {e.id for e in Events(Store(db)).list(limit=10**6)}
    assert set(committed) <= stored
    assert len(stored) >= 200
