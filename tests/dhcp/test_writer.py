"""The DHCP store writes with fake backends: replies only after their commit, sightings merged."""

from __future__ import annotations

from collections import Counter

from tests.dhcp.fakes import BrokenBackend, MemoryBackend
from ztpd.dhcp.backend import Sighting
from ztpd.dhcp.leases import BOUND, Lease
from ztpd.dhcp.writer import Writer

LEASE = Lease("10.9.0.5", "02:00:00:00:00:01", None, "10.9.0.0/24", BOUND, 99.0)


def run(backend: MemoryBackend) -> tuple[list[bool], Counter[str]]:
    """Submit one lease whose reply records whether the lease was stored when it ran."""
    sent: list[bool] = []

    def reply() -> str:
        sent.append(LEASE.ip in backend.leases)
        return "reply.ack"

    counts: Counter[str] = Counter()
    writer = Writer(backend, counts)
    writer.submit((LEASE,), reply)
    writer.sight(Sighting("02:00:00:00:00:01", facts={"relay": {"giaddr": "10.9.0.254"}}))
    writer.sight(Sighting("02:00:00:00:00:01", ip="10.9.0.5", creates=False))
    assert sent == []  # nothing is sent before the commit
    writer.flush()
    return sent, counts


def test_reply_runs_after_the_commit_and_sightings_merge() -> None:
    backend = MemoryBackend()
    sent, counts = run(backend)
    assert sent == [True]
    assert counts == {"leases.committed": 1, "reply.ack": 1, "sightings.recorded": 1}
    [s] = backend.sightings  # the two sightings of one MAC became one write
    assert (s.ip, s.facts, s.creates) == ("10.9.0.5", {"relay": {"giaddr": "10.9.0.254"}}, True)


def test_no_reply_when_the_commit_fails() -> None:
    sent, counts = run(BrokenBackend())
    assert sent == []
    assert counts["error.leases"] == 1 and "reply.ack" not in counts


def test_sightings_wait_their_share_while_packets_flow() -> None:
    backend = MemoryBackend()
    writer = Writer(backend, Counter())
    for i in range(10):
        writer.sight(Sighting(f"02:00:00:00:00:{i:02x}"))
    writer.last_packet = float("inf")  # packets are flowing
    wait = writer.pace(0.0)
    assert len(backend.sightings) == 4 and wait is not None and wait > 0
    writer.last_packet = 0.0  # traffic stopped long ago: no more pauses
    assert writer.pace(writer.resume) is not None and writer.pace(writer.resume) is None
    assert len(backend.sightings) == 10
