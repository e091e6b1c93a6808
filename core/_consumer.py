"""Binding a durable pull consumer so that it starts right after a snapshot's stream sequence."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from core import streams
from core.errors import TickmeshError

__all__ = ["WorkerGapError", "next_delivery", "rebind"]


class WorkerGapError(TickmeshError):
    """A worker saw a delivery sequence jump: it restarts from its snapshot instead of losing input."""


def next_delivery(prev: int, meta) -> int:
    """The consumer sequence of the message with metadata ``meta``, which must follow ``prev``.

    Raises:
        WorkerGapError: a delivery was skipped (the worker must resume from its snapshot).
    """
    got = meta.sequence.consumer
    if got != prev + 1:
        raise WorkerGapError(f"delivery {got} after {prev}: a message was not seen")
    return got


async def rebind(js: JetStreamContext, name: str, start_seq: int, kind: str | None = None):
    """Recreates the durable consumer ``name``, configured as ``kind`` (default ``name``) of
    `core.streams.consumer_configs`, to deliver from ``start_seq + 1`` (everything when 0) and
    returns a pull subscription bound to it.

    Whatever the consumer had delivered or acked before, a worker's snapshot is the truth.
    """
    stream, base = streams.consumer_configs()[kind or name]
    try:
        await js.delete_consumer(stream, name)
    except NotFoundError:
        pass
    config = ConsumerConfig(
        durable_name=name, ack_policy=base.ack_policy, filter_subject=base.filter_subject,
        ack_wait=base.ack_wait, max_ack_pending=base.max_ack_pending,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
        opt_start_seq=start_seq + 1 if start_seq else None)
    await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(name, stream=stream)
