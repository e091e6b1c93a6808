"""Fan-out of live bars and signals from NATS to WebSocket clients, each with its own filter and
bounded queue.

Each item is encoded to JSON once and queued for every client whose filter matches. A client whose
queue is full is not keeping up: it is marked and its handler closes the socket (code 1013, "try
again later") rather than silently skipping bars, so a reconnecting client reloads history and
never shows a chart with holes.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import msgspec

from api.models import BarOut, SignalOut
from core.schema import Bar, Signal

__all__ = ["BarFilter", "BarClient", "Fanout", "BarFanout", "SignalFanout", "CLOSED"]

CLOSED = None  # queued to a client when the fan-out shuts down


class BarFilter(msgspec.Struct, frozen=True):
    """Which bars or signals a client wants; None matches anything. ``min_confidence``,
    ``action`` and ``max_risk_pct`` (`core.schema.Signal.risk_pct`) apply to signals."""

    venue: str | None = None
    symbol: str | None = None
    tf: str | None = None
    min_confidence: float = 0.0
    action: str | None = None
    max_risk_pct: float | None = None

    def matches(self, item: Bar | Signal) -> bool:
        return ((self.venue is None or self.venue == item.venue)
                and (self.symbol is None or self.symbol == item.symbol)
                and (self.tf is None or self.tf == item.tf)
                and getattr(item, "confidence", 100.0) >= self.min_confidence
                and (self.action is None or getattr(item, "action", None) == self.action)
                # NaN (no stop) compares false: left out, as the REST query leaves it out
                and (self.max_risk_pct is None or item.risk_pct <= self.max_risk_pct))


class BarClient:
    """One subscriber: a filter and a bounded queue of JSON texts (or `CLOSED`)."""

    def __init__(self, flt: BarFilter, queue_size: int) -> None:
        self.filter = flt
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self.overflowed = False

    def __repr__(self) -> str:
        return f"BarClient({self.filter!r}, queued={self.queue.qsize()}, overflowed={self.overflowed})"


class Fanout:
    """Delivers items to the clients subscribed right now.

    Args:
        to_json: what a client receives for an item (a msgspec Struct, encoded once per item).
        queue_size: items a client may have waiting before it counts as too slow.
    """

    def __init__(self, to_json: Callable[[Any], Any], queue_size: int = 4096) -> None:
        self.to_json = to_json
        self.queue_size = queue_size
        self._clients: set[BarClient] = set()
        self._encoder = msgspec.json.Encoder()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clients={len(self._clients)}, queue_size={self.queue_size})"

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

    def publish(self, item: Any) -> tuple[int, int]:
        """Queues ``item`` for every matching client.

        Returns:
            (clients it was queued for, clients found too slow and dropped from the fan-out).
        """
        text = None
        sent = slow = 0
        for client in list(self._clients):
            if not client.filter.matches(item):
                continue
            if text is None:
                text = self._encoder.encode(self.to_json(item)).decode()
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


class BarFanout(Fanout):
    """Bars as `BarOut`."""

    def __init__(self, queue_size: int = 4096) -> None:
        super().__init__(BarOut.from_bar, queue_size)


class SignalFanout(Fanout):
    """Signals as `SignalOut`, the same objects ``GET /api/signals`` returns."""

    def __init__(self, queue_size: int = 4096) -> None:
        super().__init__(lambda sig: SignalOut.from_row(msgspec.structs.asdict(sig)), queue_size)
