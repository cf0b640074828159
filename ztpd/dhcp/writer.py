"""The DHCP store writes, run by the DHCP thread (``service.py``) between bursts of packets.

Lease changes come first. Everything queued while a burst of packets was handled is written in
one transaction (group commit), and only then are the replies that depend on it sent: no ACK
leaves before its lease is committed. Sightings (boot facts for the node records) are not on
the ACK path: they are coalesced per MAC and written in small chunks when no lease is waiting.
Writing a sighting is mostly Python (identity resolution, events, JSON), time the DHCP thread
does not spend answering, so while packets are flowing sightings get at most SIGHTING_SHARE of
it; they catch up when traffic stops. Nothing here is shared with another thread: the DHCP
thread is the only caller.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice

from ztpd.dhcp.backend import DhcpBackend, Sighting
from ztpd.dhcp.leases import Lease

log = logging.getLogger("ztpd.dhcp")

SIGHTING_CHUNK = 4  # sightings per transaction: small, so a waiting lease is not held up long
SIGHTING_SHARE = 0.05  # of the DHCP thread's time, for sightings, while packets are flowing
BUSY = 0.2  # seconds since the last packet during which packets count as flowing
MAX_PENDING_SIGHTINGS = 10_000  # beyond this, new MACs' sightings are dropped (and counted)

Then = Callable[[], str]  # runs after the commit; the name of a counter to bump


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
    """``submit``/``sight`` queue; ``commit`` writes the queued leases and then runs their
    replies; ``pace`` writes a chunk of sightings when they are due; ``flush`` writes all."""

    def __init__(self, backend: DhcpBackend, counts: Counter[str]) -> None:
        self.backend = backend
        self.counts = counts
        self.rows: list[Lease] = []
        self.thens: list[Then] = []
        self.sightings: dict[str, Sighting] = {}  # by MAC, oldest first
        self.last_packet = 0.0  # time.monotonic() of the last submit or sight
        self.resume = 0.0  # time.monotonic() before which no sighting is written

    def submit(self, leases: Sequence[Lease], then: Then | None = None) -> None:
        """Queue lease rows; ``then()`` runs once they are committed, and never if the commit
        fails."""
        self.rows.extend(leases)
        if then is not None:
            self.thens.append(then)

    def sight(self, s: Sighting) -> bool:
        """Queue a sighting, merged with one still pending for the MAC; False when the
        backlog is full."""
        old = self.sightings.pop(s.mac, None)
        if old is None and len(self.sightings) >= MAX_PENDING_SIGHTINGS:
            return False
        self.sightings[s.mac] = s if old is None else merge(old, s)
        return True

    def commit(self) -> None:
        """Write the queued leases in one transaction, then run their replies."""
        if not self.rows:
            return
        rows, thens = self.rows, self.thens
        self.rows, self.thens = [], []
        try:
            self.backend.save_leases(rows)
        except Exception:  # a failed commit costs this batch its replies, not the service
            log.exception("dhcp lease commit failed rows=%d", len(rows))
            self.counts["error.leases"] += 1
            return
        counts = self.counts
        counts["leases.committed"] += len(rows)
        for then in thens:
            try:
                counts[then()] += 1
            except Exception:  # a bug in one reply must not cost the others theirs
                log.exception("dhcp reply after commit failed")
                counts["error.send"] += 1

    def pace(self, now: float) -> float | None:
        """Write a chunk of sightings if they are due at ``now`` (time.monotonic()); the
        seconds until the next chunk is due, None when none is pending."""
        if self.sightings and now >= self.resume:
            self._write_sightings(time.monotonic())
        if not self.sightings:
            return None
        return max(0.0, self.resume - time.monotonic())

    def flush(self) -> None:
        """Write everything queued (at shutdown)."""
        self.commit()
        while self.sightings:
            self._write_sightings(time.monotonic())

    def _write_sightings(self, start: float) -> None:
        chunk = [self.sightings.pop(mac) for mac in list(islice(self.sightings, SIGHTING_CHUNK))]
        try:
            self.backend.record_sightings(chunk)
            self.counts["sightings.recorded"] += len(chunk)
        except Exception:  # a failed write loses these sightings, nothing else
            log.exception("dhcp sighting write failed count=%d", len(chunk))
            self.counts["error.sightings"] += 1
        end = time.monotonic()
        if end - self.last_packet < BUSY:
            self.resume = end + (end - start) * (1 - SIGHTING_SHARE) / SIGHTING_SHARE
