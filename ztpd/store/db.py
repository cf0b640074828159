"""The embedded store: one SQLite database in WAL mode, opened and migrated in one place.

One connection serves the whole process; a lock serialises its users, so services may call the
store from worker threads (``asyncio.to_thread``) while the event loop stays free. Every write
happens inside ``transaction()``: a state change and its event commit together or not at all.
``synchronous=FULL`` because an edge appliance loses power more often than it crashes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from ztpd.errors import SchemaTooNew, StoreError
from ztpd.store.migrations import MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    def __init__(
        self, path: Path | str, *, clock: Callable[[], float] = time.time, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        try:
            if read_only:
                uri = f"file:{self.path}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise SchemaTooNew(
                    f"{self.path}: database schema version {version} is newer than this ztpd "
                    f"understands ({SCHEMA_VERSION}); upgrade ztpd, the database was not touched"
                )
            if not read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: cannot open database: {e}") from None
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        if not read_only:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
            try:
                # executescript commits implicitly; BEGIN inside keeps each migration atomic.
                self.conn.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;"
                )
            except sqlite3.DatabaseError as e:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise StoreError(f"{self.path}: migration {number} failed: {e}") from None

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; nested calls join the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")
            finally:
                self._depth = 0

    def query(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(sql, params)
            cols = [d[0] for d in cur.description or ()]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def query_one(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def add_event(
        self,
        *,
        node_id: int | None,
        kind: str,
        cause: str,
        from_state: str | None = None,
        to_state: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Append one event; inside a caller's transaction it commits with the caller's change."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO events (ts, node_id, kind, from_state, to_state, cause, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.clock(),
                    node_id,
                    kind,
                    from_state,
                    to_state,
                    cause,
                    json.dumps(detail or {}, sort_keys=True, default=str),
                ),
            )
            return int(cur.lastrowid or 0)

    def close(self) -> None:
        with self._lock:
            self.conn.close()
