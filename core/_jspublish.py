"""A lean acknowledged JetStream publisher: one wildcard reply inbox instead of a future per message.

nats-py's ``publish_async`` builds a future, a semaphore slot and a parsed PubAck per message; for
the worker's many small bar messages that costs twice the publish itself. Here every message gets
``<inbox>.<n>`` as its reply subject, acks are counted by one subscription, and only an error
reply is parsed. ``wait()`` returns once every message published so far is acknowledged.
At most ``max_inflight`` messages await their ack at once: JetStream refuses a burst beyond its
ingest queue with 429 "too many requests", so ``publish`` waits for room instead.
"""

from __future__ import annotations

import asyncio

from core.errors import TickmeshError

__all__ = ["StreamPublishError", "AckedPublisher"]


class StreamPublishError(TickmeshError):
    """JetStream refused a message, or did not acknowledge it in time."""


class AckedPublisher:
    """Publishes into streams over ``nc`` and waits for the acks in bulk.

    Args:
        nc: a connected ``nats.aio.client.Client``.
        max_inflight: unacknowledged messages at most.
        ack_timeout_s: how long ``publish`` and ``wait`` wait for acks before giving up.
    """

    def __init__(self, nc, max_inflight: int = 4096, ack_timeout_s: float = 10.0) -> None:
        self._nc = nc
        self._max_inflight = max_inflight
        self._ack_timeout_s = ack_timeout_s
        self._room = asyncio.Event()
        self._room.set()
        self._prefix = ""
        self._sub = None
        self._seq = 0
        self._outstanding = 0
        self._errors: list[str] = []
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> "AckedPublisher":
        """Subscribes a fresh reply inbox; acks of an earlier inbox no longer count."""
        self._outstanding, self._errors = 0, []
        self._idle.set()
        self._room.set()
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Sends one message; waits first while ``max_inflight`` messages await their ack.

        Raises:
            StreamPublishError: no room came within ``ack_timeout_s``.
        """
        if self._outstanding >= self._max_inflight:
            self._room.clear()
            await self._await(self._room)
        self._seq += 1
        self._outstanding += 1
        self._idle.clear()
        await self._nc.publish(subject, payload, reply=f"{self._prefix}{self._seq}", headers=headers)

    async def _on_ack(self, msg) -> None:
        # A PubAck is {"stream":..,"seq":..[,"duplicate":true]}; a refusal carries "error"; a
        # subject no stream captures gets an empty 503 status instead.
        if b'"error"' in msg.data:
            self._errors.append(msg.data.decode(errors="replace"))
        elif msg.headers and msg.headers.get("Status") == "503":
            self._errors.append(f"no stream stores {msg.subject.rsplit('.', 1)[0]}… (503 no responders)")
        self._outstanding -= 1
        if self._outstanding < self._max_inflight:
            self._room.set()
        if self._outstanding <= 0:
            self._idle.set()

    async def wait(self) -> None:
        """Waits until every message published so far is acknowledged.

        Raises:
            StreamPublishError: a message was refused, or acks did not arrive within ``ack_timeout_s``.
        """
        await self._await(self._idle)
        if self._errors:
            errors, self._errors = self._errors, []
            raise StreamPublishError(f"JetStream refused {len(errors)} messages, first: {errors[0]}")

    async def _await(self, event: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(event.wait(), self._ack_timeout_s)
        except asyncio.TimeoutError:
            # Forget the missing acks: the caller starts over from its last consistent state.
            missing, self._outstanding = self._outstanding, 0
            self._idle.set()
            self._room.set()
            raise StreamPublishError(
                f"{missing} publishes not acknowledged within {self._ack_timeout_s} s") from None
