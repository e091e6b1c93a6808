"""Fan-out of live bars from NATS to WebSocket clients, each with its own filter and bounded queue.

Each bar is encoded to JSON once and queued for every client whose filter matches. A client whose
queue is full is not keeping up: it is marked and its handler closes the socket (code 1013, "try
again later") rather than silently skipping bars, so a reconnecting client reloads history and
never shows a chart with holes.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

import msgspec

from api.models import BarOut
from core.schema import Bar

__all__ = ["BarFilter", "BarClient", "BarFanout", "CLOSED"]

CLOSED = None  # queued to a client when the fan-out shuts down


class BarFilter(msgspec.Struct, frozen=True):
    """Which bars a client wants; None matches anything."""

    venue: str | None = None
    symbol: str | None = None
    tf: str | None = None

    def matches(self, bar: Bar) -> bool:
        return ((self.venue is None or self.venue == bar.venue)
                and (self.symbol is None or self.symbol == bar.symbol)
                and (self.tf is None or self.tf == bar.tf))


class BarClient:
    """One subscriber: a filter and a bounded queue of JSON texts (or `CLOSED`)."""

    def __init__(self, flt: BarFilter, queue_size: int) -> None:
        self.filter = flt
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self.overflowed = False

    def __repr__(self) -> str:
        return f"BarClient({self.filter!r}, queued={self.queue.qsize()}, overflowed={self.overflowed})"


class BarFanout:
    """Delivers bars to the clients subscribed right now.

    Args:
        queue_size: bars a client may have waiting before it counts as too slow.
    """

    def __init__(self, queue_size: int = 4096) -> None:
        self.queue_size = queue_size
        self._clients: set[BarClient] = set()
        self._encoder = msgspec.json.Encoder()
        self._closed = False

    def __repr__(self) -> str:
        return f"BarFanout(clients={len(self._clients)}, queue_size={self.queue_size})"

    def __len__(self) -> int:
        return len(self._clients)

    @contextmanager
    def subscribe(self, flt: BarFilter) -> Iterator[BarClient]:
        """Registers a client for the duration of the ``with`` block."""
        client = BarClient(flt, self.queue_size)
        if self._closed:
            client.queue.put_nowait(CLOSED)
        else:
            self._clients.add(client)
        try:
            yield client
        finally:
            self._clients.discard(client)

    def publish(self, bar: Bar) -> tuple[int, int]:
        """Queues ``bar`` for every matching client.

        Returns:
            (clients it was queued for, clients found too slow and dropped from the fan-out).
        """
        text = None
        sent = slow = 0
        for client in list(self._clients):
            if not client.filter.matches(bar):
                continue
            if text is None:
                text = self._encoder.encode(BarOut.from_bar(bar)).decode()
            try:
                client.queue.put_nowait(text)
                sent += 1
            except asyncio.QueueFull:
                # Its handler still drains the queue, sees the flag and closes the socket.
                client.overflowed = True
                self._clients.discard(client)
                slow += 1
        return sent, slow

    def close(self) -> None:
        """Tells every client the stream ended; later subscribers get `CLOSED` at once."""
        self._closed = True
        for client in list(self._clients):
            try:
                client.queue.put_nowait(CLOSED)
            except asyncio.QueueFull:
                client.overflowed = True  # its handler closes it after draining
        self._clients.clear()
