"""The DHCP writer: one thread that owns every DHCP write to the store.

Lease changes come first. Everything queued since the last commit is written in one
transaction (group commit), and only then does this thread send the replies that depend on it:
no hop back to the event loop (which may be busy reading a burst), and the kernel's share of
sending runs beside the loop, on the other core. No ACK leaves before its lease is committed.
Sightings (boot facts for the node records) are not on the ACK path: they are coalesced per
MAC and written in small chunks while no lease is waiting, so a storm of new clients delays
node bookkeeping, never an ACK. Writing a sighting is mostly Python (identity resolution,
events, JSON), so it holds the GIL the event loop needs for every packet: while packets are
flowing, sightings get at most SIGHTING_SHARE of the time; they catch up when traffic stops.
One thread means the two kinds of write never contend for SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from itertools import islice

from ztpd.dhcp.backend import DhcpBackend, Sighting
from ztpd.dhcp.leases import Lease

log = logging.getLogger("ztpd.dhcp")

MAX_BATCH = 512  # lease rows per commit
SIGHTING_CHUNK = 4  # sightings per transaction: small, so a waiting lease is not held up long
SIGHTING_SHARE = 0.05  # of the writer's time, for sightings, while packets are flowing
BUSY = 0.2  # seconds since the last packet's hand-off during which packets count as flowing
MAX_PENDING_SIGHTINGS = 10_000  # beyond this, new MACs' sightings are dropped (and counted)

Then = Callable[[], str]  # runs in the writer thread after the commit; a counter name


def merge(old: Sighting, new: Sighting) -> Sighting:
    """Two sightings of one MAC as one write (a DISCOVER's and its REQUEST's, say)."""
    return Sighting(
        new.mac,
        new.uuid or old.uuid,
        new.arch or old.arch,
        new.ip or old.ip,
        {**old.facts, **new.facts},
        old.creates or new.creates,
    )


class Writer:
    """``start()`` runs the thread, ``submit``/``sight`` feed it from the event loop, ``kick()``
    wakes it for what they queued, and ``close()`` writes what is queued and stops it."""

    def __init__(self, backend: DhcpBackend) -> None:
        self.backend = backend
        # Kept here, not posted to the loop: waking the loop per batch costs as much as a
        # packet when batches are small.
        self.counts: Counter[str] = Counter()
        self.leases: deque[tuple[Sequence[Lease], Then | None]] = deque()
        self.sightings: dict[str, Sighting] = {}  # by MAC, oldest first
        self.lock = threading.Lock()  # guards ``sightings`` and ``counts`` (deques are atomic)
        self.wake = threading.Event()
        self.closing = False
        self.last_packet = 0.0  # time.monotonic() of the last submit or sight
        self.resume = 0.0  # time.monotonic() before which no sighting is written
        self.thread = threading.Thread(target=self._run, name="dhcp-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    async def close(self) -> None:
        """Writes what is queued (and sends its replies), then stops."""
        if not self.thread.is_alive():
            return
        self.closing = True
        self.wake.set()
        await asyncio.to_thread(self.thread.join)

    # --- the event loop's side ---------------------------------------------------------------

    def submit(self, leases: Sequence[Lease], then: Then | None = None) -> None:
        """Queue lease rows; ``then()`` runs in the writer thread once they are committed, and
        never if the commit fails. It must be thread-safe; it returns a counter to bump."""
        self.leases.append((leases, then))
        self.last_packet = time.monotonic()

    def counters(self) -> Counter[str]:
        with self.lock:
            return self.counts.copy()

    def sight(self, s: Sighting) -> bool:
        """Queue a sighting, merged with one still pending for the MAC; False when the
        backlog is full."""
        with self.lock:
            old = self.sightings.pop(s.mac, None)
            if old is None and len(self.sightings) >= MAX_PENDING_SIGHTINGS:
                return False
            self.sightings[s.mac] = s if old is None else merge(old, s)
        self.last_packet = time.monotonic()
        return True

    def kick(self) -> None:
        """Wake the thread for what was queued: once per burst of packets read, not per
        packet, so that a burst's leases go in one commit and the thread (which then wants
        the GIL) is woken once."""
        if self.leases or self.sightings:
            self.wake.set()

    # --- the writer thread -------------------------------------------------------------------

    def _count(self, counts: Mapping[str, int]) -> None:
        with self.lock:
            self.counts.update(counts)

    def _run(self) -> None:
        while True:
            if self.leases:
                self._commit_leases()
                continue
            pause = None  # wait until woken
            if self.sightings:
                pause = 0.0 if self.closing else self.resume - time.monotonic()
                if pause <= 0:
                    self._write_sightings()
                    continue
            elif self.closing:
                return
            self.wake.wait(pause)
            self.wake.clear()  # whatever woke us is found by the checks above

    def _commit_leases(self) -> None:
        thens: list[Then] = []
        rows: list[Lease] = []
        while self.leases and len(rows) < MAX_BATCH:
            items, then = self.leases.popleft()
            rows.extend(items)
            if then is not None:
                thens.append(then)
        try:
            self.backend.save_leases(rows)
        except Exception:  # a failed commit costs this batch its replies, not the service
            log.exception("dhcp lease commit failed rows=%d", len(rows))
            self._count({"error.leases": 1})
            return
        counts: Counter[str] = Counter({"leases.committed": len(rows)})
        for then in thens:
            try:
                counts[then()] += 1
            except Exception:  # a bug in one reply must not stop the thread every ACK needs
                log.exception("dhcp reply after commit failed")
                counts["error.send"] += 1
        self._count(counts)

    def _write_sightings(self) -> None:
        start = time.monotonic()
        with self.lock:
            macs = list(islice(self.sightings, SIGHTING_CHUNK))
            chunk = [self.sightings.pop(mac) for mac in macs]
        try:
            self.backend.record_sightings(chunk)
            counts = {"sightings.recorded": len(chunk)}
        except Exception:  # a failed write loses these sightings, nothing else
            log.exception("dhcp sighting write failed count=%d", len(chunk))
            counts = {"error.sightings": 1}
        self._count(counts)
        end = time.monotonic()
        if end - self.last_packet < BUSY:
            self.resume = end + (end - start) * (1 - SIGHTING_SHARE) / SIGHTING_SHARE
