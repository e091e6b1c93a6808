"""The collector loop: frames -> adapter.parse -> validate -> batching publisher.

Parse and validation are :func:`edge.validate.process_frame`, the very step the offline readers
run, so live collection, replays and ``tickmesh bars`` see the same events and dead-letter
reasons. One loop serves live sockets and file replays alike. Every frame ends up counted: as events, as a control frame, as empty, or as a dead letter
with the reason; an unexpected exception dead-letters the frame as an internal error and the loop
goes on.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any, AsyncIterable, Coroutine, Iterable

from edge.adapters.base import Adapter
from edge.metrics import EdgeStats, publish_metrics, publish_snapshot
from edge.publisher import BatchPublisher
from edge.validate import FrameResult, process_frame

__all__ = ["collect", "YIELD_EVERY_FRAMES"]

# A frame source that never suspends (a file read as fast as possible) would starve the event
# loop: acks would not be processed and the publisher would stall. Yield this often.
YIELD_EVERY_FRAMES = 64
_TRACE_MAX_CHARS = 2000


async def collect(frames: AsyncIterable[tuple[int, str | bytes]] | Iterable[tuple[int, str | bytes]],
                  adapter: Adapter, publisher: BatchPublisher, *, max_skew_ns: int | None,
                  metrics_nc=None, metrics_interval_s: float | None = 1.0) -> EdgeStats:
    """Collects every frame of ``frames`` into ``publisher`` until the source ends.

    Does not close the publisher (a looped replay collects several times into one); call
    ``publisher.close()`` afterwards to flush. Cancelling the task stops after the current frame.

    Args:
        frames: (receive time ns, raw frame) pairs, async (socket, paced replay) or plain.
        adapter: parses the venue's frames.
        publisher: batches and publishes the events and dead letters.
        max_skew_ns: largest allowed distance between exchange and receive time; None for
            historical files.
        metrics_nc: connection for the JSON metrics snapshot on ``tickmesh.metrics.edge.<venue>``
            every ``metrics_interval_s`` and at the end; None uses the publisher's JetStream
            connection.
        metrics_interval_s: None publishes no snapshots (a caller that collects many times,
            like a looped replay, runs :func:`edge.metrics.publish_metrics` itself).

    Returns:
        The publisher's stats, which this loop also updates (frames, rejected, ...).
    """
    stats = publisher.stats
    nc = metrics_nc if metrics_nc is not None else getattr(publisher.js, "_nc", None)
    metrics_task = None
    if nc is not None and metrics_interval_s is not None:
        metrics_task = asyncio.create_task(publish_metrics(nc, publisher.venue, stats, metrics_interval_s),
                                           name=f"metrics-{publisher.venue}")
    publisher.start()
    take = _FrameTaker(adapter, publisher, max_skew_ns).take
    try:
        if hasattr(frames, "__aiter__"):
            async for recv_ns, raw in frames:
                if (rest := take(recv_ns, raw)) is not None:
                    await rest
                if not stats.frames % YIELD_EVERY_FRAMES:
                    await asyncio.sleep(0)
        else:
            for recv_ns, raw in frames:
                if (rest := take(recv_ns, raw)) is not None:
                    await rest
                if not stats.frames % YIELD_EVERY_FRAMES:
                    await asyncio.sleep(0)
    finally:
        if metrics_task is not None:
            metrics_task.cancel()
            try:
                await metrics_task
            except asyncio.CancelledError:
                pass
            await publish_snapshot(nc, publisher.venue, stats)  # the final figures
    return stats


class _FrameTaker:
    """Takes one frame at a time into the publisher: parse, validate, buffer, count.

    Most frames need no waiting (one event for an open buffer: :meth:`BatchPublisher.add_nowait`),
    and for those no coroutine is created at all, which is a good part of the per-frame cost;
    the others are finished by an awaited coroutine that :meth:`take` returns.
    """

    __slots__ = ("adapter", "publisher", "stats", "max_skew_ns", "add_nowait")

    def __init__(self, adapter: Adapter, publisher: BatchPublisher, max_skew_ns: int | None) -> None:
        self.adapter = adapter
        self.publisher = publisher
        self.stats = publisher.stats
        self.max_skew_ns = max_skew_ns
        self.add_nowait = publisher.add_nowait

    def take(self, recv_ns: int, raw: str | bytes) -> Coroutine[Any, Any, None] | None:
        """Takes one frame; returns None when it is done, else the coroutine to await for the rest."""
        stats = self.stats
        stats.frames += 1
        adapter = self.adapter
        control_before = adapter.control_frames
        try:
            # The same step the offline readers run, so live and replayed data give the same output.
            result = process_frame(adapter, raw, recv_ns, self.max_skew_ns)
            if not result.dead_letters and self.add_nowait(result.events, recv_ns):
                stats.event_frames += 1
                return None
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the feed
            return self._internal_error(exc, raw, recv_ns, traceback.format_exc())
        return self._finish(result, raw, recv_ns, control_before)

    async def _finish(self, result: FrameResult, raw: str | bytes, recv_ns: int, control_before: int) -> None:
        """Buffers the events :meth:`BatchPublisher.add_nowait` did not take, publishes the
        dead letters and counts the frame by what it was."""
        stats = self.stats
        publisher = self.publisher
        events, dead_letters = result
        try:
            if events:
                await publisher.add(events, recv_ns)
            if dead_letters:
                # Rejected events carry the event in `detail`, and then the frame itself parsed.
                parsed = bool(events or dead_letters[0].detail)
                # Each dead letter of one frame gets its own ordinal so that none is merged with
                # another by the DLQ's duplicate window.
                for i, dl in enumerate(dead_letters):
                    await publisher.publish_dead_letter(dl, ordinal=i)
                if parsed:
                    stats.rejected += len(dead_letters)
                    stats.event_frames += 1
                else:
                    stats.failed_frames += 1
            elif events:
                stats.event_frames += 1
            elif self.adapter.control_frames != control_before:
                stats.control_frames += 1
            else:
                stats.empty_frames += 1
        except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the feed
            await self._internal_error(exc, raw, recv_ns, traceback.format_exc())

    async def _internal_error(self, exc: Exception, raw: str | bytes, recv_ns: int, trace: str) -> None:
        self.stats.failed_frames += 1
        await self.publisher.dead_letter(f"internal error: {type(exc).__name__}: {exc}", raw, recv_ns,
                                         detail=trace[-_TRACE_MAX_CHARS:])
