"""A lean acknowledged JetStream publisher: one wildcard reply inbox instead of a future per message.

nats-py's ``publish_async`` builds a future, a semaphore slot and a parsed PubAck per message; for
the worker's many small bar messages that costs twice the publish itself. Here every message gets
``<inbox>.<n>`` as its reply subject, acks are counted by one subscription, and only an error
reply is parsed. ``wait()`` returns once every message published so far is acknowledged.
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
    """

    def __init__(self, nc) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub = None
        self._seq = 0
        self._outstanding = 0
        self._errors: list[str] = []
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> "AckedPublisher":
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self._seq += 1
        self._outstanding += 1
        self._idle.clear()
        await self._nc.publish(subject, payload, reply=f"{self._prefix}{self._seq}", headers=headers)

    async def _on_ack(self, msg) -> None:
        # A PubAck is {"stream":..,"seq":..[,"duplicate":true]}; a refusal carries "error".
        if b'"error"' in msg.data:
            self._errors.append(msg.data.decode(errors="replace"))
        self._outstanding -= 1
        if self._outstanding <= 0:
            self._idle.set()

    async def wait(self, timeout_s: float = 10.0) -> None:
        """Waits until every message published so far is acknowledged.

        Raises:
            StreamPublishError: a message was refused, or acks did not arrive within ``timeout_s``.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            missing, self._outstanding = self._outstanding, 0
            self._idle.set()
            raise StreamPublishError(f"{missing} publishes not acknowledged within {timeout_s} s") from None
        if self._errors:
            errors, self._errors = self._errors, []
            raise StreamPublishError(f"JetStream refused {len(errors)} messages, first: {errors[0]}")
