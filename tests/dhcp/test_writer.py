"""The writer thread with fake backends: replies only after their commit, sightings merged."""

from __future__ import annotations

from collections import Counter

from tests.dhcp.fakes import BrokenBackend, MemoryBackend
from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.leases import BOUND, Lease
from ztpd.dhcp.writer import Writer

LEASE = Lease("10.9.0.5", "02:00:00:00:00:01", None, "10.9.0.0/24", BOUND, 99.0)


async def run(backend: MemoryBackend) -> tuple[list[bool], Counter[str]]:
    """Submit one lease whose reply records whether the lease was stored when it ran."""
    sent: list[bool] = []

    def reply() -> str:
        sent.append(LEASE.ip in backend.leases)
        return "reply.ack"

    writer = Writer(backend)
    writer.start()
    writer.submit((LEASE,), reply)
    writer.sight(Sighting("02:00:00:00:00:01", facts={"relay": {"giaddr": "10.9.0.254"}}))
    writer.sight(Sighting("02:00:00:00:00:01", ip="10.9.0.5", creates=False))
    await writer.close()
    return sent, writer.counters()


async def test_reply_runs_after_the_commit_and_sightings_merge() -> None:
    backend = MemoryBackend()
    sent, counts = await run(backend)
    assert sent == [True]
    assert counts == {"leases.committed": 1, "reply.ack": 1, "sightings.recorded": 1}
    [s] = backend.sightings  # the two sightings of one MAC became one write
    assert (s.ip, s.facts, s.creates) == ("10.9.0.5", {"relay": {"giaddr": "10.9.0.254"}}, True)


async def test_no_reply_when_the_commit_fails() -> None:
    sent, counts = await run(BrokenBackend())
    assert sent == []
    assert counts["error.leases"] == 1 and "reply.ack" not in counts
