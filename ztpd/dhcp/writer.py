"""The DHCP writer: one thread that owns every DHCP write to the store.

Lease changes come first. Everything queued since the last commit is written in one
transaction (group commit), and only then are the replies that depend on it released, with one
hop back to the event loop per batch, never per packet. No ACK leaves before its lease is
committed. Sightings (boot facts for the node records) are not on the ACK path: they are
coalesced per MAC and written in small chunks while no lease is waiting, so a storm of new
clients delays node bookkeeping, never an ACK. One thread means the two kinds of write never
contend for SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

from ztpd.dhcp.backend import DhcpBackend, Sighting
from ztpd.dhcp.leases import Lease

log = logging.getLogger("ztpd.dhcp")

MAX_BATCH = 512  # lease rows per commit
SIGHTING_CHUNK = 4  # sightings per transaction: small, so a waiting lease is not held up long
MAX_PENDING_SIGHTINGS = 10_000  # beyond this, new MACs' sightings are dropped (and counted)

Done = Callable[[bool], None]  # called on the event loop with whether the commit succeeded
Count = Callable[[str, int], None]  # called on the event loop: counter name, increment


def merge(old: Sighting, new: Sighting) -> Sighting:
    """Two sightings of one MAC as one write (a DISCOVER's and its REQUEST's, say)."""
    return Sighting(
        new.mac,
        new.uuid or old.uuid,
        new.arch or old.arch,
        new.ip or old.ip,
        {**old.facts, **new.facts},
    )


class Writer:
    """``start()`` runs the thread, ``submit``/``sight`` feed it from the event loop, and
    ``close()`` writes what is queued and stops it."""

    def __init__(self, backend: DhcpBackend, count: Count) -> None:
        self.backend = backend
        self.count = count
        self.leases: deque[tuple[Sequence[Lease], Done | None]] = deque()
        self.sightings: dict[str, Sighting] = {}  # by MAC, oldest first
        self.lock = threading.Lock()  # guards ``sightings`` (deque operations are atomic)
        self.wake = threading.Event()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="dhcp-writer", daemon=True)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread.start()

    async def close(self) -> None:
        """Writes what is queued, then stops; the last batch's replies are still released
        (their callbacks are queued on the loop before the join returns)."""
        if self.loop is None:
            return
        self.closing = True
        self.wake.set()
        await asyncio.to_thread(self.thread.join)

    # --- the event loop's side ---------------------------------------------------------------

    def submit(self, leases: Sequence[Lease], done: Done | None = None) -> None:
        """Queue lease rows; ``done(ok)`` runs on the loop once they are committed (or not)."""
        self.leases.append((leases, done))
        self.wake.set()

    def sight(self, s: Sighting) -> bool:
        """Queue a sighting, merged with one still pending for the MAC; False when the
        backlog is full."""
        with self.lock:
            old = self.sightings.pop(s.mac, None)
            if old is None and len(self.sightings) >= MAX_PENDING_SIGHTINGS:
                return False
            self.sightings[s.mac] = s if old is None else merge(old, s)
        self.wake.set()
        return True

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        assert self.loop is not None
        while True:
            if self.leases:
                self._commit_leases(self.loop)
            elif self.sightings:
                self._write_sightings(self.loop)
            elif self.closing:
                return
            else:
                self.wake.wait()
                self.wake.clear()

    def _commit_leases(self, loop: asyncio.AbstractEventLoop) -> None:
        dones: list[Done] = []
        rows: list[Lease] = []
        while self.leases and len(rows) < MAX_BATCH:
            items, done = self.leases.popleft()
            rows.extend(items)
            if done is not None:
                dones.append(done)
        try:
            self.backend.save_leases(rows)
            ok = True
        except Exception:  # a failed commit costs this batch its replies, not the service
            log.exception("dhcp lease commit failed rows=%d", len(rows))
            ok = False
        loop.call_soon_threadsafe(self._release, dones, ok, len(rows))

    def _release(self, dones: list[Done], ok: bool, rows: int) -> None:
        self.count("leases.committed" if ok else "error.leases", rows if ok else 1)
        for done in dones:
            done(ok)

    def _write_sightings(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            macs = list(islice(self.sightings, SIGHTING_CHUNK))
            chunk = [self.sightings.pop(mac) for mac in macs]
        try:
            self.backend.record_sightings(chunk)
            counter = "sightings.recorded"
        except Exception:  # a failed write loses these sightings, nothing else
            log.exception("dhcp sighting write failed count=%d", len(chunk))
            counter = "error.sightings"
        loop.call_soon_threadsafe(self.count, counter, len(chunk))
