"""The live event stream: one poller of the events table fans new events out to SSE clients.

Events are written by many parts of ztpd (lifecycle, DHCP, boot, agent), some from threads, so
the table itself is the source: one task reads ``events WHERE id > last`` and hands each batch,
with the affected nodes' table rows, to every subscriber. A committed transition pokes the task
so a state change reaches the page at once; other events arrive within one poll interval.

A client that reconnects sends ``Last-Event-ID`` (browsers do it by themselves) and first gets
what it missed from the table, then the live feed; a subscriber that falls too far behind is
dropped and catches up the same way on its reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ztpd.http import queries
from ztpd.model import Event
from ztpd.store import Store
from ztpd.tasks import stop_tasks

log = logging.getLogger("ztpd.http.sse")

BATCH = 500
QUEUE_BATCHES = 64
KEEPALIVE = 15.0
RETRY_MS = 1000


@dataclass(frozen=True)
class Item:
    event: Event
    node: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {**queries.event_dict(self.event), "node": self.node}


@dataclass(eq=False)  # compared and hashed by identity: each is one open stream
class Subscriber:
    node_id: int | None
    kinds: frozenset[str]
    queue: asyncio.Queue[list[Item] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_BATCHES)
    )

    def wants(self, e: Event) -> bool:
        return (self.node_id is None or e.node_id == self.node_id) and (
            not self.kinds or e.kind in self.kinds
        )


def load(store: Store, after: int, limit: int = BATCH) -> list[Item]:
    """Events after ``after``, oldest first, each with its node's current table row."""
    evs = queries.events(store, after=after, limit=limit, newest_first=False)
    nodes = queries.summaries_by_id(store, (e.node_id for e in evs if e.node_id is not None))
    return [Item(e, nodes.get(e.node_id) if e.node_id is not None else None) for e in evs]


class EventHub:
    def __init__(self, store: Store, poll_interval: float = 0.25) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._subscribers: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._last = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self) -> None:
        """Read the table now (safe from any thread, e.g. a lifecycle listener)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._closed.is_set():
            try:
                batch = await asyncio.to_thread(load, self.store, self._last)
            except Exception:
                log.exception("event poll failed; retrying")
                batch = []
            if batch:
                self._last = batch[-1].event.id
                self._publish(batch)
            if len(batch) < BATCH:  # a full batch means more are waiting: read on at once
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _publish(self, batch: list[Item]) -> None:
        for sub in list(self._subscribers):
            mine = [i for i in batch if sub.wants(i.event)]
            if not mine:
                continue
            try:
                sub.queue.put_nowait(mine)
            except asyncio.QueueFull:  # too slow: drop it; it catches up on reconnect
                self._subscribers.discard(sub)
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                sub.queue.put_nowait(None)
                log.info("sse subscriber dropped reason=slow")

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: polls while the HTTP app runs."""
        self._loop = asyncio.get_running_loop()
        self._last = await asyncio.to_thread(queries.last_event_id, self.store)
        task = asyncio.create_task(self._run(), name="sse-hub")
        yield
        self._closed.set()
        self._wake.set()
        await stop_tasks(task)

    async def close_streams(self, app: web.Application) -> None:
        """on_shutdown: end every open stream so the server need not wait for them."""
        self._closed.set()
        for sub in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)
        self._subscribers.clear()

    def subscribe(self, node_id: int | None, kinds: frozenset[str]) -> Subscriber:
        sub = Subscriber(node_id, kinds)
        if self._closed.is_set():
            sub.queue.put_nowait(None)
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def last_id(self) -> int:
        return self._last


def _frame(item: Item) -> bytes:
    data = json.dumps(item.to_dict(), sort_keys=True, default=str, separators=(",", ":"))
    # No "event:" field: every message has the default type, so a browser's onmessage sees
    # all kinds, including ones added later; the kind is in the data.
    return f"id: {item.event.id}\ndata: {data}\n\n".encode()


async def stream(
    request: web.Request,
    hub: EventHub,
    *,
    after: int | None,
    node_id: int | None,
    kinds: frozenset[str],
) -> web.StreamResponse:
    """Serve one SSE client: replay after ``after`` (when given), then live events."""
    # Subscribe and note where the live feed starts in one step, before any await: every
    # event is then either replayed from the table or queued, and ids dedupe the overlap.
    sub = hub.subscribe(node_id, kinds)
    sent = hub.last_id if after is None else after
    try:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        await resp.write(f"retry: {RETRY_MS}\n\n".encode())
        if after is not None:
            while True:
                batch = await asyncio.to_thread(load, hub.store, sent)
                for item in batch:
                    if sub.wants(item.event):
                        await resp.write(_frame(item))
                if batch:
                    sent = batch[-1].event.id
                if len(batch) < BATCH:
                    break
        while True:
            try:
                items = await asyncio.wait_for(sub.queue.get(), KEEPALIVE)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if items is None:
                break
            for item in items:
                if item.event.id > sent:
                    await resp.write(_frame(item))
                    sent = item.event.id
        return resp
    finally:
        hub.unsubscribe(sub)
